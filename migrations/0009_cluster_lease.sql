-- The lease that makes at most one instance per queue active (src/lease.rs). The active holds
-- a session-level advisory lock on a connection of its own; on taking it, it raises the key's
-- epoch here. Every write of an active instance runs `cdr_fence(key, epoch)` in its statement
-- or transaction: it takes a KEY SHARE lock on the key's row and fails unless the epoch is
-- still the writer's. An instance taking over raises the epoch under a FOR UPDATE lock, which
-- waits for the writes of the previous active still in flight; once it commits, every later
-- write of the previous active fails. So no two instances' writes ever interleave, and the new
-- active's recovery (which starts after the raise) sees everything the previous one committed.
CREATE TABLE IF NOT EXISTS cluster_lease (
    key         text PRIMARY KEY,
    epoch       bigint NOT NULL,
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);

-- Fails with SQLSTATE CDR01 unless `lease_key` is at `lease_epoch`; a NULL key (tools and
-- tests that write without a lease) checks nothing.
CREATE OR REPLACE FUNCTION cdr_fence(lease_key text, lease_epoch bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF lease_key IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM cluster_lease WHERE key = lease_key AND epoch = lease_epoch FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the lease % has moved past epoch %: this instance is no longer active',
            lease_key, lease_epoch USING ERRCODE = 'CDR01';
    END IF;
    RETURN lease_epoch;
END
$$;
