-- How far the active instance's projections are committed: every event of the log at or
-- below `projected_through` has its dialog turn in `call_dialog_events` (src/project.rs). The
-- projector raises it, fenced, after each write; recovery then re-projects only the events
-- above it instead of every open call's. NULL (never written, or a database from before this
-- column) makes recovery re-project every open and quarantined call, as before.
ALTER TABLE cluster_lease ADD COLUMN IF NOT EXISTS projected_through bigint;
