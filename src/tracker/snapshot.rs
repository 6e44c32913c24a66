//! `CallSnapshot`: what is known of one call (its fold, its version, its idle clock), and
//! `LiveCall`, the live view made from it. An actor keeps its call's snapshot as its state; a
//! resting call is its snapshot alone, kept in the routing map.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::log::LoggedEvent;
use crate::merge::{CallRecord, CallState, EVENTS_CAPPED, Phase, PriceBook, UsageLine};

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
    /// An event came past `tracker.max_events_per_call`: nothing more is folded, the record
    /// says `events_capped`, and the call is quarantined once it is written.
    capped: bool,
    /// Events folded since the last write (the actor clears it when it writes, and sets it
    /// when a record must be written even with nothing new folded).
    pub(super) dirty: bool,
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
            capped: false,
            dirty: false,
        }
    }
}

impl CallSnapshot {
    /// Folds one logged event, unless `cap` events are folded already: then the call is
    /// capped (`is_capped`) and the event left in the log. When it is new and ended the call,
    /// returns when it was received (on the monotonic clock).
    ///
    /// Events come in log order, so a capped call holds the first `cap` of its events in the
    /// log: the same ones live, after a restart and after a re-activation.
    pub fn fold(&mut self, e: &LoggedEvent, cap: u32) -> Option<Instant> {
        if e.event_id <= self.max_event_id {
            return None;
        }
        if self.event_count >= cap {
            self.capped = true;
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

    pub fn is_ended(&self) -> bool {
        self.state.is_ended()
    }

    /// More events came than the call may fold (see `fold`).
    pub fn is_capped(&self) -> bool {
        self.capped
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
            record: self.record_and_usage(call_id, prices).0,
        }
    }

    /// The record and its usage lines as they would be written now.
    pub(super) fn record_and_usage(
        &self,
        call_id: &str,
        prices: &PriceBook,
    ) -> (CallRecord, Vec<UsageLine>) {
        let (mut record, usage) = self.state.record_and_usage(call_id, prices);
        if self.capped {
            record.flag(EVENTS_CAPPED);
        }
        (record, usage)
    }

    pub(super) fn trace_id(&self) -> Option<&str> {
        self.state.trace_id()
    }

    pub(super) fn event_count(&self) -> u32 {
        self.event_count
    }

    pub(super) fn max_event_id(&self) -> i64 {
        self.max_event_id
    }
}
