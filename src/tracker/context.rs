//! `CallContext`: what the tracker, its supervisor and every call actor share.

use std::sync::{Arc, RwLock};
use std::time::Duration;

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
    pub backoff: BackoffSettings,
    /// Fires when the tracker starts to stop: an actor still waiting for the database to
    /// reload its call gives up (the next start rebuilds the call from the log).
    pub stopping: CancellationToken,
    /// Owns the tasks the tracker spawns besides its actors, so that the application joins
    /// them when it stops.
    pub tasks: TaskTracker,
}
