//! The call supervisor: starts call actors, and restarts one that fails with its state rebuilt
//! from the log. A call that keeps failing is quarantined so that it cannot take the service
//! down; its events stay in the log. It is the only one that puts entries in the routing map
//! and takes resting calls out of it (see `map`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, warn};

use super::call::{CallActor, CallArgs};
use super::context::CallContext;
use super::map::Routed;
use super::phase::PhaseCell;
use super::snapshot::CallSnapshot;
use crate::log::LoggedEvent;
use crate::merge::Phase;
use crate::telemetry::metric;

pub struct SpawnCall {
    pub call_id: String,
    pub origin: Origin,
    pub events: Vec<LoggedEvent>,
    /// `events` arrive live (not replayed from the log by recovery).
    pub live: bool,
    /// A recovered call's fold (`Origin::Recovered`), made by recovery from its logged events.
    pub snapshot: Option<Box<CallSnapshot>>,
}

/// Why a call is being started. Whatever the origin, a call that has an actor gets `events`
/// handed to it, and a resting call wakes with them; the origin says what to do with a call
/// that is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its first events: `events` are all there is.
    New,
    /// Seen before (its record was written, or its actor failed): rebuild it from the log, then
    /// fold `events`.
    SeenBefore,
    /// Rebuilt from the log at start: `snapshot` is the fold of its logged events. A call
    /// still open goes straight to rest.
    Recovered,
    /// A resting call's idle timeout is due; nothing to do if it already woke.
    Wake,
}

pub enum SupervisorMsg {
    /// Start actors for calls that have none; replies once they are in the routing map.
    Spawn(Vec<SpawnCall>, RpcReplyPort<()>),
}

pub struct SupervisorArgs {
    pub ctx: Arc<CallContext>,
    pub restart_budget: u32,
    pub restart_window: Duration,
}

pub struct SupervisorState {
    ctx: Arc<CallContext>,
    by_actor: HashMap<ActorId, String>,
    failures: HashMap<String, VecDeque<Instant>>,
    restart_budget: u32,
    restart_window: Duration,
}

/// An actor to start: the call, and the state it resumes from (woken or recovered).
struct Start {
    call: SpawnCall,
    resume: Option<Box<CallSnapshot>>,
}

impl SupervisorState {
    /// Hands a call's events to its actor, wakes it if it rests, or starts it by its origin.
    /// Returns the actor to start, if one is needed. `starting` calls are about to be put in
    /// the map: a call not in it is deferred if those and the map's reach `max_open_calls`.
    fn route(&mut self, mut call: SpawnCall, starting: usize) -> Option<Start> {
        let events = std::mem::take(&mut call.events);
        let (events, resting) = match self.ctx.calls.route(&call.call_id, events) {
            // Started by an earlier request in the meantime: the events are handed over.
            Routed::Sent => return None,
            Routed::Resting(events) => (events, true),
            Routed::Absent(events) => (events, false),
        };
        call.events = events;
        if resting {
            // Only the supervisor takes a resting entry out, so it is still there.
            if let Some(snapshot) = self.ctx.calls.wake(&call.call_id) {
                counter!(metric::CALL_WAKES.name).increment(1);
                return Some(Start {
                    call,
                    resume: Some(snapshot),
                });
            }
        }
        match call.origin {
            Origin::Wake => None,
            _ if self.ctx.calls.len() + starting >= self.ctx.max_open_calls => {
                self.defer(&call.call_id);
                None
            }
            Origin::Recovered => {
                let snapshot = call.snapshot.take().unwrap_or_default();
                if snapshot.is_ended() || snapshot.is_capped() {
                    Some(Start {
                        call,
                        resume: Some(snapshot),
                    })
                } else {
                    self.ctx.calls.insert_resting(call.call_id, snapshot);
                    None
                }
            }
            Origin::New | Origin::SeenBefore => Some(Start { call, resume: None }),
        }
    }

    /// Leaves a call out of memory: `max_open_calls` calls are in it. Its events are in the
    /// log and it is in `open_calls`; the tracker's catch-up takes it up when there is room.
    fn defer(&self, call_id: &str) {
        counter!(metric::CALLS_DEFERRED.name).increment(1);
        if self.ctx.deferred.add() {
            gauge!(metric::OPEN_CALLS_LIMIT_REACHED.name).set(1.0);
            warn!(
                call_id,
                max_open_calls = self.ctx.max_open_calls,
                "tracker.max_open_calls calls are in memory: calls not in memory are deferred (their events are logged and acked; they are taken up as room frees)"
            );
        }
    }

    /// Starts the actors together and puts them in the routing map. Concurrently, because
    /// each start waits for its actor's first turn on the scheduler: one after the other, a
    /// batch with hundreds of new calls took tens of milliseconds.
    async fn start_calls(&mut self, myself: &ActorRef<SupervisorMsg>, starts: Vec<Start>) {
        let spawns = starts.into_iter().map(|Start { call, resume }| {
            let phase = Arc::new(PhaseCell::new(Phase::Ringing));
            // A woken or recovered call is already folded; events come on top of it.
            let (load_from_log, events) = match (&resume, call.origin) {
                (Some(_), Origin::Recovered) => (false, Vec::new()),
                (Some(_), _) => (false, call.events),
                (None, origin) => (origin == Origin::SeenBefore, call.events),
            };
            let args = CallArgs {
                call_id: call.call_id.clone(),
                resume,
                load_from_log,
                events,
                live: call.live,
                phase: phase.clone(),
                ctx: self.ctx.clone(),
            };
            let supervisor = myself.get_cell();
            async move {
                let spawned = Actor::spawn_linked(None, CallActor, args, supervisor).await;
                (call.call_id, phase, spawned)
            }
        });
        for (call_id, phase, spawned) in futures_util::future::join_all(spawns).await {
            match spawned {
                Ok((actor, _)) => {
                    self.by_actor.insert(actor.get_id(), call_id.clone());
                    self.ctx.calls.insert_actor(call_id, actor, phase);
                }
                Err(e) => {
                    // Never fatal for the supervisor: the call's events are in the log and
                    // its next event (or the next start) brings it back.
                    error!(call_id = %call_id, error = %e, "could not start call actor");
                    counter!(metric::ACTOR_SPAWN_FAILURES.name).increment(1);
                }
            }
        }
    }

    /// Counts a failure; true when the call has used up its restart budget.
    fn over_budget(&mut self, call_id: &str) -> bool {
        let now = Instant::now();
        let window = self.restart_window;
        let recent = self.failures.entry(call_id.to_owned()).or_default();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            recent.pop_front();
        }
        recent.len() > self.restart_budget as usize
    }
}

pub struct CallSupervisor;

impl Actor for CallSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx: args.ctx,
            by_actor: HashMap::new(),
            failures: HashMap::new(),
            restart_budget: args.restart_budget,
            restart_window: args.restart_window,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Spawn(calls, reply) => {
                let mut starts = Vec::new();
                for call in calls {
                    if state.ctx.quarantined.contains(&call.call_id) {
                        counter!(metric::QUARANTINED_EVENTS.name)
                            .increment(call.events.len() as u64);
                        continue;
                    }
                    let starting = starts.len();
                    starts.extend(state.route(call, starting));
                }
                state.start_calls(&myself, starts).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    // Overridden because ractor's default stops the supervisor when any child ends.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // A call that finished normally starts with a clean restart budget next time.
                if let Some(call_id) = state.by_actor.remove(&cell.get_id()) {
                    state.failures.remove(&call_id);
                }
            }
            SupervisionEvent::ActorFailed(cell, reason) => {
                let Some(call_id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let failed = cell.get_id();
                // Drop the failed actor's entry; events routed meanwhile are in the log.
                state.ctx.calls.remove_failed(&call_id, failed);
                if state.over_budget(&call_id) {
                    state.ctx.quarantined.insert(call_id.clone());
                    counter!(metric::ACTOR_QUARANTINES.name).increment(1);
                    let failures = state.failures.get(&call_id).map_or(0, VecDeque::len);
                    // Recorded off the supervisor's loop: a slow database must not hold up
                    // the other calls. Until it lands, the call stays open and is retried on
                    // the next start, which is the safe side.
                    let log = state.ctx.log.clone();
                    let reason = reason.to_string();
                    state.ctx.tasks.spawn(async move {
                        let failures = i32::try_from(failures).unwrap_or(i32::MAX);
                        match log.quarantine(&call_id, failures, &reason).await {
                            Ok(trace_id) => error!(
                                call_id = %call_id,
                                trace_id = trace_id.as_deref().unwrap_or(""),
                                error = %reason,
                                failures,
                                "call actor keeps failing; call quarantined (its events stay in call_events)"
                            ),
                            Err(e) => error!(
                                call_id = %call_id,
                                error = %reason,
                                failures,
                                db_error = %e,
                                "call actor keeps failing; quarantined in memory, but recording it failed"
                            ),
                        }
                    });
                    return Ok(());
                }
                counter!(metric::ACTOR_RESTARTS.name).increment(1);
                warn!(call_id = %call_id, error = %reason, "call actor failed; restarting it from the log");
                let restart = SpawnCall {
                    call_id: call_id.clone(),
                    origin: Origin::SeenBefore,
                    events: Vec::new(),
                    live: true,
                    snapshot: None,
                };
                let starts = state.route(restart, 0).into_iter().collect();
                state.start_calls(&myself, starts).await;
            }
            _ => {}
        }
        Ok(())
    }
}
