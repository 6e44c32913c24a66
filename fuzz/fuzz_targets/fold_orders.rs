//! A call's events in any order fold to one record. The input is split at 0xFF bytes (never in
//! UTF-8 text) into bodies, each decoded as a message of one call; the distinct events (by
//! body, as the log keeps them) fold forwards, backwards and sorted by body, and every order
//! gives the same record and usage lines.

#![no_main]

mod common;

use std::collections::HashSet;

use cdr_core::event;
use cdr_core::merge::{CallEvent, CallState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut seen = HashSet::new();
    let mut events: Vec<CallEvent> = data
        .split(|b| *b == 0xFF)
        .filter_map(|body| event::decode(body, common::received(), common::LIMITS).ok())
        .filter(|e| seen.insert(e.body_hash))
        .map(CallEvent::from)
        .take(64)
        .collect();
    if events.is_empty() {
        return;
    }
    let prices = common::prices();
    let result = |events: &[CallEvent]| CallState::fold(events).record_and_usage("fuzz@h", &prices);
    let forwards = result(&events);
    events.reverse();
    assert_eq!(result(&events), forwards, "backwards");
    events.sort_by_key(|e| e.body_hash);
    assert_eq!(result(&events), forwards, "sorted by body");
});
