-- cost_models in the platform's shape (EVENTS.md, "What is stored"): id varchar(255) named by
-- whoever writes a price (no default), resource_type varchar(50), cost_per_unit numeric(10,8),
-- currency varchar(5), start_date date (a price holds from 00:00 UTC of that day). A database
-- whose platform scripts created the table already has it so, and nothing here changes it; one
-- created by an earlier version of this service (bigserial id, timestamptz start) is converted
-- in place, its rows kept.
DO $$
DECLARE
    id_type text;
    start_type text;
BEGIN
    SELECT data_type INTO id_type FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = 'cost_models' AND column_name = 'id';
    IF id_type IS DISTINCT FROM 'character varying' THEN
        ALTER TABLE cost_models ALTER COLUMN id DROP DEFAULT;
        ALTER TABLE cost_models ALTER COLUMN id TYPE varchar(255) USING id::text;
        DROP SEQUENCE IF EXISTS cost_models_id_seq;
    END IF;
    SELECT data_type INTO start_type FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = 'cost_models' AND column_name = 'start_date';
    IF start_type IS DISTINCT FROM 'date' THEN
        ALTER TABLE cost_models ALTER COLUMN start_date DROP DEFAULT;
        ALTER TABLE cost_models ALTER COLUMN start_date TYPE date
            USING (start_date AT TIME ZONE 'UTC')::date;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'cost_models'
                  AND column_name = 'cost_per_unit'
                  AND (numeric_precision, numeric_scale) IS DISTINCT FROM (10, 8)) THEN
        ALTER TABLE cost_models ALTER COLUMN cost_per_unit TYPE numeric(10, 8);
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'cost_models'
                  AND column_name = 'resource_type' AND character_maximum_length IS DISTINCT FROM 50) THEN
        ALTER TABLE cost_models ALTER COLUMN resource_type TYPE varchar(50);
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'cost_models'
                  AND column_name = 'currency' AND character_maximum_length IS DISTINCT FROM 5) THEN
        ALTER TABLE cost_models ALTER COLUMN currency DROP DEFAULT;
        ALTER TABLE cost_models ALTER COLUMN currency TYPE varchar(5);
    END IF;
END
$$;
