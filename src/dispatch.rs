//! The dispatcher: the one task between the event log and what follows it. It takes committed
//! batches from a short FIFO queue, in commit order, and hands each to the projector (dialog
//! turns and usage lines) and then to the tracker (the call actors).
//!
//! One task and one queue are what keep two guarantees: each call's events reach its actor in
//! log order (ARCHITECTURE.md, invariant 7), and batches reach the projector in commit order,
//! which its "projected through event id N" mark relies on (invariant 13). A short queue means
//! that when the tracker or the projector falls behind, commits wait rather than events piling
//! up in memory, and the broker holds the rest.

use metrics::{gauge, histogram};
use tokio::sync::mpsc;
use tracing::error;

use crate::log::LoggedEvent;
use crate::project::ProjectorHandle;
use crate::telemetry::metric;
use crate::tracker::Tracker;

/// Committed batches waiting for the dispatcher.
const QUEUE_BATCHES: usize = 4;

/// The queue the committer sends committed batches into, and the dispatcher that serves it.
pub fn channel(
    projector: ProjectorHandle,
    tracker: Tracker,
) -> (mpsc::Sender<Vec<LoggedEvent>>, Dispatcher) {
    let (tx, queue) = mpsc::channel(QUEUE_BATCHES);
    (
        tx,
        Dispatcher {
            projector,
            tracker,
            queue,
        },
    )
}

pub struct Dispatcher {
    projector: ProjectorHandle,
    tracker: Tracker,
    queue: mpsc::Receiver<Vec<LoggedEvent>>,
}

impl Dispatcher {
    /// Hands batches on until every sender is dropped and the queue is empty. It then drops its
    /// projector handle, the last one: the projector ends once it has written what it holds.
    pub async fn run(mut self) {
        while let Some(events) = self.queue.recv().await {
            gauge!(metric::DISPATCH_QUEUE_BATCHES.name).set(self.queue.len() as f64);
            let started = std::time::Instant::now();
            self.projector.project(&events).await;
            if let Err(e) = self.tracker.dispatch(events).await {
                // The events are committed: the calls are rebuilt from the log on the next start.
                error!(error = %e, "could not dispatch committed events");
            }
            histogram!(metric::DISPATCH_DURATION.name).record(started.elapsed().as_secs_f64());
        }
    }
}
