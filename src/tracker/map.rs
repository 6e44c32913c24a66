//! `CallMap`: the routing map from a call id to its actor, or to its state while it rests.
//!
//! Routing goes through this typed map, not ractor's global registry. An entry is an actor or,
//! for a call open but quiet for `rest_after`, the call's folded state (`CallSnapshot`) with no
//! actor: a resting call costs a few hundred bytes instead of an actor's task and mailboxes,
//! which is what lets a million open calls fit in memory.
//!
//! **No routed event is left behind** (ARCHITECTURE.md, invariant 7). Every change to the map
//! is one of the operations below, and they keep it so:
//! - Events reach an actor only through [`CallMap::route`], which counts them in the entry
//!   (`routed`) and sends them while it holds the entry's shard lock.
//! - Only the supervisor puts entries in ([`CallMap::insert_actor`],
//!   [`CallMap::insert_resting`]) and takes a resting call out to wake it ([`CallMap::wake`]).
//! - An actor leaves only through [`CallMap::finish`] (its entry removed) or [`CallMap::rest`]
//!   (its entry replaced by its snapshot), and only when its entry is still its own and it has
//!   handled every event routed to it (`routed == received`). The check and the change happen
//!   under the shard lock that `route` takes, so no event can slip in between; a refused actor
//!   goes on with the events on their way in.
//! - The supervisor drops a failed actor's entry ([`CallMap::remove_failed`]); the events
//!   routed to it are in the log, which its replacement loads.
//!
//! An event routed after an actor left finds no entry (and the call is re-activated from the
//! log) or a resting entry (and the supervisor wakes the call from its snapshot with it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{ActorId, ActorRef};
use serde::Serialize;

use super::message::CallMsg;
use super::phase::PhaseCell;
use super::snapshot::CallSnapshot;
use crate::log::LoggedEvent;
use crate::merge::Phase;

/// The routing map. Shared by the tracker, the supervisor and every call actor.
#[derive(Default)]
pub struct CallMap {
    entries: DashMap<String, CallEntry>,
}

/// An active call's entry.
enum CallEntry {
    /// The call has an actor.
    Active(ActiveCall),
    /// The call is open but quiet: its state, no actor. Its next event, or its idle timeout,
    /// wakes it.
    Resting(Box<CallSnapshot>),
}

struct ActiveCall {
    actor: ActorRef<CallMsg>,
    /// Events sent to this actor's mailbox; the actor compares it with what it handled
    /// before it removes itself or rests, so no routed event is ever left behind.
    routed: u64,
    phase: Arc<PhaseCell>,
}

impl CallEntry {
    fn phase(&self) -> Phase {
        match self {
            CallEntry::Active(a) => a.phase.load(),
            CallEntry::Resting(s) => s.phase(),
        }
    }

    /// The entry is actor `me`'s, and it has handled the `received` events routed to it.
    fn owned_by(&self, me: ActorId, received: u64) -> bool {
        matches!(self, CallEntry::Active(a) if a.actor.get_id() == me && a.routed == received)
    }
}

/// What [`CallMap::route`] did with a call's events.
pub enum Routed {
    /// Sent to the call's actor.
    Sent,
    /// Handed back: the call rests, and the supervisor wakes it with them.
    Resting(Vec<LoggedEvent>),
    /// Handed back: the call has no entry.
    Absent(Vec<LoggedEvent>),
}

/// What an active call's entry holds, for the live view.
pub enum Found<R> {
    /// The call's actor, to ask.
    Actor(ActorRef<CallMsg>),
    /// What was read from the resting call's snapshot.
    Resting(R),
}

/// Active calls by phase, as the gauges report them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActiveCounts {
    pub ringing: u64,
    pub answered: u64,
    pub ending: u64,
    /// Of the ringing and answered calls, those resting (no actor).
    pub resting: u64,
}

impl CallMap {
    /// Sends a call's events to its actor, counted in its entry. A call without an actor gets
    /// its events handed back.
    pub(super) fn route(&self, call_id: &str, events: Vec<LoggedEvent>) -> Routed {
        match self.entries.get_mut(call_id).as_deref_mut() {
            Some(CallEntry::Active(a)) => {
                a.routed += events.len() as u64;
                // One message for the call's events of this batch. A send fails only to an
                // actor that just failed: its replacement reloads the call from the log, which
                // holds these events.
                let _ = a.actor.send_message(CallMsg::Events(events));
                Routed::Sent
            }
            Some(CallEntry::Resting(_)) => Routed::Resting(events),
            None => Routed::Absent(events),
        }
    }

    /// Puts a newly started actor in, with nothing routed to it yet. Supervisor only.
    pub(super) fn insert_actor(
        &self,
        call_id: String,
        actor: ActorRef<CallMsg>,
        phase: Arc<PhaseCell>,
    ) {
        let entry = CallEntry::Active(ActiveCall {
            actor,
            routed: 0,
            phase,
        });
        self.entries.insert(call_id, entry);
    }

    /// Puts a call in to rest without an actor (an open call recovered at start). Supervisor
    /// only.
    pub(super) fn insert_resting(&self, call_id: String, snapshot: Box<CallSnapshot>) {
        self.entries.insert(call_id, CallEntry::Resting(snapshot));
    }

    /// Takes a resting call out, to start an actor from its snapshot. Supervisor only, which
    /// is why a call the supervisor saw resting is still there when it wakes it.
    pub(super) fn wake(&self, call_id: &str) -> Option<Box<CallSnapshot>> {
        match self
            .entries
            .remove_if(call_id, |_, e| matches!(e, CallEntry::Resting(_)))
        {
            Some((_, CallEntry::Resting(snapshot))) => Some(snapshot),
            _ => None,
        }
    }

    /// Removes actor `me`'s entry, if it is still its own and `received` covers every event
    /// routed to it. False: events are on their way in, and the actor goes on.
    pub(super) fn finish(&self, call_id: &str, me: ActorId, received: u64) -> bool {
        self.entries
            .remove_if(call_id, |_, e| e.owned_by(me, received))
            .is_some()
    }

    /// Replaces actor `me`'s entry with its call's snapshot (taken out of `call`), on the same
    /// condition as [`CallMap::finish`]. False: `call` is left as it was.
    pub(super) fn rest(
        &self,
        call_id: &str,
        me: ActorId,
        received: u64,
        call: &mut CallSnapshot,
    ) -> bool {
        let Some(mut entry) = self.entries.get_mut(call_id) else {
            return false;
        };
        if !entry.owned_by(me, received) {
            return false;
        }
        *entry = CallEntry::Resting(Box::new(std::mem::take(call)));
        true
    }

    /// Drops the entry of actor `failed`, if it is still its own. Supervisor only.
    pub(super) fn remove_failed(&self, call_id: &str, failed: ActorId) {
        self.entries.remove_if(
            call_id,
            |_, e| matches!(e, CallEntry::Active(a) if a.actor.get_id() == failed),
        );
    }

    /// The call's actor, or what `read` makes of its snapshot (read under the shard lock)
    /// while it rests. None: the call is not active.
    pub(super) fn find<R>(
        &self,
        call_id: &str,
        read: impl FnOnce(&CallSnapshot) -> R,
    ) -> Option<Found<R>> {
        match self.entries.get(call_id)?.value() {
            CallEntry::Active(a) => Some(Found::Actor(a.actor.clone())),
            CallEntry::Resting(snapshot) => Some(Found::Resting(read(snapshot))),
        }
    }

    /// Every call's actor; resting calls have none.
    /// Calls in the map, with an actor or resting: what `tracker.max_open_calls` bounds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn contains(&self, call_id: &str) -> bool {
        self.entries.contains_key(call_id)
    }

    pub(super) fn actors(&self) -> Vec<ActorRef<CallMsg>> {
        self.entries
            .iter()
            .filter_map(|e| match e.value() {
                CallEntry::Active(a) => Some(a.actor.clone()),
                CallEntry::Resting(_) => None,
            })
            .collect()
    }

    /// Counts the map by phase and, given a time, collects the resting calls whose idle
    /// timeout is due by then. One pass serves both: resting calls have no timer of their own.
    pub(super) fn scan(
        &self,
        idle_timeout: Duration,
        due_by: Option<Instant>,
    ) -> (ActiveCounts, Vec<String>) {
        let mut counts = ActiveCounts::default();
        let mut due = Vec::new();
        for entry in self.entries.iter() {
            match entry.phase() {
                Phase::Ringing => counts.ringing += 1,
                Phase::Answered => counts.answered += 1,
                Phase::Ended => counts.ending += 1,
            }
            if let CallEntry::Resting(snapshot) = entry.value() {
                counts.resting += 1;
                if due_by.is_some_and(|t| snapshot.idle_deadline(idle_timeout) <= t) {
                    due.push(entry.key().clone());
                }
            }
        }
        (counts, due)
    }
}
