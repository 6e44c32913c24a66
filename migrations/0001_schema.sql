-- The tables other platform services already read. Created only when missing, and extended
-- column by column, so the service can take over a database the old consumer filled.

CREATE TABLE IF NOT EXISTS calls (
    call_id          varchar(255) PRIMARY KEY,
    user_id          uuid,
    contact_id       integer,
    tenant_id        varchar(255),
    start_time       timestamptz,
    answer_time      timestamptz,
    end_time         timestamptz,
    duration_seconds integer,
    status           varchar(32),
    disposition      varchar(32),
    recording_url    text,
    total_cost       numeric(10, 5),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE calls
    ADD COLUMN IF NOT EXISTS direction        varchar(16),
    ADD COLUMN IF NOT EXISTS caller_number    varchar(255),
    ADD COLUMN IF NOT EXISTS callee_number    varchar(255),
    ADD COLUMN IF NOT EXISTS sip_hangup_cause varchar(64),
    ADD COLUMN IF NOT EXISTS hangup_source    varchar(32),
    -- Added by this service:
    ADD COLUMN IF NOT EXISTS trace_id         varchar(255),
    ADD COLUMN IF NOT EXISTS billable_seconds integer,
    -- start/answer/end that stand on a receive time because the event had no timestamp.
    ADD COLUMN IF NOT EXISTS inferred_times   varchar(32),
    -- Number of distinct logged events folded into this row: its version. A row is only ever
    -- replaced by one folded from at least as many events.
    ADD COLUMN IF NOT EXISTS event_count      integer NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS calls_start_time_idx ON calls (start_time);
CREATE INDEX IF NOT EXISTS calls_tenant_id_idx ON calls (tenant_id);

CREATE TABLE IF NOT EXISTS call_events (
    event_id        bigserial PRIMARY KEY,
    call_id         varchar(255) NOT NULL,
    event_type      varchar(255) NOT NULL,
    event_timestamp timestamptz,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE call_events
    ADD COLUMN IF NOT EXISTS received_at        timestamptz,
    -- The event carried no timestamp: event_timestamp is its receive time.
    ADD COLUMN IF NOT EXISTS timestamp_inferred boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS trace_id           varchar(255),
    -- SHA-256 of the message body: with call_id, the identity of a distinct message.
    ADD COLUMN IF NOT EXISTS body_sha256        bytea;

-- Exactly one copy of each distinct message, however often the broker redelivers it.
CREATE UNIQUE INDEX IF NOT EXISTS call_events_distinct_idx ON call_events (call_id, body_sha256);
CREATE INDEX IF NOT EXISTS call_events_call_id_idx ON call_events (call_id, event_id);

CREATE TABLE IF NOT EXISTS call_dialog_events (
    call_id         varchar(255) NOT NULL,
    turn_index      integer NOT NULL,
    user_text       text,
    ai_text         text,
    rag_sources     jsonb NOT NULL DEFAULT '[]',
    stt_ms          integer,
    llm_ms          integer,
    tts_ms          integer,
    event_timestamp timestamptz NOT NULL,
    body_sha256     bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, turn_index)
);

CREATE TABLE IF NOT EXISTS cost_models (
    id            bigserial PRIMARY KEY,
    resource_type varchar(64) NOT NULL,
    cost_per_unit numeric(12, 6) NOT NULL,
    currency      varchar(8) NOT NULL DEFAULT 'USD',
    start_date    timestamptz NOT NULL DEFAULT '1970-01-01T00:00:00Z'
);

CREATE TABLE IF NOT EXISTS usage_records (
    id              bigserial PRIMARY KEY,
    call_id         varchar(255) NOT NULL,
    usage_key       varchar(255) NOT NULL,
    service         varchar(255),
    resource_type   varchar(64) NOT NULL,
    quantity        numeric NOT NULL,
    event_timestamp timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS usage_key varchar(255);
CREATE UNIQUE INDEX IF NOT EXISTS usage_records_distinct_idx ON usage_records (call_id, usage_key);
