-- call_events_call_id_idx (call_id, event_id) duplicated the leading column of the unique index
-- call_events_distinct_idx (call_id, body_sha256): every lookup by call_id (loading a call,
-- telling new calls from known ones, recovery) is served by the unique index, and a call's few
-- events are sorted by id after the scan. Dropping it removes one index insertion per logged
-- event, about a quarter of the event log's index maintenance.
DROP INDEX IF EXISTS call_events_call_id_idx;
