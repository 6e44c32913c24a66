-- The role cdr-service runs as: it may log in, read and write the rows of its own tables and
-- call `cdr_fence`, and nothing else. It owns nothing, creates nothing, alters nothing, and is
-- no superuser: the schema is changed by `cdr-service migrate`, run with a role that may (the
-- tables' owner), while the service runs with `database.migrate = false` as this one.
--
-- Run it after `cdr-service migrate`, on the service's database, as the tables' owner or a
-- superuser, and again after every upgrade (a new migration may add a table):
--
--   psql -d "$DDL_DATABASE_URL" -v runtime_role=cdr_runtime -f deploy/roles.sql
--
-- This file holds no password: it is taken from `-v runtime_password=...`, or else (psql 15 or
-- later) from the environment variable CDR_RUNTIME_PASSWORD, which keeps it off the command
-- line. Other variables: `runtime_role` (default cdr_runtime), `schema` (the schema the
-- migrations created the tables in; default public).
--
-- It can run again at any time, and from several places at once: it creates the role if it is
-- missing, sets its attributes and password, and replaces its privileges on the schema's
-- tables, sequences and functions with exactly those below, all in one transaction (a service
-- running as the role never sees it without them).
--
-- The password travels to the server in an ALTER ROLE statement (PostgreSQL stores only its
-- SCRAM verifier): do not run this with `log_statement` set to `ddl` or `all`.

\set ON_ERROR_STOP on

\if :{?runtime_role}
\else
\set runtime_role cdr_runtime
\endif
\if :{?schema}
\else
\set schema public
\endif
\if :{?runtime_password}
\else
\getenv runtime_password CDR_RUNTIME_PASSWORD
\endif
\if :{?runtime_password}
\else
\set runtime_password ''
\endif

SELECT :'runtime_password' = '' AS no_password \gset
\if :no_password
DO $$ BEGIN
    RAISE EXCEPTION 'roles.sql: no password for the runtime role: pass -v runtime_password=... or set CDR_RUNTIME_PASSWORD';
END $$;
\endif

BEGIN;

-- Several deployments running this at once (replicas starting together) take turns.
SELECT pg_advisory_xact_lock(hashtext('cdr-service deploy/roles.sql')) \gset

SELECT format('CREATE ROLE %I', :'runtime_role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'runtime_role') \gexec

ALTER ROLE :"runtime_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'runtime_password';

-- PostgreSQL 15 and later give PUBLIC no CREATE on the public schema; a database created by an
-- earlier version still does, which would let every role (this one included) create tables in
-- it. A role that creates tables there must be granted CREATE by name (the owner needs nothing).
REVOKE CREATE ON SCHEMA :"schema" FROM PUBLIC;

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'runtime_role') \gexec
GRANT USAGE ON SCHEMA :"schema" TO :"runtime_role";

-- Whatever an earlier run or anyone else granted, the role keeps only what follows.
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"runtime_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"runtime_role";
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :"schema" FROM :"runtime_role";

SET LOCAL search_path = :"schema";

-- The event log (src/log.rs): batches appended (with RETURNING), read back to load a call, to
-- tell new calls from known ones and to recover.
GRANT SELECT, INSERT ON call_events TO :"runtime_role";
-- Calls whose logged events are not yet in their record: added or raised with each log batch,
-- deleted with the record that covers them (src/writer.rs), read at start.
GRANT SELECT, INSERT, UPDATE, DELETE ON open_calls TO :"runtime_role";
-- Calls whose actor kept failing: inserted or updated, read at start. Only an operator deletes
-- a row (to have the call retried).
GRANT SELECT, INSERT, UPDATE ON quarantined_calls TO :"runtime_role";
-- The records: upserted (INSERT ... ON CONFLICT DO UPDATE ... RETURNING), read back.
GRANT SELECT, INSERT, UPDATE ON calls TO :"runtime_role";
-- A call's usage lines: those the service wrote are deleted and inserted again with its record.
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_records TO :"runtime_role";
-- The dialog turns (src/project.rs): upserted.
GRANT SELECT, INSERT, UPDATE ON call_dialog_events TO :"runtime_role";
-- Unit prices: read only.
GRANT SELECT ON cost_models TO :"runtime_role";
-- The lease (src/lease.rs): a key's row inserted once, its epoch raised under FOR UPDATE, its
-- projection mark raised, and read under FOR KEY SHARE by `cdr_fence` (row locks need UPDATE).
GRANT SELECT, INSERT, UPDATE ON cluster_lease TO :"runtime_role";
-- Which migrations the schema has: read only.
GRANT SELECT ON _sqlx_migrations TO :"runtime_role";
-- Every write of the active instance is fenced.
GRANT EXECUTE ON FUNCTION cdr_fence(text, bigint) TO :"runtime_role";

-- The sequences that number the rows of the tables the role inserts into (bigserial and
-- identity columns, and column defaults naming a sequence), whatever their names: those of the
-- service's own tables and those of tables a platform's scripts created before it.
WITH tables AS (
    SELECT unnest(ARRAY['call_events', 'open_calls', 'quarantined_calls', 'calls',
                        'usage_records', 'call_dialog_events', 'cluster_lease']::regclass[]) AS t
), sequences AS (
    SELECT d.objid AS s FROM pg_depend d JOIN tables ON d.refobjid = tables.t
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.deptype IN ('a', 'i')
    UNION
    SELECT d.refobjid FROM pg_attrdef a JOIN tables ON a.adrelid = tables.t
      JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = a.oid
                      AND d.refclassid = 'pg_class'::regclass
)
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', c.oid::regclass, :'runtime_role')
  FROM sequences JOIN pg_class c ON c.oid = sequences.s AND c.relkind = 'S' \gexec

COMMIT;

\echo runtime role :runtime_role ready: it reads and writes the rows of the tables of cdr-service in schema :schema
