//! The lease: at most one active instance per queue, enforced by the database.
//!
//! An instance is active only while it holds a PostgreSQL session-level advisory lock, keyed by
//! `cluster.lease_key` (the queue's name by default), on a connection of its own. Having taken
//! the lock it raises the key's epoch in `cluster_lease` (migration 0009), and every write it
//! makes carries that epoch (`Fence`): `cdr_fence` fails any write whose epoch is no longer the
//! key's. The raise waits, under a row lock, for the previous active's writes still in flight,
//! so from the moment it commits the previous active can commit nothing more, and the new
//! active's recovery, which starts after it, sees everything that one committed.
//!
//! Without the lock an instance is a standby: connected, migrated, checking every
//! `cluster.lease_check` whether the lock is free. The active checks its lease connection as
//! often, and that the epoch is still its own; when either fails, it has lost the lease.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::BackoffSettings;
use crate::health::{Health, Role};

/// What every write of the active instance carries: its lease key and epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    key: Option<String>,
    epoch: i64,
}

impl Fence {
    /// No fence: for tools and tests that write without a lease (`cdr_fence` checks nothing).
    pub fn none() -> Self {
        Fence::default()
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Checks the fence as the first statement of the caller's transaction: fails (SQLSTATE
    /// CDR01) if this instance no longer holds the lease; until the transaction ends, an
    /// instance taking over waits for it.
    pub async fn check(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.key.is_none() {
            return Ok(());
        }
        sqlx::query("SELECT cdr_fence($1, $2)")
            .bind(self.key.as_deref())
            .bind(self.epoch)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The lease this instance holds, on its connection of its own.
pub struct Lease {
    conn: PgConnection,
    lock_id: i64,
    fence: Fence,
}

/// How the lease was lost.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("the lease connection failed: {0}")]
    Connection(String),
    #[error("the lease's epoch moved to {found:?} (ours: {ours}): another instance took it")]
    Taken { ours: i64, found: Option<i64> },
}

/// The advisory-lock id of a lease key: the first 8 bytes of its SHA-256, so every instance
/// (whatever its build) derives the same one.
pub fn lock_id(key: &str) -> i64 {
    let digest = Sha256::digest(format!("cdr-service lease {key}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Lease {
    /// Waits until this instance holds the lease of `key`, checking every `check` while
    /// another instance holds it (a standby meanwhile, in `health`) and backing off while the
    /// database is away. `holder` names this instance in `cluster_lease`. None if `shutdown`
    /// fired first.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        options: &PgConnectOptions,
        key: &str,
        holder: &str,
        check: Duration,
        backoff: &BackoffSettings,
        health: &Health,
        shutdown: &CancellationToken,
    ) -> Option<Lease> {
        let lock_id = lock_id(key);
        let mut delays = Backoff::new(backoff);
        let mut announced = false;
        let waiting = Instant::now();
        loop {
            let conn = tokio::select! {
                c = options.connect() => c,
                () = shutdown.cancelled() => return None,
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    let delay = delays.next_delay();
                    warn!(error = %e, retry_in = ?delay, "lease: cannot connect to the database");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = shutdown.cancelled() => return None,
                    }
                }
            };
            delays.reset();
            loop {
                let taken: Result<bool, sqlx::Error> =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(lock_id)
                        .fetch_one(&mut conn)
                        .await;
                match taken {
                    Ok(true) => match raise_epoch(&mut conn, key, holder).await {
                        Ok(epoch) => {
                            info!(lease = key, epoch, waited = ?waiting.elapsed(), "lease taken: this instance is the active one");
                            return Some(Lease {
                                conn,
                                lock_id,
                                fence: Fence {
                                    key: Some(key.to_owned()),
                                    epoch,
                                },
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "lease: could not raise the epoch; trying again");
                            let _ = conn.close().await;
                            break;
                        }
                    },
                    Ok(false) => {
                        health.set_role(Role::Standby);
                        if !announced {
                            info!(lease = key, "standby: another instance holds the lease");
                            announced = true;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "lease: the connection failed; reconnecting");
                        break;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(check) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Returns when the lease is lost: its connection fails (or does not answer within
    /// `check`), or its epoch is no longer ours. Checked every `check`.
    pub async fn watch(&mut self, check: Duration) -> Lost {
        let key = self.fence.key.clone().unwrap_or_default();
        loop {
            tokio::time::sleep(check).await;
            let read = tokio::time::timeout(
                check.max(Duration::from_millis(500)),
                sqlx::query_scalar::<_, i64>("SELECT epoch FROM cluster_lease WHERE key = $1")
                    .bind(&key)
                    .fetch_optional(&mut self.conn),
            )
            .await;
            match read {
                Ok(Ok(Some(epoch))) if epoch == self.fence.epoch => {}
                Ok(Ok(found)) => {
                    return Lost::Taken {
                        ours: self.fence.epoch,
                        found,
                    };
                }
                Ok(Err(e)) => return Lost::Connection(e.to_string()),
                Err(_) => return Lost::Connection(format!("no answer within {check:?}")),
            }
        }
    }

    /// Gives the lease up (the graceful stop's last step): another instance may take it at once.
    pub async fn release(mut self) {
        let released: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(self.lock_id)
                .fetch_one(&mut self.conn)
                .await;
        match released {
            Ok(_) => info!("lease released"),
            Err(e) => {
                warn!(error = %e, "lease: release failed; it frees when the connection closes")
            }
        }
        let _ = self.conn.close().await;
    }
}

/// Raises the key's epoch, waiting for the writes of the previous active still in flight (they
/// hold KEY SHARE locks on the row, which FOR UPDATE waits for); returns the new epoch.
async fn raise_epoch(conn: &mut PgConnection, key: &str, holder: &str) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO cluster_lease (key, epoch, holder) VALUES ($1, 0, $2) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(holder)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT epoch FROM cluster_lease WHERE key = $1 FOR UPDATE")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE cluster_lease SET epoch = epoch + 1, holder = $2, acquired_at = now() \
         WHERE key = $1 RETURNING epoch",
    )
    .bind(key)
    .bind(holder)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_names_the_same_lock_and_keys_differ() {
        assert_eq!(lock_id("q"), lock_id("q"));
        assert_ne!(lock_id("q"), lock_id("r"));
    }
}
