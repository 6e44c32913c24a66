-- The log keeps each message exactly as it came: its bytes and their wire format (`json` or
-- `protobuf`). `payload` keeps a JSON rendering (the body itself for JSON, camelCase keys for
-- protobuf), so one query reads both. Recovery decodes `body` with the live decoder, so a call
-- rebuilt from the log folds exactly as it did live. Rows logged before these columns have
-- none and are rebuilt from `payload`.
ALTER TABLE call_events
    ADD COLUMN IF NOT EXISTS body          bytea,
    ADD COLUMN IF NOT EXISTS body_encoding varchar(16);
