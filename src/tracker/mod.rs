//! The call tracker: one actor per active call, under one supervisor.
//!
//! Events reach it only after they are committed to the log (see `ingest`), so an actor is a
//! cache over the log: whatever it loses (a crash, a failure, a stop) is rebuilt from
//! `call_events`.
//!
//! Routing goes through the typed `CallMap` (`map`): an entry is a call's actor or, while the
//! call rests, its folded state. The map's operations are the only way to change it, and they
//! keep invariant 7 (no routed event is left behind).

mod call;
mod context;
mod map;
mod message;
mod phase;
mod snapshot;
mod supervisor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use ractor::{Actor, ActorRef, call_t};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use context::CallContext;
pub use map::{ActiveCounts, CallMap};
pub use message::CallMsg;
pub use snapshot::{CallSnapshot, LiveCall};

use map::{Found, Routed};
use supervisor::{CallSupervisor, Origin, SpawnCall, SupervisorArgs, SupervisorMsg};

use crate::config::TrackerSettings;
use crate::log::LoggedEvent;
use crate::telemetry::metric;

#[derive(Clone)]
pub struct Tracker {
    ctx: Arc<CallContext>,
    supervisor: ActorRef<SupervisorMsg>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("could not start the call supervisor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("the call supervisor is gone: {0}")]
    SupervisorGone(String),
}

impl Tracker {
    /// Starts the supervisor. `quarantined` are calls that exhausted their restart budget
    /// earlier: their events are not dispatched until an operator releases them.
    pub async fn start(
        ctx: CallContext,
        settings: &TrackerSettings,
        quarantined: Vec<String>,
    ) -> Result<(Tracker, JoinHandle<()>), TrackerError> {
        for call_id in quarantined {
            ctx.quarantined.insert(call_id);
        }
        let ctx = Arc::new(ctx);
        let (supervisor, handle) = Actor::spawn(
            None,
            CallSupervisor,
            SupervisorArgs {
                ctx: ctx.clone(),
                restart_budget: settings.restart_budget,
                restart_window: settings.restart_window,
            },
        )
        .await?;
        let tracker = Tracker { ctx, supervisor };
        tracker.ctx.tasks.spawn(tracker.clone().report_gauges());
        Ok((tracker, handle))
    }

    /// Routes committed events to their calls' actors, starting actors for calls not active.
    /// Events must come in log order; the ids of one call only grow from one call to the next.
    pub async fn dispatch(&self, events: Vec<LoggedEvent>) -> Result<(), TrackerError> {
        let Some(min_id) = events.iter().map(|e| e.event_id).min() else {
            return Ok(());
        };
        let mut order: Vec<String> = Vec::new();
        let mut groups: std::collections::HashMap<String, Vec<LoggedEvent>> =
            std::collections::HashMap::new();
        for e in events {
            groups
                .entry(e.call_id.clone())
                .or_insert_with(|| {
                    order.push(e.call_id.clone());
                    Vec::new()
                })
                .push(e);
        }
        let mut unknown: Vec<(String, Vec<LoggedEvent>)> = Vec::new();
        let mut spawns: Vec<SpawnCall> = Vec::new();
        for call_id in order {
            let evs = groups.remove(&call_id).unwrap_or_default();
            match self.ctx.calls.route(&call_id, evs) {
                Routed::Sent => {}
                // The supervisor wakes it with these events.
                Routed::Resting(events) => spawns.push(SpawnCall {
                    call_id,
                    origin: Origin::SeenBefore,
                    events,
                    live: true,
                    snapshot: None,
                }),
                Routed::Absent(events) => unknown.push((call_id, events)),
            }
        }
        if unknown.is_empty() {
            return self.spawn_calls(spawns).await;
        }
        let ids: Vec<&str> = unknown.iter().map(|(c, _)| c.as_str()).collect();
        let seen_before = match self.ctx.log.calls_with_events_before(&ids, min_id).await {
            Ok(set) => Some(set),
            Err(e) => {
                // Unsure: rebuilding from the log is always right, only slower.
                warn!(error = %e, "could not tell new calls from known ones; rebuilding all from the log");
                None
            }
        };
        spawns.extend(unknown.into_iter().map(|(call_id, events)| {
            let load_from_log = seen_before.as_ref().is_none_or(|s| s.contains(&call_id));
            if load_from_log {
                // Events for a call whose actor had finished: usually a recording or an
                // identification after the record was written.
                counter!(metric::LATE_EVENTS.name).increment(events.len() as u64);
            }
            SpawnCall {
                call_id,
                origin: if load_from_log {
                    Origin::SeenBefore
                } else {
                    Origin::New
                },
                events,
                live: true,
                snapshot: None,
            }
        }));
        self.spawn_calls(spawns).await
    }

    /// Takes up calls rebuilt from the log (recovery at start: each call's fold of its logged
    /// events). Calls still open go straight to rest; ended and capped ones get an actor, to
    /// linger and write, or to be written and quarantined.
    pub async fn resume(&self, calls: Vec<(String, CallSnapshot)>) -> Result<(), TrackerError> {
        let spawns = calls
            .into_iter()
            .map(|(call_id, snapshot)| SpawnCall {
                call_id,
                origin: Origin::Recovered,
                events: Vec::new(),
                live: false,
                snapshot: Some(Box::new(snapshot)),
            })
            .collect();
        self.spawn_calls(spawns).await
    }

    /// Distinct events a call folds (`tracker.max_events_per_call`).
    pub fn max_events_per_call(&self) -> u32 {
        self.ctx.max_events_per_call
    }

    async fn spawn_calls(&self, spawns: Vec<SpawnCall>) -> Result<(), TrackerError> {
        if spawns.is_empty() {
            return Ok(());
        }
        call_t!(self.supervisor, SupervisorMsg::Spawn, 60_000, spawns)
            .map_err(|e| TrackerError::SupervisorGone(e.to_string()))
    }

    /// The merged state of one active call, for the live view.
    pub async fn inspect(&self, call_id: &str) -> Option<LiveCall> {
        let found = self.ctx.calls.find(call_id, |snapshot| {
            let prices = self.ctx.prices.read().map(|p| p.clone()).ok()?;
            Some(snapshot.live(call_id, &prices, true))
        })?;
        match found {
            Found::Actor(actor) => call_t!(actor, CallMsg::Inspect, 2_000).ok(),
            Found::Resting(live) => live,
        }
    }

    pub fn active(&self) -> ActiveCounts {
        self.scan(None).0
    }

    /// The active-call counts and, given a time, the resting calls due for their idle timeout.
    fn scan(&self, due_by: Option<Instant>) -> (ActiveCounts, Vec<String>) {
        self.ctx.calls.scan(self.ctx.idle_timeout, due_by)
    }

    /// Once a second: publishes the active-call gauges, wakes the resting calls whose idle
    /// timeout is due (their actor writes the TIMED_OUT record), and takes deferred calls up
    /// while there is room. Counting the map rather than keeping running sums means the gauges
    /// can never drift, whatever fails.
    async fn report_gauges(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut catch_up = CatchUp::default();
        gauge!(metric::OPEN_CALLS_LIMIT_REACHED.name).set(0.0);
        loop {
            tick.tick().await;
            let (c, due) = self.scan(Some(Instant::now()));
            gauge!(metric::ACTIVE_CALLS.name, "state" => "ringing").set(c.ringing as f64);
            gauge!(metric::ACTIVE_CALLS.name, "state" => "answered").set(c.answered as f64);
            gauge!(metric::CALLS_LINGERING.name).set(c.ending as f64);
            gauge!(metric::CALLS_RESTING.name).set(c.resting as f64);
            let wakes = due
                .into_iter()
                .map(|call_id| SpawnCall {
                    call_id,
                    origin: Origin::Wake,
                    events: Vec::new(),
                    live: false,
                    snapshot: None,
                })
                .collect();
            if let Err(e) = self.spawn_calls(wakes).await {
                warn!(error = %e, "could not wake calls due for their idle timeout");
            }
            self.catch_up(&mut catch_up).await;
            if supervisor_gone(self.supervisor.get_status()) {
                break;
            }
        }
    }

    /// Takes deferred calls up while there is room (`max_open_calls`): walks `open_calls` in
    /// call-id order, `CATCH_UP_PAGE` ids per query, and starts those not in memory from the
    /// log, as many as there is room for. A pass that reaches the end with no call deferred
    /// since it began has taken every deferred call up; otherwise another pass follows.
    async fn catch_up(&self, pass: &mut CatchUp) {
        let deferred = &self.ctx.deferred;
        for _ in 0..CATCH_UP_QUERIES {
            let room = self.ctx.max_open_calls.saturating_sub(self.ctx.calls.len());
            if !deferred.pending() || room == 0 || self.ctx.stopping.is_cancelled() {
                return;
            }
            let since = *pass.since.get_or_insert_with(|| deferred.count());
            let ids = match self
                .ctx
                .log
                .open_calls_after(&pass.after, CATCH_UP_PAGE)
                .await
            {
                Ok(ids) => ids,
                Err(e) => {
                    warn!(error = %e, "could not list open calls to take deferred calls up; trying again");
                    return;
                }
            };
            let end = ids.len() < CATCH_UP_PAGE as usize;
            let mut spawns = Vec::new();
            let mut walked = 0;
            for call_id in &ids {
                if spawns.len() == room {
                    break;
                }
                walked += 1;
                if !self.ctx.calls.contains(call_id) && !self.ctx.quarantined.contains(call_id) {
                    spawns.push(SpawnCall {
                        call_id: call_id.clone(),
                        origin: Origin::SeenBefore,
                        events: Vec::new(),
                        live: false,
                        snapshot: None,
                    });
                }
            }
            if let Some(last) = ids[..walked].last() {
                pass.after.clone_from(last);
            }
            let taken = spawns.len();
            if let Err(e) = self.spawn_calls(spawns).await {
                warn!(error = %e, "could not take deferred calls up; trying again");
                return;
            }
            if taken > 0 {
                info!(calls = taken, "deferred calls taken up");
            }
            if end && walked == ids.len() {
                *pass = CatchUp::default();
                if deferred.settle(since) {
                    gauge!(metric::OPEN_CALLS_LIMIT_REACHED.name).set(0.0);
                    info!("every deferred call is taken up");
                }
                return;
            }
        }
    }

    /// Graceful stop: ended calls write their records now; calls still open are left to be
    /// rebuilt from the log on the next start. Returns once every actor has stopped.
    pub async fn shutdown(&self, bound: Duration) {
        self.ctx.stopping.cancel();
        // Resting calls have not ended: like every open call, the next start rebuilds them.
        let actors = self.ctx.calls.actors();
        info!(active_calls = actors.len(), "stopping call actors");
        for a in &actors {
            let _ = a.send_message(CallMsg::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + bound;
        for a in actors {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if a.get_status() != ractor::ActorStatus::Stopped
                && tokio::time::timeout(remaining, a.wait(None)).await.is_err()
            {
                warn!("call actors did not stop within the shutdown bound");
                break;
            }
        }
        self.supervisor.stop(None);
    }
}

impl Tracker {
    /// Stops every call actor and the supervisor at once, writing nothing (the lease was
    /// lost): the calls in memory are dropped; the log keeps their events for the next active.
    pub fn abandon(&self) {
        self.ctx.stopping.cancel();
        self.supervisor.kill();
        for a in self.ctx.calls.actors() {
            a.kill();
        }
    }
}

/// Ids of `open_calls` read per catch-up query, and queries per second at most: a pass walks
/// 10,000 open calls a second.
const CATCH_UP_PAGE: i64 = 1000;
const CATCH_UP_QUERIES: usize = 10;

/// Where the catch-up of deferred calls is in its pass over `open_calls`.
#[derive(Default)]
struct CatchUp {
    /// The last call id walked (empty: from the first).
    after: String,
    /// The deferral count when the pass began.
    since: Option<u64>,
}

/// Whether the gauge and idle-timeout loop should end: only once the supervisor stops. Not
/// "not running": `Actor::spawn` returns before the supervisor's task has marked it running,
/// and a loop that took `Starting` for the end would never wake a resting call again.
fn supervisor_gone(status: ractor::ActorStatus) -> bool {
    matches!(
        status,
        ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
    )
}

#[cfg(test)]
mod tests {
    use super::supervisor_gone;
    use ractor::ActorStatus;

    #[test]
    fn the_timeout_loop_outlives_a_supervisor_still_starting() {
        for running in [
            ActorStatus::Unstarted,
            ActorStatus::Starting,
            ActorStatus::Running,
            ActorStatus::Upgrading,
            ActorStatus::Draining,
        ] {
            assert!(!supervisor_gone(running), "{running:?}");
        }
        assert!(supervisor_gone(ActorStatus::Stopping));
        assert!(supervisor_gone(ActorStatus::Stopped));
    }
}
