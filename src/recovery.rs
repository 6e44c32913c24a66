//! Recovery at start: every open call (logged events its row does not cover yet) is rebuilt
//! from the event log, however the service last stopped.
//!
//! Their projections, and those of quarantined calls, are written again first: a crash may
//! have come between a commit and its projections, and only these calls can be missing some (a
//! call leaves `open_calls` only with its projections written). Then every event logged before
//! this start counts as projected.

use std::time::{Duration, Instant};

use metrics::counter;
use tokio::sync::mpsc;
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
/// Chunks loaded ahead while the previous ones are re-projected and resumed: the database reads
/// the next chunk while the service decodes and folds this one.
const CHUNKS_AHEAD: usize = 2;

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
        let count = calls.len();
        let (loads, mut loaded) = mpsc::channel(CHUNKS_AHEAD);
        let loader = {
            let (log, backoff, shutdown) = (
                self.log.clone(),
                self.backoff.clone(),
                self.shutdown.clone(),
            );
            tokio::spawn(async move {
                for chunk in calls.chunks(CALLS_PER_CHUNK) {
                    let chunk =
                        query(&backoff, &shutdown, "load calls", || log.load_calls(chunk)).await;
                    let failed = chunk.is_err();
                    if loads.send(chunk).await.is_err() || failed {
                        break;
                    }
                }
            })
        };
        while let Some(chunk) = loaded.recv().await {
            let chunk = self.reprojected(chunk?).await?;
            match self.tracker.resume(chunk).await {
                Ok(n) => events += n,
                Err(e) => {
                    error!(error = %e, "could not resume calls; they resume with their next event")
                }
            }
        }
        let _ = loader.await;
        let quarantined = self
            .query("list quarantined calls", || self.log.quarantined_calls())
            .await?;
        for chunk in quarantined.chunks(CALLS_PER_CHUNK) {
            let loaded = self
                .query("load calls", || self.log.load_calls(chunk))
                .await?;
            self.reprojected(loaded).await?;
        }
        self.projector.cover(logged_before).await;
        counter!(metric::CALLS_RECOVERED.name).increment(count as u64);
        info!(calls = count, events, took = ?started.elapsed(), "recovered open calls from the event log");
        Ok(())
    }

    /// Writes the projections of loaded calls again; hands the calls back.
    async fn reprojected(
        &self,
        loaded: Vec<(String, Vec<LoggedEvent>)>,
    ) -> Result<Vec<(String, Vec<LoggedEvent>)>, RecoveryError> {
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
        run: impl FnMut() -> Fut,
    ) -> Result<T, RecoveryError>
    where
        Fut: Future<Output = Result<T, LogError>>,
    {
        query(self.backoff, self.shutdown, what, run).await
    }
}

/// Runs one recovery query, retrying while the database is away.
async fn query<T, Fut>(
    backoff: &BackoffSettings,
    shutdown: &CancellationToken,
    what: &'static str,
    run: impl FnMut() -> Fut,
) -> Result<T, RecoveryError>
where
    Fut: Future<Output = Result<T, LogError>>,
{
    Retry::new(backoff, shutdown)
        .run(run, |e, delay: Duration| {
            warn!(error = %e, retry_in = ?delay, "recovery: could not {what}; retrying")
        })
        .await
        .map_err(|stop| match stop {
            Stop::Cancelled => RecoveryError::Cancelled,
            Stop::Refused(source) => RecoveryError::Failed { what, source },
        })
}
