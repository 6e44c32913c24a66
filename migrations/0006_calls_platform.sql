-- calls and call_events with the platform's types (EVENTS.md, "What is stored"). A database
-- whose platform scripts created them has these types already, and nothing here changes it;
-- one created by an earlier version of this service is converted in place, its rows kept:
--
-- - `sip_hangup_cause` becomes the SIP response code the platform's readers expect (int); the
--   end reason it held moves to `end_reason`, a column of this service's own;
-- - `direction` takes the platform's values (`INBOUND`, `OUTBOUND`, `INTERNAL`), NOT NULL with
--   the platform's default; `hangup_source` its values (`CALLER`, `CALLEE`, `SYSTEM`);
-- - `caller_number`/`callee_number` fit varchar(50), `status`/`disposition`/`hangup_source`
--   varchar(50), `duration_seconds` defaults to 0;
-- - `call_events.event_type` fits varchar(100) and `event_timestamp` is NOT NULL.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS end_reason varchar(64);

DO $$
DECLARE
    t text;
BEGIN
    SELECT data_type INTO t FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = 'calls'
       AND column_name = 'sip_hangup_cause';
    IF t = 'character varying' OR t = 'text' THEN
        UPDATE calls SET end_reason = left(sip_hangup_cause, 64)
         WHERE end_reason IS NULL AND sip_hangup_cause IS NOT NULL;
        ALTER TABLE calls ALTER COLUMN sip_hangup_cause TYPE int USING (
            CASE
                WHEN lower(sip_hangup_cause) IN ('busy', 'user_busy') THEN 486
                WHEN lower(sip_hangup_cause) = 'network_failure' THEN 503
                WHEN lower(sip_hangup_cause) = 'failure' THEN 500
                WHEN disposition = 'ANSWERED' THEN 200
            END);
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'calls'
                  AND column_name = 'direction'
                  AND (is_nullable = 'YES' OR character_maximum_length IS DISTINCT FROM 20)) THEN
        UPDATE calls SET direction = COALESCE(upper(direction), 'INBOUND')
         WHERE direction IS NULL OR direction <> upper(direction);
        ALTER TABLE calls ALTER COLUMN direction TYPE varchar(20);
        ALTER TABLE calls ALTER COLUMN direction SET DEFAULT 'INBOUND';
        ALTER TABLE calls ALTER COLUMN direction SET NOT NULL;
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'calls'
                  AND column_name = 'hangup_source' AND character_maximum_length IS DISTINCT FROM 50) THEN
        UPDATE calls SET hangup_source = CASE hangup_source
                WHEN 'caller' THEN 'CALLER'
                WHEN 'agent' THEN 'CALLEE'
                ELSE 'SYSTEM'
            END
         WHERE hangup_source IS NOT NULL AND hangup_source <> upper(hangup_source);
        ALTER TABLE calls ALTER COLUMN hangup_source TYPE varchar(50);
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'calls'
                  AND column_name = 'caller_number' AND character_maximum_length IS DISTINCT FROM 50) THEN
        ALTER TABLE calls
            ALTER COLUMN caller_number TYPE varchar(50) USING left(caller_number, 50),
            ALTER COLUMN callee_number TYPE varchar(50) USING left(callee_number, 50);
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'calls'
                  AND column_name = 'status' AND character_maximum_length IS DISTINCT FROM 50) THEN
        ALTER TABLE calls
            ALTER COLUMN status TYPE varchar(50),
            ALTER COLUMN disposition TYPE varchar(50);
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'calls'
                  AND column_name = 'duration_seconds' AND column_default IS NULL) THEN
        ALTER TABLE calls ALTER COLUMN duration_seconds SET DEFAULT 0;
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'call_events'
                  AND column_name = 'event_type' AND character_maximum_length IS DISTINCT FROM 100) THEN
        ALTER TABLE call_events ALTER COLUMN event_type TYPE varchar(100) USING left(event_type, 100);
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'call_events'
                  AND column_name = 'event_timestamp' AND is_nullable = 'YES') THEN
        UPDATE call_events SET event_timestamp = COALESCE(received_at, created_at)
         WHERE event_timestamp IS NULL;
        ALTER TABLE call_events ALTER COLUMN event_timestamp SET NOT NULL;
    END IF;
END
$$;
