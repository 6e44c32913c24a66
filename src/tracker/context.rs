//! `CallContext`: what the tracker, its supervisor and every call actor share.

use std::sync::{Arc, RwLock};
use std::time::Duration;

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
}
