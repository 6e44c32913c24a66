-- usage_records in the platform's shape (EVENTS.md, "What is stored"): tenant_id varchar(255)
-- NOT NULL, call_id nullable (other services bill usage outside calls), saga_id uuid,
-- service_name varchar(100) NOT NULL, resource_type varchar(50), quantity numeric(15,5),
-- calculated_cost numeric(10,5), recorded_at timestamptz DEFAULT now(). The record writer
-- writes a call's lines with its row, priced, with the telephony-minute line readers expect.
--
-- A database whose platform scripts created the table has these columns already (only
-- `usage_key`, the identity of a line this service wrote, was added by 0001). One created by an
-- earlier version of this service is converted in place, its lines kept: `service` and
-- `event_timestamp` are copied into `service_name` and `recorded_at` and stay as nullable
-- columns nothing reads, and `tenant_id`/`service_name` get defaults, so that an earlier
-- version still running during a rolling update keeps writing; each line is priced as the
-- calls' costs were, and every answered call this service recorded gets its telephony-minute
-- line.
ALTER TABLE usage_records
    ADD COLUMN IF NOT EXISTS tenant_id varchar(255),
    ADD COLUMN IF NOT EXISTS saga_id uuid,
    ADD COLUMN IF NOT EXISTS service_name varchar(100),
    ADD COLUMN IF NOT EXISTS calculated_cost numeric(10, 5),
    ADD COLUMN IF NOT EXISTS recorded_at timestamptz DEFAULT now();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'event_timestamp') THEN
        -- The earlier version's lines (their service_name not set yet).
        UPDATE usage_records u
           SET service_name = left(COALESCE(u.service, 'unknown'), 100),
               tenant_id = COALESCE(u.tenant_id, (SELECT left(c.tenant_id, 255) FROM calls c
                                                  WHERE c.call_id = u.call_id), 'system'),
               recorded_at = u.event_timestamp
         WHERE u.service_name IS NULL;
        ALTER TABLE usage_records
            ALTER COLUMN service DROP NOT NULL,
            ALTER COLUMN event_timestamp DROP NOT NULL,
            -- An earlier version still running writes neither: its lines stay insertable
            -- (and this version replaces them when it writes their call's record).
            ALTER COLUMN tenant_id SET DEFAULT 'system',
            ALTER COLUMN service_name SET DEFAULT 'unknown';
        -- Priced at the call's start, as its total cost was.
        UPDATE usage_records u
           SET calculated_cost = round(u.quantity * (
                   SELECT m.cost_per_unit FROM cost_models m
                    WHERE m.resource_type = u.resource_type
                      AND m.start_date <= (c.start_time AT TIME ZONE 'UTC')::date
                    ORDER BY m.start_date DESC LIMIT 1), 5)
          FROM calls c
         WHERE c.call_id = u.call_id AND u.calculated_cost IS NULL AND u.usage_key IS NOT NULL
           AND abs(u.quantity) < 10000000000;
        -- The telephony minutes of the answered calls this service recorded, where no report
        -- gave them: billable seconds rounded up to whole minutes.
        INSERT INTO usage_records (tenant_id, call_id, usage_key, service_name, resource_type,
                                   quantity, calculated_cost, recorded_at)
        SELECT COALESCE(left(c.tenant_id, 255), 'system'), c.call_id, 'telephony',
               'telephony-core', 'telephony_minute', m.minutes,
               round(m.minutes * (
                   SELECT p.cost_per_unit FROM cost_models p
                    WHERE p.resource_type = 'telephony_minute'
                      AND p.start_date <= (c.start_time AT TIME ZONE 'UTC')::date
                    ORDER BY p.start_date DESC LIMIT 1), 5),
               c.end_time
          FROM calls c
         CROSS JOIN LATERAL (SELECT ((c.billable_seconds + 59) / 60)::numeric AS minutes) m
         WHERE c.event_count > 0 AND c.billable_seconds IS NOT NULL AND c.end_time IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM usage_records o
                            WHERE o.call_id = c.call_id AND o.resource_type = 'telephony_minute')
        ON CONFLICT (call_id, usage_key) DO NOTHING;
    END IF;

    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'tenant_id' AND is_nullable = 'YES') THEN
        UPDATE usage_records SET tenant_id = 'system' WHERE tenant_id IS NULL;
        ALTER TABLE usage_records ALTER COLUMN tenant_id SET NOT NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'service_name' AND is_nullable = 'YES') THEN
        UPDATE usage_records SET service_name = 'unknown' WHERE service_name IS NULL;
        ALTER TABLE usage_records ALTER COLUMN service_name SET NOT NULL;
    END IF;
    -- Other services may bill usage outside a call, and write no usage_key.
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'call_id' AND is_nullable = 'NO') THEN
        ALTER TABLE usage_records ALTER COLUMN call_id DROP NOT NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'usage_key' AND is_nullable = 'NO') THEN
        ALTER TABLE usage_records ALTER COLUMN usage_key DROP NOT NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'resource_type' AND character_maximum_length IS DISTINCT FROM 50) THEN
        ALTER TABLE usage_records ALTER COLUMN resource_type TYPE varchar(50)
            USING left(resource_type, 50);
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'usage_records'
                  AND column_name = 'quantity'
                  AND (numeric_precision, numeric_scale) IS DISTINCT FROM (15, 5)) THEN
        -- A quantity no real usage reaches (beyond numeric(15,5)) is capped rather than
        -- failing the migration.
        ALTER TABLE usage_records ALTER COLUMN quantity TYPE numeric(15, 5)
            USING least(greatest(quantity, -9999999999.99999), 9999999999.99999);
    END IF;
END
$$;
