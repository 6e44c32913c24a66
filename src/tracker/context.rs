//! `CallContext`: what the tracker, its supervisor and every call actor share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::map::CallMap;
use crate::config::BackoffSettings;
use crate::log::EventLog;
use crate::merge::PriceBook;
use crate::writer::WriterHandle;

/// What every call actor shares.
pub struct CallContext {
    pub log: EventLog,
    pub writer: WriterHandle,
    pub prices: Arc<RwLock<Arc<PriceBook>>>,
    /// The routing map; start with an empty one (`Arc::default()`).
    pub calls: Arc<CallMap>,
    pub linger: Duration,
    pub idle_timeout: Duration,
    pub rest_after: Duration,
    /// Distinct events a call folds (`tracker.max_events_per_call`).
    pub max_events_per_call: u32,
    /// Calls in the routing map at most (`tracker.max_open_calls`); past it new calls are
    /// deferred (see `Tracker`).
    pub max_open_calls: usize,
    /// Calls whose events are logged but handed to no actor: those that kept failing, and
    /// those past `max_events_per_call`. Filled from `quarantined_calls` at start.
    pub quarantined: DashSet<String>,
    /// Whether calls were deferred at `max_open_calls` and not all taken up since.
    pub deferred: Deferred,
    pub backoff: BackoffSettings,
    /// Fires when the tracker starts to stop: an actor still waiting for the database to
    /// reload its call gives up (the next start rebuilds the call from the log).
    pub stopping: CancellationToken,
    /// Owns the tasks the tracker spawns besides its actors, so that the application joins
    /// them when it stops.
    pub tasks: TaskTracker,
}

/// Calls deferred at `max_open_calls`: their events are logged and they are in `open_calls`,
/// but not in memory. Only whether there are any is kept (a count of deferrals, not their ids:
/// memory stays bounded however many are deferred); the tracker's catch-up walks `open_calls`
/// for those not in memory while any are.
#[derive(Default)]
pub struct Deferred {
    /// Deferrals so far: a catch-up pass that saw none during it took every deferred call up.
    count: AtomicU64,
    /// Deferrals not yet taken up by a complete pass.
    pending: AtomicBool,
}

impl Deferred {
    /// Records a deferral; true if it is the first since the last complete catch-up.
    pub fn add(&self) -> bool {
        self.count.fetch_add(1, Ordering::AcqRel);
        !self.pending.swap(true, Ordering::AcqRel)
    }

    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// A catch-up pass that began at deferral `since` reached the end of `open_calls`: if
    /// no call was deferred meanwhile, every deferred call is in memory (or written). True if
    /// so.
    pub fn settle(&self, since: u64) -> bool {
        if self.count() == since {
            self.pending.store(false, Ordering::Release);
            // A deferral between the two reads sets it again.
            if self.count() == since {
                return true;
            }
            self.pending.store(true, Ordering::Release);
        }
        false
    }
}
