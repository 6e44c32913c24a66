-- A `calls` row written by the service this one replaced (its `event_count` is 0: this service
-- always folds at least one event) is adopted at its first write, and marked: from then on its
-- start time, tenant, numbers and user keep the old service's values wherever the fold of the
-- logged events has none (the old service's `call_events` rows often carry `{}`).
ALTER TABLE calls ADD COLUMN IF NOT EXISTS adopted boolean NOT NULL DEFAULT false;
