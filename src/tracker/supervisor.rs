//! The call supervisor: starts call actors, and restarts one that fails with its state rebuilt
//! from the log. A call that keeps failing is quarantined so that it cannot take the service
//! down; its events stay in the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use metrics::counter;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, warn};

use super::call::{CallActor, CallArgs, CallMsg};
use super::{CallContext, CallEntry};
use crate::log::LoggedEvent;

pub struct SpawnCall {
    pub call_id: String,
    /// Load the call's logged events before folding `events` (a call seen before).
    pub load_from_log: bool,
    pub events: Vec<LoggedEvent>,
    /// `events` arrive live (not replayed from the log by recovery).
    pub live: bool,
}

pub enum SupervisorMsg {
    /// Start actors for calls that have none; replies once they are in the routing map.
    Spawn(Vec<SpawnCall>, RpcReplyPort<()>),
}

pub struct SupervisorArgs {
    pub ctx: Arc<CallContext>,
    pub restart_budget: u32,
    pub restart_window: Duration,
    pub quarantined: Vec<String>,
}

pub struct SupervisorState {
    ctx: Arc<CallContext>,
    by_actor: HashMap<ActorId, String>,
    failures: HashMap<String, VecDeque<Instant>>,
    quarantined: HashSet<String>,
    restart_budget: u32,
    restart_window: Duration,
}

impl SupervisorState {
    async fn start_call(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        call: SpawnCall,
    ) -> Result<(), ActorProcessingErr> {
        let phase = Arc::new(AtomicU8::new(0));
        let (actor, _) = Actor::spawn_linked(
            None,
            CallActor,
            CallArgs {
                call_id: call.call_id.clone(),
                load_from_log: call.load_from_log,
                events: call.events,
                live: call.live,
                phase: phase.clone(),
                ctx: self.ctx.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.by_actor.insert(actor.get_id(), call.call_id.clone());
        self.ctx.calls.insert(
            call.call_id,
            CallEntry {
                actor,
                routed: 0,
                phase,
            },
        );
        Ok(())
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
            quarantined: args.quarantined.into_iter().collect(),
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
                for call in calls {
                    if state.quarantined.contains(&call.call_id) {
                        counter!("cdr_quarantined_events_total")
                            .increment(call.events.len() as u64);
                        continue;
                    }
                    if let Some(mut entry) = state.ctx.calls.get_mut(&call.call_id) {
                        // Started by an earlier request in the meantime: hand the events over.
                        entry.routed += call.events.len() as u64;
                        for e in call.events {
                            let _ = entry.actor.send_message(CallMsg::Event(Box::new(e)));
                        }
                        continue;
                    }
                    let call_id = call.call_id.clone();
                    if let Err(e) = state.start_call(&myself, call).await {
                        // Never fatal for the supervisor: the call's events are in the log and
                        // its next event (or the next start) brings it back.
                        error!(call_id = %call_id, error = %e, "could not start call actor");
                        counter!("cdr_actor_spawn_failures_total").increment(1);
                    }
                }
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
                state
                    .ctx
                    .calls
                    .remove_if(&call_id, |_, e| e.actor.get_id() == failed);
                if state.over_budget(&call_id) {
                    state.quarantined.insert(call_id.clone());
                    counter!("cdr_actor_quarantines_total").increment(1);
                    let failures = state.failures.get(&call_id).map_or(0, VecDeque::len);
                    // Recorded off the supervisor's loop: a slow database must not hold up
                    // the other calls. Until it lands, the call stays open and is retried on
                    // the next start, which is the safe side.
                    let log = state.ctx.log.clone();
                    let reason = reason.to_string();
                    tokio::spawn(async move {
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
                counter!("cdr_actor_restarts_total").increment(1);
                warn!(call_id = %call_id, error = %reason, "call actor failed; restarting it from the log");
                let restart = SpawnCall {
                    call_id: call_id.clone(),
                    load_from_log: true,
                    events: Vec::new(),
                    live: true,
                };
                if let Err(e) = state.start_call(&myself, restart).await {
                    error!(call_id = %call_id, error = %e, "could not restart call actor");
                    counter!("cdr_actor_spawn_failures_total").increment(1);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
