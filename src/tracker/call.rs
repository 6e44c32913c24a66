//! One call's actor: folds the call's events as they come, and writes the record when the call
//! has been quiet for `linger` after its end, or for `idle_timeout` without one. A call still
//! open but quiet for `rest_after` rests: the actor leaves its folded state (`CallSnapshot`) in
//! the routing map and stops; the supervisor starts a new actor from it when the call wakes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tracing::{debug, warn};

use super::{CallContext, CallEntry, phase_code};
use crate::backoff::Backoff;
use crate::log::LoggedEvent;
use crate::merge::{CallRecord, CallState, Phase, PriceBook};
use crate::writer::WriteRequest;

pub enum CallMsg {
    /// Committed events of this call, in log order (one dispatched batch's worth).
    Events(Vec<LoggedEvent>),
    /// A timer fired: check the deadline.
    Tick,
    /// The service is stopping: write the record if the call has ended, then stop.
    Shutdown,
    Inspect(RpcReplyPort<LiveCall>),
}

/// The live view of an active call.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCall {
    pub call_id: String,
    pub phase: Phase,
    pub events: u32,
    /// The call is resting: no actor, its state kept in the routing map until its next event.
    pub resting: bool,
    /// The record as it would be written now.
    pub record: CallRecord,
}

/// What is known of a call: its fold, and what the actor needs to go on from it. It is all
/// that a resting call keeps, so it stays small.
#[derive(Debug, Clone)]
pub struct CallSnapshot {
    state: CallState,
    /// Distinct logged events folded so far: the record's version.
    event_count: u32,
    /// Highest event id folded. Events reach a call in log order, so anything at or below it
    /// is already folded (it came both from the log load and the mailbox).
    max_event_id: i64,
    /// Receive time of the newest event folded, on the monotonic clock: the idle timeout
    /// counts from it, so a call without an end times out on schedule however often the
    /// service restarts.
    last_event: Instant,
    /// Events folded since the last write.
    dirty: bool,
}

impl Default for CallSnapshot {
    fn default() -> Self {
        CallSnapshot {
            state: CallState::default(),
            event_count: 0,
            max_event_id: 0,
            // Until an event is folded; the first one sets it.
            last_event: Instant::now()
                .checked_sub(Duration::from_secs(365 * 24 * 3600))
                .unwrap_or_else(Instant::now),
            dirty: false,
        }
    }
}

impl CallSnapshot {
    /// Folds one logged event. When it is new and ended the call, returns when it was
    /// received (on the monotonic clock).
    pub fn fold(&mut self, e: &LoggedEvent) -> Option<Instant> {
        if e.event_id <= self.max_event_id {
            return None;
        }
        let was_ended = self.state.is_ended();
        self.state.apply(&e.event);
        self.max_event_id = e.event_id;
        self.event_count += 1;
        self.dirty = true;
        let now = Instant::now();
        let age = (chrono::Utc::now() - e.received_at)
            .to_std()
            .unwrap_or_default();
        let received = now.checked_sub(age).unwrap_or(now);
        if received > self.last_event {
            self.last_event = received;
        }
        (!was_ended && self.state.is_ended()).then_some(received)
    }

    pub fn from_events(events: &[LoggedEvent]) -> Self {
        let mut s = CallSnapshot::default();
        for e in events {
            s.fold(e);
        }
        s
    }

    pub fn is_ended(&self) -> bool {
        self.state.is_ended()
    }

    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// When the call times out if nothing more comes.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.last_event + idle_timeout
    }

    pub fn live(&self, call_id: &str, prices: &PriceBook, resting: bool) -> LiveCall {
        LiveCall {
            call_id: call_id.to_owned(),
            phase: self.state.phase(),
            events: self.event_count,
            resting,
            record: self.state.record(call_id, prices),
        }
    }
}

pub struct CallArgs {
    pub call_id: String,
    /// The state it rested with, when the call wakes.
    pub resume: Option<Box<CallSnapshot>>,
    pub load_from_log: bool,
    pub events: Vec<LoggedEvent>,
    pub live: bool,
    pub phase: Arc<std::sync::atomic::AtomicU8>,
    pub ctx: Arc<CallContext>,
}

pub struct CallActorState {
    call_id: String,
    ctx: Arc<CallContext>,
    phase: Arc<std::sync::atomic::AtomicU8>,
    call: CallSnapshot,
    /// Event messages handled from the mailbox (compared with `ActiveCall::routed`).
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
}

impl CallActorState {
    fn fold(&mut self, e: &LoggedEvent, live: bool) {
        if let Some(received) = self.call.fold(e) {
            if live {
                self.ended_at = Some(received);
                self.end_received = Some(received);
            } else {
                self.ended_at = Some(Instant::now());
            }
        }
        self.phase
            .store(phase_code(self.call.phase()), Ordering::Relaxed);
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

    fn record(&self) -> CallRecord {
        let prices = self.prices();
        self.call.state.record(&self.call_id, &prices)
    }

    fn prices(&self) -> Arc<PriceBook> {
        self.ctx
            .prices
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    async fn flush(&mut self, cause: &'static str) -> Result<(), ActorProcessingErr> {
        if !self.call.dirty {
            return Ok(());
        }
        let record = self.record();
        debug!(
            call_id = %self.call_id,
            trace_id = self.call.state.trace_id().unwrap_or(""),
            status = record.status.as_str(),
            disposition = record.disposition.as_str(),
            events = self.call.event_count,
            cause,
            "writing call record"
        );
        if cause == "idle_timeout" {
            counter!("cdr_calls_timed_out_total").increment(1);
        }
        // Boxed: an actor's task is as large as the largest future it awaits, and there is one
        // actor per active call.
        Box::pin(self.ctx.writer.write(WriteRequest {
            record,
            event_count: i32::try_from(self.call.event_count).unwrap_or(i32::MAX),
            max_event_id: self.call.max_event_id,
            end_received: self.end_received.take(),
            cause,
        }))
        .await?;
        self.call.dirty = false;
        Ok(())
    }

    /// Leaves the routing map if nothing routed to this actor is still unhandled.
    fn try_finish(&self, myself: &ActorRef<CallMsg>) -> bool {
        let me = myself.get_id();
        let removed = self
            .ctx
            .calls
            .remove_if(&self.call_id, |_, entry| self.owns(entry, me))
            .is_some();
        if removed {
            myself.stop(None);
        }
        removed
    }

    /// The entry is this actor's, and everything routed to it has been handled.
    fn owns(&self, entry: &CallEntry, me: ractor::ActorId) -> bool {
        matches!(entry, CallEntry::Active(a) if a.actor.get_id() == me && a.routed == self.received)
    }

    /// Leaves the call's state in the routing map and stops, if nothing routed to this actor
    /// is still unhandled (the same check as `try_finish`, under the same shard lock that
    /// routing takes, so no event can slip in between).
    fn try_rest(&mut self, myself: &ActorRef<CallMsg>) -> bool {
        let me = myself.get_id();
        let Some(mut entry) = self.ctx.calls.get_mut(&self.call_id) else {
            return false;
        };
        if !self.owns(&entry, me) {
            return false;
        }
        *entry = CallEntry::Resting(Box::new(std::mem::take(&mut self.call)));
        drop(entry);
        counter!("cdr_call_rests_total").increment(1);
        myself.stop(None);
        true
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
        args.phase
            .store(phase_code(call.phase()), Ordering::Relaxed);
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
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<CallMsg>,
        s: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        if s.load_from_log {
            // A call seen before: rebuild it from everything logged. The database may be
            // away; this call waits for it rather than failing (a failure would be restarted
            // into the same wait, and count against the call's restart budget).
            let mut backoff = Backoff::new(&s.ctx.backoff);
            let logged = loop {
                // Boxed for the same reason as the write in `flush`.
                match Box::pin(s.ctx.log.load_call(&s.call_id)).await {
                    Ok(events) => break events,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(call_id = %s.call_id, error = %e, retry_in = ?delay, "cannot load call from the log; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            for e in &logged {
                s.fold(e, false);
            }
            // A call that had ended before it was re-activated lingers from now.
            s.call.dirty = true;
        }
        let pending = std::mem::take(&mut s.pending);
        injected_fault(&s.call_id)?;
        for e in &pending {
            s.fold(e, s.pending_live);
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
                s.arm(&myself);
            }
            CallMsg::Tick => {
                let now = Instant::now();
                if s.timer_at.is_some_and(|t| t <= now) {
                    s.timer_at = None;
                }
                if now >= s.deadline() {
                    let cause = if s.call.is_ended() {
                        "ended"
                    } else {
                        "idle_timeout"
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
                    s.flush("ended").await?;
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
