-- Figures of a call's events its record could not keep (a cost beyond any arithmetic or beyond
-- its column, a usage quantity beyond its column), comma-separated; NULL when none. The record
-- is written all the same: only those figures are missing from it (src/writer.rs,
-- cdr_core::merge::ANOMALIES).
ALTER TABLE calls ADD COLUMN IF NOT EXISTS anomalies text;
