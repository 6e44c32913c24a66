-- Recovery bookkeeping.
--
-- open_calls: every call with logged events that are not yet folded into its written record.
-- The event log adds a call here in the same transaction that logs its events; the record
-- writer removes it in the same transaction that writes a row covering all of them
-- (last_event_id <= the highest event id the row folds). On start, the service rebuilds exactly
-- these calls. This replaces a global low-water mark: it is exact per call, costs one upsert per
-- log batch and one delete per record batch, and does not depend on sequence ids committing in
-- order (the row lock taken by the upsert serialises it with the delete).
CREATE TABLE IF NOT EXISTS open_calls (
    call_id       varchar(255) PRIMARY KEY,
    last_event_id bigint NOT NULL,
    opened_at     timestamptz NOT NULL DEFAULT now()
);

-- Calls whose actor kept failing: their events stay in call_events, they are skipped by
-- recovery, and an operator can delete the row to have the call retried.
CREATE TABLE IF NOT EXISTS quarantined_calls (
    call_id        varchar(255) PRIMARY KEY,
    trace_id       varchar(255),
    failures       integer NOT NULL,
    reason         text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
