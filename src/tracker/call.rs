//! One call's actor: folds the call's events as they come, and writes the record when the call
//! has been quiet for `linger` after its end, or for `idle_timeout` without one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tracing::{debug, warn};

use super::{CallContext, phase_code};
use crate::backoff::Backoff;
use crate::log::LoggedEvent;
use crate::merge::{CallRecord, CallState, Phase};
use crate::writer::WriteRequest;

pub enum CallMsg {
    Event(Box<LoggedEvent>),
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
    /// The record as it would be written now.
    pub record: CallRecord,
}

pub struct CallArgs {
    pub call_id: String,
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
    state: CallState,
    /// Distinct logged events folded so far: the record's version.
    event_count: u32,
    /// Highest event id folded. Events reach an actor in log order, so anything at or below
    /// it is already folded (it came both from the log load and the mailbox).
    max_event_id: i64,
    /// Event messages handled from the mailbox (compared with `CallEntry::routed`).
    received: u64,
    /// Receive time of the newest event folded, on the monotonic clock: the idle timeout
    /// counts from it, so a call without an end times out on schedule however often the
    /// service restarts.
    last_event: Instant,
    ended_at: Option<Instant>,
    /// When the end arrived live, for the flush-latency histogram.
    end_received: Option<Instant>,
    timer_at: Option<Instant>,
    /// Events folded since the last write.
    dirty: bool,
    pending: Vec<LoggedEvent>,
    pending_live: bool,
    load_from_log: bool,
}

impl CallActorState {
    fn fold(&mut self, e: &LoggedEvent, live: bool) {
        if e.event_id <= self.max_event_id {
            return;
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
        if !was_ended && self.state.is_ended() {
            self.ended_at = Some(now);
            if live {
                self.end_received = Some(now);
            }
        }
        self.phase
            .store(phase_code(self.state.phase()), Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        match self.ended_at {
            Some(end) => end + self.ctx.linger,
            None => self.last_event + self.ctx.idle_timeout,
        }
    }

    fn arm(&mut self, myself: &ActorRef<CallMsg>) {
        let deadline = self.deadline();
        if self.timer_at.is_none_or(|t| deadline < t) {
            let delay = deadline.saturating_duration_since(Instant::now());
            myself.send_after(delay, || CallMsg::Tick);
            self.timer_at = Some(deadline);
        }
    }

    fn record(&self) -> CallRecord {
        let prices = self
            .ctx
            .prices
            .read()
            .map(|p| p.clone())
            .unwrap_or_default();
        self.state.record(&self.call_id, &prices)
    }

    async fn flush(&mut self, cause: &'static str) -> Result<(), ActorProcessingErr> {
        if !self.dirty {
            return Ok(());
        }
        let record = self.record();
        debug!(
            call_id = %self.call_id,
            trace_id = self.state.trace_id().unwrap_or(""),
            status = record.status.as_str(),
            disposition = record.disposition.as_str(),
            events = self.event_count,
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
            event_count: i32::try_from(self.event_count).unwrap_or(i32::MAX),
            max_event_id: self.max_event_id,
            end_received: self.end_received.take(),
            cause,
        }))
        .await?;
        self.dirty = false;
        Ok(())
    }

    /// Leaves the routing map if nothing routed to this actor is still unhandled.
    fn try_finish(&self, myself: &ActorRef<CallMsg>) -> bool {
        let me = myself.get_id();
        let removed = self
            .ctx
            .calls
            .remove_if(&self.call_id, |_, entry| {
                entry.actor.get_id() == me && entry.routed == self.received
            })
            .is_some();
        if removed {
            myself.stop(None);
        }
        removed
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
        Ok(CallActorState {
            call_id: args.call_id,
            ctx: args.ctx,
            phase: args.phase,
            state: CallState::default(),
            event_count: 0,
            max_event_id: 0,
            received: 0,
            // Until an event is folded; the first one sets it.
            last_event: Instant::now()
                .checked_sub(Duration::from_secs(365 * 24 * 3600))
                .unwrap_or_else(Instant::now),
            ended_at: None,
            end_received: None,
            timer_at: None,
            dirty: false,
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
            s.dirty = true;
        }
        let pending = std::mem::take(&mut s.pending);
        injected_fault(&s.call_id)?;
        for e in &pending {
            s.fold(e, s.pending_live);
        }
        if s.state.is_ended() && s.ended_at.is_none() {
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
            CallMsg::Event(e) => {
                s.received += 1;
                injected_fault(&s.call_id)?;
                s.fold(&e, true);
                s.arm(&myself);
            }
            CallMsg::Tick => {
                let now = Instant::now();
                if s.timer_at.is_some_and(|t| t <= now) {
                    s.timer_at = None;
                }
                if now >= s.deadline() {
                    let cause = if s.state.is_ended() {
                        "ended"
                    } else {
                        "idle_timeout"
                    };
                    s.flush(cause).await?;
                    if !s.try_finish(&myself) {
                        // Events are on their way in; they re-arm the timer.
                        s.arm(&myself);
                    }
                } else {
                    s.arm(&myself);
                }
            }
            CallMsg::Shutdown => {
                if s.state.is_ended() {
                    s.flush("ended").await?;
                }
                myself.stop(Some("shutdown".into()));
            }
            CallMsg::Inspect(reply) => {
                let _ = reply.send(LiveCall {
                    call_id: s.call_id.clone(),
                    phase: s.state.phase(),
                    events: s.event_count,
                    record: s.record(),
                });
            }
        }
        Ok(())
    }
}
