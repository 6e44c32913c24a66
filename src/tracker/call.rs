//! One call's actor: folds the call's events as they come, and writes the record when the call
//! has been quiet for `linger` after its end, or for `idle_timeout` without one. A call still
//! open but quiet for `rest_after` rests: the actor leaves its folded state (`CallSnapshot`) in
//! the routing map and stops; the supervisor starts a new actor from it when the call wakes.
//! The actor leaves the map only through `CallMap::finish` and `CallMap::rest`.

use std::sync::Arc;
use std::time::Instant;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::context::CallContext;
use super::message::CallMsg;
use super::phase::PhaseCell;
use super::snapshot::CallSnapshot;
use crate::log::LoggedEvent;
use crate::merge::{CallRecord, PriceBook, UsageLine};
use crate::retry::{Retry, Stop};
use crate::telemetry::metric;
use crate::writer::{FlushCause, WriteRequest};

pub struct CallArgs {
    pub call_id: String,
    /// The state it rested with, when the call wakes.
    pub resume: Option<Box<CallSnapshot>>,
    pub load_from_log: bool,
    pub events: Vec<LoggedEvent>,
    pub live: bool,
    pub phase: Arc<PhaseCell>,
    pub ctx: Arc<CallContext>,
}

pub struct CallActorState {
    call_id: String,
    ctx: Arc<CallContext>,
    phase: Arc<PhaseCell>,
    call: CallSnapshot,
    /// Events handled from the mailbox: the map lets the actor leave only when as many were
    /// routed to it (see `map`).
    received: u64,
    /// When this actor started or last handled an event: it rests `rest_after` later.
    last_touch: Instant,
    /// When the linger started: the end's receive time for an end that came live (the time
    /// it spent being logged and routed counts towards the linger), else when the actor
    /// found the call ended (after a restart, stragglers may still be queued at the broker).
    ended_at: Option<Instant>,
    /// When the end arrived live, for the flush-latency histogram.
    end_received: Option<Instant>,
    timer_at: Option<Instant>,
    pending: Vec<LoggedEvent>,
    pending_live: bool,
    load_from_log: bool,
    /// Past `max_events_per_call`: its record is written and the call quarantined; the actor
    /// only waits for the events on their way in, then leaves.
    quarantined: bool,
}

impl CallActorState {
    fn fold(&mut self, e: &LoggedEvent, live: bool) {
        let folded = self.call.event_count();
        let received = self.call.fold(e, self.ctx.max_events_per_call);
        if live
            && self.call.is_capped()
            && self.call.event_count() == folded
            && e.event_id > self.call.max_event_id()
        {
            counter!(metric::QUARANTINED_EVENTS.name).increment(1);
        }
        if let Some(received) = received {
            if live {
                self.ended_at = Some(received);
                self.end_received = Some(received);
            } else {
                self.ended_at = Some(Instant::now());
            }
        }
        self.phase.store(self.call.phase());
    }

    fn deadline(&self) -> Instant {
        match self.ended_at {
            Some(end) => end + self.ctx.linger,
            None => self.call.idle_deadline(self.ctx.idle_timeout),
        }
    }

    /// When the call rests if nothing comes: never once it has ended (it lingers, then writes).
    fn rest_at(&self) -> Option<Instant> {
        (self.ended_at.is_none()).then(|| self.last_touch + self.ctx.rest_after)
    }

    fn arm(&mut self, myself: &ActorRef<CallMsg>) {
        let deadline = match self.rest_at() {
            Some(rest) => rest.min(self.deadline()),
            None => self.deadline(),
        };
        if self.timer_at.is_none_or(|t| deadline < t) {
            let delay = deadline.saturating_duration_since(Instant::now());
            myself.send_after(delay, || CallMsg::Tick);
            self.timer_at = Some(deadline);
        }
    }

    fn record(&self) -> (CallRecord, Vec<UsageLine>) {
        let prices = self.prices();
        self.call.record_and_usage(&self.call_id, &prices)
    }

    fn prices(&self) -> Arc<PriceBook> {
        self.ctx
            .prices
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    async fn flush(&mut self, cause: FlushCause) -> Result<(), ActorProcessingErr> {
        if !self.call.dirty {
            return Ok(());
        }
        let (record, usage) = self.record();
        debug!(
            call_id = %self.call_id,
            trace_id = self.call.trace_id().unwrap_or(""),
            status = record.status.as_str(),
            disposition = record.disposition.as_str(),
            events = self.call.event_count(),
            cause = cause.as_str(),
            "writing call record"
        );
        if cause == FlushCause::IdleTimeout {
            counter!(metric::CALLS_TIMED_OUT.name).increment(1);
        }
        // Boxed: an actor's task is as large as the largest future it awaits, and there is one
        // actor per active call.
        Box::pin(self.ctx.writer.write(WriteRequest {
            record,
            usage,
            event_count: i32::try_from(self.call.event_count()).unwrap_or(i32::MAX),
            max_event_id: self.call.max_event_id(),
            end_received: self.end_received.take(),
            cause,
            quarantine: (cause == FlushCause::Capped).then(|| {
                format!(
                    "more than {} events (tracker.max_events_per_call)",
                    self.ctx.max_events_per_call
                )
            }),
        }))
        .await?;
        self.call.dirty = false;
        Ok(())
    }

    /// Once the call has more events than it may fold: writes it from those it has (flagged
    /// `events_capped`) and has the writer quarantine it in the same transaction; from then
    /// on its events go to no actor. Then leaves, once the events on their way in are handled
    /// (counted, not folded).
    async fn cap(&mut self, myself: &ActorRef<CallMsg>) -> Result<(), ActorProcessingErr> {
        if !self.quarantined {
            self.quarantined = true;
            self.ctx.quarantined.insert(self.call_id.clone());
            counter!(metric::CALLS_CAPPED.name).increment(1);
            warn!(
                call_id = %self.call_id,
                trace_id = self.call.trace_id().unwrap_or(""),
                events = self.call.event_count(),
                "call has more events than tracker.max_events_per_call; writing it from the first ones and quarantining it (the others stay in call_events)"
            );
            self.call.dirty = true;
            self.flush(FlushCause::Capped).await?;
        }
        self.try_finish(myself);
        Ok(())
    }

    /// Leaves the routing map and stops, if nothing routed to this actor is still unhandled.
    fn try_finish(&self, myself: &ActorRef<CallMsg>) -> bool {
        let finished = self
            .ctx
            .calls
            .finish(&self.call_id, myself.get_id(), self.received);
        if finished {
            myself.stop(None);
        }
        finished
    }

    /// Leaves the call's state in the routing map and stops, if nothing routed to this actor
    /// is still unhandled (the same check as `try_finish`).
    fn try_rest(&mut self, myself: &ActorRef<CallMsg>) -> bool {
        let rested = self.ctx.calls.rest(
            &self.call_id,
            myself.get_id(),
            self.received,
            &mut self.call,
        );
        if rested {
            counter!(metric::CALL_RESTS.name).increment(1);
            myself.stop(None);
        }
        rested
    }
}

/// Fault injection for the supervision tests (cargo feature `failpoints`; compiled out of
/// normal builds). `fail::cfg("call-actor-event", "return(PREFIX)")` makes every call whose id
/// starts with PREFIX fail with an error when it folds; `return(panic:PREFIX)` makes it panic.
fn injected_fault(call_id: &str) -> Result<(), ActorProcessingErr> {
    #[cfg(feature = "failpoints")]
    if let Some(Some(spec)) = fail::eval("call-actor-event", |arg| arg) {
        if let Some(prefix) = spec.strip_prefix("panic:") {
            assert!(!call_id.starts_with(prefix), "injected panic for {call_id}");
        } else if call_id.starts_with(&spec) {
            return Err(format!("injected failure for {call_id}").into());
        }
    }
    let _ = call_id;
    Ok(())
}

pub struct CallActor;

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallActorState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallActorState, ActorProcessingErr> {
        let call = args.resume.map(|b| *b).unwrap_or_default();
        args.phase.store(call.phase());
        Ok(CallActorState {
            call_id: args.call_id,
            ctx: args.ctx,
            phase: args.phase,
            call,
            received: 0,
            last_touch: Instant::now(),
            ended_at: None,
            end_received: None,
            timer_at: None,
            pending: args.events,
            pending_live: args.live,
            load_from_log: args.load_from_log,
            quarantined: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<CallMsg>,
        s: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        if s.load_from_log {
            // A call seen before: rebuild it from everything logged, a page at a time. The
            // database may be away; this call waits for it rather than failing (a failure would
            // be restarted into the same wait, and count against the call's restart budget),
            // until the tracker stops: then the call is left to the next start.
            let ids = [s.call_id.clone()];
            let mut after = None;
            loop {
                let loaded = Retry::new(&s.ctx.backoff, &s.ctx.stopping)
                    .run(
                        // Boxed for the same reason as the write in `flush`.
                        || Box::pin(s.ctx.log.load_page(&ids, after.as_ref())),
                        |e, delay| warn!(call_id = %s.call_id, error = %e, retry_in = ?delay, "cannot load call from the log; retrying"),
                    )
                    .await;
                let page = match loaded {
                    Ok(page) => page,
                    Err(Stop::Cancelled) => {
                        myself.stop(Some("shutdown".into()));
                        return Ok(());
                    }
                    Err(Stop::Refused(e)) => return Err(e.into()),
                };
                for e in page.calls.iter().flat_map(|(_, events)| events) {
                    s.fold(e, false);
                }
                // Past the cap nothing more is folded: the rest of the log is not needed.
                match page.next {
                    Some(next) if !s.call.is_capped() => after = Some(next),
                    _ => break,
                }
            }
            // A call that had ended before it was re-activated lingers from now.
            s.call.dirty = true;
        }
        let pending = std::mem::take(&mut s.pending);
        injected_fault(&s.call_id)?;
        for e in &pending {
            s.fold(e, s.pending_live);
        }
        if s.call.is_capped() {
            return s.cap(&myself).await;
        }
        if s.call.is_ended() && s.ended_at.is_none() {
            s.ended_at = Some(Instant::now());
        }
        s.arm(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        msg: CallMsg,
        s: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallMsg::Events(events) => {
                s.received += events.len() as u64;
                s.last_touch = Instant::now();
                injected_fault(&s.call_id)?;
                for e in &events {
                    s.fold(e, true);
                }
                if s.call.is_capped() {
                    return s.cap(&myself).await;
                }
                s.arm(&myself);
            }
            CallMsg::Tick if s.quarantined => {
                s.try_finish(&myself);
            }
            CallMsg::Tick => {
                let now = Instant::now();
                if s.timer_at.is_some_and(|t| t <= now) {
                    s.timer_at = None;
                }
                if now >= s.deadline() {
                    let cause = if s.call.is_ended() {
                        FlushCause::Ended
                    } else {
                        FlushCause::IdleTimeout
                    };
                    s.flush(cause).await?;
                    if !s.try_finish(&myself) {
                        // Events are on their way in; they re-arm the timer.
                        s.arm(&myself);
                    }
                } else if s.rest_at().is_some_and(|t| t <= now) {
                    if !s.try_rest(&myself) {
                        s.arm(&myself);
                    }
                } else {
                    s.arm(&myself);
                }
            }
            CallMsg::Shutdown => {
                if s.call.is_ended() {
                    s.flush(FlushCause::Ended).await?;
                }
                myself.stop(Some("shutdown".into()));
            }
            CallMsg::Inspect(reply) => {
                let _ = reply.send(s.call.live(&s.call_id, &s.prices(), false));
            }
        }
        Ok(())
    }
}
