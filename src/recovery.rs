//! Recovery at start: every open call (logged events its row does not cover yet) is rebuilt
//! from the event log, however the service last stopped.
//!
//! Their projections, and those of quarantined calls, are written again first: a crash may
//! have come between a commit and its projections, and only these calls can be missing some (a
//! call leaves `open_calls` only with its projections written). Then every event logged before
//! this start counts as projected.

use std::time::{Duration, Instant};

use metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::BackoffSettings;
use crate::log::{EventLog, LogError, LoggedEvent};
use crate::project::{ProjectionRows, ProjectorHandle};
use crate::retry::{Retry, Stop};
use crate::telemetry::metric;
use crate::tracker::Tracker;

/// Calls loaded from the log per query.
const CALLS_PER_CHUNK: usize = 1000;

pub struct Recovery<'a> {
    pub log: &'a EventLog,
    pub tracker: &'a Tracker,
    pub projector: &'a ProjectorHandle,
    pub backoff: &'a BackoffSettings,
    pub shutdown: &'a CancellationToken,
}

/// Why recovery stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The service is stopping; what was not recovered is recovered at the next start.
    #[error("stopped before recovery finished")]
    Cancelled,
    /// The log refused a recovery query (not an outage: a broken schema, say).
    #[error("recovery: could not {what}: {source}")]
    Failed {
        what: &'static str,
        source: LogError,
    },
}

impl Recovery<'_> {
    /// Rebuilds the open calls, re-projects them and the quarantined calls, then declares the
    /// events logged before this start projected. Retries while the database is away.
    pub async fn run(&self) -> Result<(), RecoveryError> {
        let started = Instant::now();
        let logged_before = self
            .query("read the log's last event id", || self.log.max_event_id())
            .await?;
        let calls = self
            .query("list open calls", || self.log.open_calls())
            .await?;
        let mut events = 0;
        for chunk in calls.chunks(CALLS_PER_CHUNK) {
            let loaded = self.load_reprojected(chunk).await?;
            match self.tracker.resume(loaded).await {
                Ok(n) => events += n,
                Err(e) => {
                    error!(error = %e, "could not resume calls; they resume with their next event")
                }
            }
        }
        let quarantined = self
            .query("list quarantined calls", || self.log.quarantined_calls())
            .await?;
        for chunk in quarantined.chunks(CALLS_PER_CHUNK) {
            self.load_reprojected(chunk).await?;
        }
        self.projector.cover(logged_before).await;
        counter!(metric::CALLS_RECOVERED.name).increment(calls.len() as u64);
        info!(calls = calls.len(), events, took = ?started.elapsed(), "recovered open calls from the event log");
        Ok(())
    }

    /// Loads calls with all their logged events and writes their projections again.
    async fn load_reprojected(
        &self,
        call_ids: &[String],
    ) -> Result<Vec<(String, Vec<LoggedEvent>)>, RecoveryError> {
        let loaded = self
            .query("load calls", || self.log.load_calls(call_ids))
            .await?;
        let rows = ProjectionRows::of(loaded.iter().flat_map(|(call_id, events)| {
            events.iter().map(move |e| (call_id.as_str(), &e.event))
        }));
        if self
            .projector
            .write_now(rows, self.backoff, self.shutdown)
            .await
        {
            Ok(loaded)
        } else {
            Err(RecoveryError::Cancelled)
        }
    }

    /// Runs one recovery query, retrying while the database is away.
    async fn query<T, Fut>(
        &self,
        what: &'static str,
        query: impl FnMut() -> Fut,
    ) -> Result<T, RecoveryError>
    where
        Fut: Future<Output = Result<T, LogError>>,
    {
        Retry::new(self.backoff, self.shutdown)
            .run(
                query,
                |e, delay: Duration| {
                    warn!(error = %e, retry_in = ?delay, "recovery: could not {what}; retrying")
                },
            )
            .await
            .map_err(|stop| match stop {
                Stop::Cancelled => RecoveryError::Cancelled,
                Stop::Refused(source) => RecoveryError::Failed { what, source },
            })
    }
}
