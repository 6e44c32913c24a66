//! The fold (`merge.rs`) against DESIGN.md "Merge rules".
//!
//! Property tests: for realistic calls (duplicate starts with different dialplan identities,
//! duplicate answers, identifications before the start and after the end, late recordings,
//! several ends, dialog turns, usage reports with and without `usageId`, terminate requests,
//! unknown events, timestamp-less events, ties in timestamps) the fold is order-independent,
//! idempotent and converges when events arrive late. Example tests pin each merge rule to exact
//! values.

use std::collections::BTreeMap;

use cdr_service::event::{
    DialogTurn, EventKind, Identity, Limits, Started, Usage, decode, sip_user,
};
use cdr_service::merge::{
    CallEvent, CallRecord, CallState, Disposition, PriceBook, Status, TELEPHONY_MINUTE, usage_key,
};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const CALL_ID: &str = "a84b4c76e66710@198.51.100.7";
const TRACE: &str = "trace-Ab12Cd34Ef56";

fn t0() -> DateTime<Utc> {
    "2025-09-24T10:00:00Z".parse().unwrap()
}

/// `t0` plus a number of milliseconds.
fn at_ms(ms: i64) -> DateTime<Utc> {
    t0() + Duration::milliseconds(ms)
}

/// `t0` plus a number of seconds.
fn at(secs: i64) -> DateTime<Utc> {
    at_ms(secs * 1000)
}

fn sha(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn user(n: u128) -> Uuid {
    Uuid::from_u128(0x5e17_0000_0000_4000_8000_0000_0000_0000 | n)
}

fn identity(user_id: Option<u128>, contact_id: Option<i32>, tenant_id: Option<&str>) -> Identity {
    Identity {
        user_id: user_id.map(user),
        contact_id,
        tenant_id: tenant_id.map(str::to_owned),
    }
}

fn started_kind(from: &str, to: &str, dialplan_identity: Identity, inbound: bool) -> EventKind {
    EventKind::Started(Box::new(Started {
        from_uri: Some(from.to_owned()),
        to_uri: Some(to.to_owned()),
        caller_number: sip_user(from),
        callee_number: sip_user(to),
        server_rtp_port: Some(10_000),
        caller_rtp_addr: Some("203.0.113.5:4000".to_owned()),
        dialplan_identity,
        inbound,
    }))
}

fn ended_kind(reason: Option<&str>) -> EventKind {
    EventKind::Ended {
        reason: reason.map(str::to_owned),
    }
}

fn recording_kind(uri: &str) -> EventKind {
    EventKind::RecordingAvailable {
        uri: Some(uri.to_owned()),
    }
}

fn usage_kind(usage_id: Option<&str>, resource: &str, quantity: &str) -> EventKind {
    EventKind::UsageReported(Usage {
        usage_id: usage_id.map(str::to_owned),
        service: Some("llm-gateway-service".to_owned()),
        resource_type: resource.to_owned(),
        quantity: dec(quantity),
    })
}

fn turn_kind(turn_index: i32) -> EventKind {
    EventKind::DialogTurn(Box::new(DialogTurn {
        turn_index,
        user_text: Some(format!("question {turn_index}")),
        ai_text: Some(format!("answer {turn_index}")),
        rag_sources: serde_json::json!([]),
        stt_ms: Some(120),
        llm_ms: Some(800),
        tts_ms: Some(200),
    }))
}

/// A logged event with a sent timestamp; `label` stands for its body (distinct labels, distinct
/// bodies).
fn ev(label: &str, timestamp: DateTime<Utc>, kind: EventKind) -> CallEvent {
    CallEvent::new(timestamp, false, sha(label), Some(TRACE.to_owned()), kind)
}

/// The same event, but it came without a timestamp: `timestamp` is its receive time.
fn inferred(e: CallEvent) -> CallEvent {
    CallEvent::new(e.timestamp, true, e.body_hash, e.trace_id, e.kind)
}

/// Prices for the examples: llm tokens got dearer in June, and again during the call (at +30 s),
/// which must not apply to a call that started before.
fn prices() -> PriceBook {
    let jan: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    let jun: DateTime<Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    PriceBook::new([
        ("llm_token".to_owned(), jan, dec("0.00001")),
        ("llm_token".to_owned(), jun, dec("0.00002")),
        ("llm_token".to_owned(), at(30), dec("0.00005")),
        ("stt_second".to_owned(), jan, dec("0.0001")),
        ("tts_character".to_owned(), jan, dec("0.000015")),
        (TELEPHONY_MINUTE.to_owned(), jan, dec("0.01")),
        (TELEPHONY_MINUTE.to_owned(), at(45), dec("0.5")),
    ])
}

/// Folds the events forwards and backwards (they must agree) and returns the record.
fn record_of(events: &[CallEvent]) -> CallRecord {
    let forward = CallState::fold(events);
    let backward = CallState::fold(events.iter().rev());
    assert_eq!(forward, backward, "fold depends on order");
    let record = forward.record(CALL_ID, &prices());
    assert_eq!(record, backward.record(CALL_ID, &prices()));
    record
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// One event before it gets its body hash: offset from t0 in ms, no-timestamp flag, trace, kind.
type Draft = (i64, bool, Option<String>, EventKind);

/// A time on a coarse half-second grid between `lo` and `hi` seconds after t0, so that
/// different events often share a timestamp.
fn offset(lo: i64, hi: i64) -> impl Strategy<Value = i64> {
    (lo..=hi, prop_oneof![3 => Just(0i64), 1 => Just(500i64)]).prop_map(|(s, ms)| s * 1000 + ms)
}

/// About one event in five had no timestamp.
fn no_timestamp() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.2)
}

fn trace() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some(TRACE.to_owned())),
        2 => Just(None),
        1 => Just(Some("trace-Zz99Yy88Xx77".to_owned())),
    ]
}

fn any_identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        Just(identity(Some(1), Some(11), Some("tenant-a"))),
        Just(identity(Some(2), Some(22), Some("tenant-a"))),
        Just(identity(Some(3), None, None)),
        Just(identity(None, None, Some("tenant-b"))),
        Just(identity(None, Some(44), Some("tenant-c"))),
    ]
}

fn dialplan_identity() -> impl Strategy<Value = Identity> {
    prop_oneof![2 => Just(Identity::default()), 3 => any_identity()]
}

const FROMS: [&str; 3] = [
    "\"<sip:905551234567@203.0.113.5>;tag=abc\"",
    "\"Alice\" <sip:905559876543@203.0.113.9>;tag=q1",
    "<tel:+905550001122>",
];
const TOS: [&str; 2] = ["<sip:902124440000@10.0.0.1>", "sip:902124449999@10.0.0.2"];

fn started() -> impl Strategy<Value = Draft> {
    (
        offset(0, 5),
        no_timestamp(),
        trace(),
        prop::sample::select(FROMS.to_vec()),
        prop::sample::select(TOS.to_vec()),
        dialplan_identity(),
        any::<bool>(),
    )
        .prop_map(|(ms, inf, tr, from, to, id, inbound)| {
            (ms, inf, tr, started_kind(from, to, id, inbound))
        })
}

fn answered() -> impl Strategy<Value = Draft> {
    (offset(2, 10), no_timestamp(), trace())
        .prop_map(|(ms, inf, tr)| (ms, inf, tr, EventKind::Answered))
}

fn identified() -> impl Strategy<Value = Draft> {
    // Before the start, during the call, or after the end.
    (
        offset(0, 120),
        no_timestamp(),
        trace(),
        prop_oneof![9 => any_identity(), 1 => Just(Identity::default())],
    )
        .prop_map(|(ms, inf, tr, id)| (ms, inf, tr, EventKind::Identified(id)))
}

fn recording() -> impl Strategy<Value = Draft> {
    (
        offset(30, 150),
        no_timestamp(),
        trace(),
        prop_oneof![
            4 => prop::sample::select(vec![
                "s3://recordings/tenant-a/call.wav",
                "s3://recordings/tenant-a/call-reprocessed.wav",
                "s3://recordings/tenant-b/call.wav",
            ])
            .prop_map(|u| Some(u.to_owned())),
            1 => Just(None),
        ],
    )
        .prop_map(|(ms, inf, tr, uri)| (ms, inf, tr, EventKind::RecordingAvailable { uri }))
}

const REASONS: [Option<&str>; 9] = [
    None,
    Some("normal_clearing"),
    Some("normal_clearing_by_user"),
    Some("terminated_by_request"),
    Some("system_terminated"),
    Some("busy"),
    Some("user_busy"),
    Some("failure"),
    Some("network_failure"),
];

fn ended() -> impl Strategy<Value = Draft> {
    (
        // Now and then an end stamped before the start (clock skew between producers).
        prop_oneof![9 => offset(8, 90), 1 => offset(0, 4)],
        no_timestamp(),
        trace(),
        prop::sample::select(REASONS.to_vec()),
    )
        .prop_map(|(ms, inf, tr, reason)| (ms, inf, tr, ended_kind(reason)))
}

fn terminate() -> impl Strategy<Value = Draft> {
    (offset(10, 90), prop::bool::weighted(0.6))
        .prop_map(|(ms, inf)| (ms, inf, None, EventKind::TerminateRequested))
}

fn turn() -> impl Strategy<Value = Draft> {
    (offset(5, 90), no_timestamp(), trace(), 0i32..4)
        .prop_map(|(ms, inf, tr, i)| (ms, inf, tr, turn_kind(i)))
}

fn usage() -> impl Strategy<Value = Draft> {
    (
        offset(5, 120),
        no_timestamp(),
        trace(),
        // A small pool of ids, so that two reports often share one.
        prop::sample::select(vec![None, None, Some("u-1"), Some("u-2"), Some("u-3")]),
        prop::sample::select(vec![
            "llm_token",
            "stt_second",
            "tts_character",
            TELEPHONY_MINUTE,
            "unpriced_resource",
        ]),
        // Equal quantities written differently ("30" and "30.0") by different producers.
        prop::sample::select(vec!["1", "2", "30", "30.0", "120.5", "1500", "1500.00"]),
    )
        .prop_map(|(ms, inf, tr, id, res, q)| (ms, inf, tr, usage_kind(id, res, q)))
}

/// A report sent twice under one `usageId`, the second time with the quantity written another
/// way (`30` then `30.0`): equal in value, different bodies.
fn usage_resent() -> impl Strategy<Value = Vec<Draft>> {
    (
        offset(5, 120),
        offset(5, 120),
        prop::sample::select(vec!["u-1", "u-4"]),
        prop::sample::select(vec!["stt_second", "llm_token", TELEPHONY_MINUTE]),
        prop::sample::select(vec![("30", "30.0"), ("1500", "1500.00"), ("2.5", "2.50")]),
    )
        .prop_map(|(ms1, ms2, id, res, (q1, q2))| {
            vec![
                (
                    ms1,
                    false,
                    Some(TRACE.to_owned()),
                    usage_kind(Some(id), res, q1),
                ),
                (
                    ms2,
                    false,
                    Some(TRACE.to_owned()),
                    usage_kind(Some(id), res, q2),
                ),
            ]
        })
}

fn other() -> impl Strategy<Value = Draft> {
    (offset(0, 150), no_timestamp(), trace())
        .prop_map(|(ms, inf, tr)| (ms, inf, tr, EventKind::Other))
}

/// The distinct events of one realistic call. Body hashes are SHA-256 of a text unique to each
/// drafted event: distinct per distinct event; exact duplicates are clones (same hash).
fn call() -> impl Strategy<Value = Vec<CallEvent>> {
    use prop::collection::vec;
    (
        vec(started(), 0..=3),
        vec(answered(), 0..=2),
        vec(identified(), 0..=3),
        vec(recording(), 0..=2),
        vec(ended(), 0..=2),
        vec(turn(), 0..=3),
        vec(usage(), 0..=5),
        prop_oneof![2 => Just(Vec::new()), 1 => usage_resent()],
        vec(terminate(), 0..=1),
        vec(other(), 0..=2),
    )
        .prop_map(|(s, a, i, r, e, d, u, ur, t, o)| {
            [s, a, i, r, e, d, u, ur, t, o]
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(n, (ms, inf, trace_id, kind))| {
                    let body = sha(&format!("{n}|{ms}|{inf}|{trace_id:?}|{kind:?}"));
                    CallEvent::new(at_ms(ms), inf, body, trace_id, kind)
                })
                .collect()
        })
}

/// A call's distinct events, and the same events permuted with exact duplicates inserted anywhere.
fn call_scrambled() -> impl Strategy<Value = (Vec<CallEvent>, Vec<CallEvent>)> {
    (call(), prop::collection::vec(any::<Index>(), 0..=6)).prop_flat_map(|(events, dups)| {
        let mut all = events.clone();
        if !events.is_empty() {
            all.extend(dups.iter().map(|d| events[d.index(events.len())].clone()));
        }
        (Just(events), Just(all).prop_shuffle())
    })
}

/// The record must also be the same byte for byte where the live view shows it.
fn json(record: &CallRecord) -> String {
    serde_json::to_string(record).unwrap()
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 1024,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases())]

    /// 1. Any permutation, with any exact duplicates anywhere, folds to the same state and record.
    #[test]
    fn fold_is_order_independent_and_idempotent((events, scrambled) in call_scrambled()) {
        let prices = prices();
        let original = CallState::fold(&events);
        let shuffled = CallState::fold(&scrambled);
        prop_assert_eq!(&original, &shuffled);
        // `Decimal` equality ignores the scale (30 == 30.0); the debug form does not.
        prop_assert_eq!(format!("{original:?}"), format!("{shuffled:?}"));
        let (a, lines_a) = original.record_and_usage(CALL_ID, &prices);
        let (b, lines_b) = shuffled.record_and_usage(CALL_ID, &prices);
        prop_assert_eq!(json(&a), json(&b));
        prop_assert_eq!(a, b);
        prop_assert_eq!(format!("{lines_a:?}"), format!("{lines_b:?}"));

        // Re-applying everything to a folded state changes nothing.
        let mut again = shuffled.clone();
        for e in &scrambled {
            again.apply(e);
        }
        prop_assert_eq!(&again, &original);
    }

    /// 2a. Flushing after any prefix and folding the rest into the same state converges.
    #[test]
    fn late_events_converge(
        (events, scrambled) in call_scrambled(),
        split in any::<Index>(),
    ) {
        let prices = prices();
        let (all, all_lines) = CallState::fold(&events).record_and_usage(CALL_ID, &prices);
        let cut = split.index(scrambled.len() + 1);
        let (first, rest) = scrambled.split_at(cut);
        let mut state = CallState::fold(first);
        let flushed = state.record(CALL_ID, &prices);
        prop_assert!(flushed.duration_seconds.is_none_or(|d| d >= 0));
        for e in rest {
            state.apply(e);
        }
        let (late, late_lines) = state.record_and_usage(CALL_ID, &prices);
        prop_assert_eq!(json(&late), json(&all));
        prop_assert_eq!(late, all);
        prop_assert_eq!(format!("{late_lines:?}"), format!("{all_lines:?}"));
    }

    /// 2b. Two states folded from any two parts, each completed with the other part's events,
    /// equal the fold of everything.
    #[test]
    fn parts_folded_apart_converge(
        (events, scrambled) in call_scrambled(),
        mask in prop::collection::vec(any::<bool>(), 0..=40),
    ) {
        let prices = prices();
        let whole = CallState::fold(&events);
        let in_a = |i: usize| mask.get(i).copied().unwrap_or(false);
        let part = |of_a: bool| -> Vec<&CallEvent> {
            scrambled.iter().enumerate().filter(|(i, _)| in_a(*i) == of_a).map(|(_, e)| e).collect()
        };
        let (a, b) = (part(true), part(false));
        let mut s1 = CallState::fold(a.iter().copied());
        let mut s2 = CallState::fold(b.iter().copied());
        for e in &b {
            s1.apply(e);
        }
        for e in &a {
            s2.apply(e);
        }
        prop_assert_eq!(&s1, &whole);
        prop_assert_eq!(&s2, &whole);
        prop_assert_eq!(json(&s1.record(CALL_ID, &prices)), json(&whole.record(CALL_ID, &prices)));
    }

    /// 3. No negative durations; COMPLETED iff a `call.ended` is present; ANSWERED whenever a
    /// `call.answered` is present. Plus every rule checked against a naive reading of the events.
    #[test]
    fn record_follows_the_merge_rules((events, scrambled) in call_scrambled()) {
        let prices = prices();
        let (record, lines) = CallState::fold(&scrambled).record_and_usage(CALL_ID, &prices);
        prop_assert!(record.duration_seconds.is_none_or(|d| d >= 0));
        prop_assert!(record.billable_seconds.is_none_or(|d| d >= 0));

        let is = |f: fn(&EventKind) -> bool| events.iter().filter(move |e| f(&e.kind));
        let has_end = is(|k| matches!(k, EventKind::Ended { .. })).next().is_some();
        let has_answer = is(|k| matches!(k, EventKind::Answered)).next().is_some();
        prop_assert_eq!(record.status == Status::Completed, has_end);
        prop_assert_eq!(record.status == Status::TimedOut, !has_end);
        prop_assert_eq!(record.end_time.is_some(), has_end);
        if has_answer {
            prop_assert_eq!(record.disposition, Disposition::Answered);
        }

        // Earliest start / answer / end (ties broken by content), latest recording.
        let key = |e: &&CallEvent| (e.timestamp, e.tie());
        let first_start = is(|k| matches!(k, EventKind::Started(_))).min_by_key(key);
        let expected_start = first_start.or_else(|| events.iter().min_by_key(key));
        prop_assert_eq!(record.start_time, expected_start.map(|e| e.timestamp));
        let first_answer = is(|k| matches!(k, EventKind::Answered)).min_by_key(key);
        prop_assert_eq!(record.answer_time, first_answer.map(|e| e.timestamp));
        let first_end = is(|k| matches!(k, EventKind::Ended { .. })).min_by_key(key);
        prop_assert_eq!(record.end_time, first_end.map(|e| e.timestamp));
        let reason = first_end.and_then(|e| match &e.kind {
            EventKind::Ended { reason } => reason.clone(),
            _ => None,
        });
        prop_assert_eq!(&record.end_reason, &reason);
        let last_recording =
            is(|k| matches!(k, EventKind::RecordingAvailable { uri: Some(_) })).max_by_key(key);
        let uri = last_recording.and_then(|e| match &e.kind {
            EventKind::RecordingAvailable { uri } => uri.clone(),
            _ => None,
        });
        prop_assert_eq!(&record.recording_url, &uri);

        // Disposition from the end reason when there is no sign of an answer.
        let media = is(|k| matches!(k, EventKind::RecordingAvailable { uri: Some(_) } | EventKind::DialogTurn(_)))
            .next()
            .is_some();
        if !has_answer && !media {
            let expected = match reason.as_deref() {
                Some("busy" | "user_busy") => Disposition::Busy,
                Some("failure" | "network_failure" | "system_terminated") => Disposition::Failed,
                _ => Disposition::NoAnswer,
            };
            prop_assert_eq!(record.disposition, expected);
        }

        // The SIP code: the end reason's failure, else the 200 OK of an answered call.
        let answered = record.disposition == Disposition::Answered;
        let expected_code = match reason.as_deref() {
            Some("busy" | "user_busy") => Some(486),
            Some("network_failure") => Some(503),
            Some("failure") => Some(500),
            Some(_) if answered => Some(200),
            _ => None,
        };
        prop_assert_eq!(record.sip_hangup_cause, expected_code);

        // Inferred start / answer / end are listed, in that order.
        let mut listed = Vec::new();
        if expected_start.is_some_and(|e| e.timestamp_inferred || first_start.is_none()) {
            listed.push("start");
        }
        if first_answer.is_some_and(|e| e.timestamp_inferred) {
            listed.push("answer");
        }
        if first_end.is_some_and(|e| e.timestamp_inferred) {
            listed.push("end");
        }
        prop_assert_eq!(record.inferred_times.clone(), (!listed.is_empty()).then(|| listed.join(",")));

        // Caller and callee numbers from the SIP From/To of the earliest start.
        let numbers = first_start.map(|e| match &e.kind {
            EventKind::Started(s) => (
                sip_user(s.from_uri.as_deref().unwrap()),
                sip_user(s.to_uri.as_deref().unwrap()),
            ),
            _ => unreachable!(),
        });
        prop_assert_eq!(record.caller_number.clone(), numbers.clone().and_then(|n| n.0));
        prop_assert_eq!(record.callee_number.clone(), numbers.and_then(|n| n.1));

        // Duration: end - answer when answered, else end - start, never negative.
        match record.end_time {
            Some(end) => {
                let from = record.answer_time.or(record.start_time).unwrap();
                let expected = (end - from).num_seconds().max(0);
                prop_assert_eq!(record.duration_seconds.map(i64::from), Some(expected));
            }
            None => prop_assert_eq!(record.duration_seconds, None),
        }

        // Identity, field by field: the latest identification that gives the field, else the
        // latest dialplan match that gives it. An event without the field erases nothing.
        fn latest<T: Clone>(
            events: &[CallEvent],
            source: fn(&EventKind) -> Option<&Identity>,
            field: fn(&Identity) -> Option<T>,
        ) -> Option<T> {
            events
                .iter()
                .filter_map(|e| {
                    source(&e.kind)
                        .and_then(field)
                        .map(|v| (e.timestamp, e.tie(), v))
                })
                .max_by_key(|(t, h, _)| (*t, *h))
                .map(|(_, _, v)| v)
        }
        fn identified(k: &EventKind) -> Option<&Identity> {
            match k {
                EventKind::Identified(i) => Some(i),
                _ => None,
            }
        }
        fn dialplan(k: &EventKind) -> Option<&Identity> {
            match k {
                EventKind::Started(s) => Some(&s.dialplan_identity),
                _ => None,
            }
        }
        fn pick<T: Clone>(events: &[CallEvent], field: fn(&Identity) -> Option<T>) -> Option<T> {
            latest(events, identified, field).or_else(|| latest(events, dialplan, field))
        }
        prop_assert_eq!(record.user_id, pick(&events, |i| i.user_id));
        prop_assert_eq!(record.contact_id, pick(&events, |i| i.contact_id));
        prop_assert_eq!(record.tenant_id.clone(), pick(&events, |i| i.tenant_id.clone()));

        // Cost: each usage report once (two reports sharing a usageId: one of them, chosen by
        // content), priced at the start, plus telephony minutes rounded up unless reported;
        // one usage line each, its cost rounded to 5 places, the total their sum.
        let mut usage: BTreeMap<String, (String, Decimal)> = BTreeMap::new();
        for e in &events {
            if let EventKind::UsageReported(u) = &e.kind {
                let key = usage_key(u.usage_id.as_deref(), &e.body_hash);
                let candidate = (u.resource_type.clone(), u.quantity);
                let slot = usage.entry(key).or_insert_with(|| candidate.clone());
                if candidate > *slot {
                    *slot = candidate;
                }
            }
        }
        let start = record.start_time;
        let mut expected: Option<Decimal> = None;
        let mut expected_lines = Vec::new();
        for (key, (resource, quantity)) in &usage {
            let cost = start
                .and_then(|s| prices.price_at(resource, s))
                .map(|price| (price * quantity).round_dp(5));
            if let Some(cost) = cost {
                *expected.get_or_insert(Decimal::ZERO) += cost;
            }
            expected_lines.push((key.clone(), resource.clone(), quantity.normalize(), cost));
        }
        let telephony_reported = usage.values().any(|(r, _)| r == TELEPHONY_MINUTE);
        if let (false, Some(a), Some(e), Some(s)) =
            (telephony_reported, record.answer_time, record.end_time, start)
        {
            let minutes = Decimal::from(((e - a).num_seconds().max(0) + 59) / 60);
            let price = prices.price_at(TELEPHONY_MINUTE, s).unwrap();
            let cost = (price * minutes).round_dp(5);
            *expected.get_or_insert(Decimal::ZERO) += cost;
            expected_lines.push((
                "telephony".to_owned(),
                TELEPHONY_MINUTE.to_owned(),
                minutes,
                Some(cost),
            ));
        }
        prop_assert_eq!(record.total_cost, expected);
        let found: Vec<_> = lines
            .iter()
            .map(|l| (l.key.clone(), l.resource_type.clone(), l.quantity.normalize(), l.cost))
            .collect();
        prop_assert_eq!(found, expected_lines);
    }
}

// ---------------------------------------------------------------------------------------------
// Examples: one per merge rule, exact values
// ---------------------------------------------------------------------------------------------

const FROM: &str = "\"<sip:905551234567@203.0.113.5>;tag=abc\"";
const TO: &str = "<sip:902124440000@10.0.0.1>";

fn start_at(label: &str, secs: i64) -> CallEvent {
    ev(
        label,
        at(secs),
        started_kind(FROM, TO, Identity::default(), false),
    )
}

/// A plain answered call: start at 0, answer at 5, end at 65.
fn plain_call() -> Vec<CallEvent> {
    vec![
        start_at("start", 0),
        ev("answer", at(5), EventKind::Answered),
        ev("end", at(65), ended_kind(Some("normal_clearing"))),
    ]
}

#[test]
fn plain_call_record() {
    let r = record_of(&plain_call());
    assert_eq!(r.call_id, CALL_ID);
    assert_eq!(r.trace_id.as_deref(), Some(TRACE));
    assert_eq!(r.start_time, Some(at(0)));
    assert_eq!(r.answer_time, Some(at(5)));
    assert_eq!(r.end_time, Some(at(65)));
    assert_eq!(r.duration_seconds, Some(60));
    assert_eq!(r.billable_seconds, Some(60));
    assert_eq!(r.status, Status::Completed);
    assert_eq!(r.disposition, Disposition::Answered);
    assert_eq!(r.end_reason.as_deref(), Some("normal_clearing"));
    assert_eq!(r.sip_hangup_cause, Some(200), "answered: its 200 OK");
    assert_eq!(r.inferred_times, None);
    assert_eq!(r.recording_url, None);
    assert_eq!(r.direction, None);
    assert_eq!((r.user_id, r.contact_id, r.tenant_id), (None, None, None));
    assert_eq!(r.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(r.callee_number.as_deref(), Some("902124440000"));
    // One telephony minute at the price in force at the start.
    assert_eq!(r.total_cost, Some(dec("0.01")));
}

#[test]
fn start_is_the_earliest_call_started() {
    let other = |n: &str| format!("<sip:90555000000{n}@203.0.113.5>");
    let events = vec![
        ev(
            "start-late",
            at(3),
            started_kind(&other("3"), TO, Identity::default(), false),
        ),
        ev(
            "start-early",
            at(1),
            started_kind(FROM, TO, Identity::default(), false),
        ),
        ev(
            "start-mid",
            at(2),
            started_kind(&other("2"), TO, Identity::default(), false),
        ),
        ev("end", at(30), ended_kind(None)),
    ];
    let r = record_of(&events);
    assert_eq!(r.start_time, Some(at(1)));
    assert_eq!(r.duration_seconds, Some(29));
    // The numbers come from the earliest start as well.
    assert_eq!(r.caller_number.as_deref(), Some("905551234567"));
    // A duplicate start arriving after the end changes nothing (hazard 3 of the old consumer).
    let mut late = events.clone();
    late.push(ev(
        "start-after-end",
        at(40),
        started_kind(&other("9"), TO, Identity::default(), false),
    ));
    assert_eq!(record_of(&late), r);
}

#[test]
fn start_falls_back_to_the_earliest_event_when_call_started_never_came() {
    let events = vec![
        ev(
            "ident",
            at(4),
            EventKind::Identified(identity(Some(1), None, None)),
        ),
        ev("end", at(20), ended_kind(Some("normal_clearing"))),
    ];
    let r = record_of(&events);
    assert_eq!(r.start_time, Some(at(4)));
    assert_eq!(r.duration_seconds, Some(16));
    assert_eq!(r.status, Status::Completed);
    assert_eq!(r.inferred_times.as_deref(), Some("start"));
    assert_eq!((r.caller_number, r.callee_number), (None, None));
}

#[test]
fn answer_is_the_earliest_call_answered() {
    let mut events = plain_call();
    events.push(ev("answer-dup-late", at(9), EventKind::Answered));
    events.push(ev("answer-dup-early", at(4), EventKind::Answered));
    let r = record_of(&events);
    assert_eq!(r.answer_time, Some(at(4)));
    assert_eq!(r.duration_seconds, Some(61));
}

#[test]
fn end_is_the_earliest_call_ended_with_its_reason() {
    let events = vec![
        start_at("start", 0),
        ev("end-b", at(50), ended_kind(Some("network_failure"))),
        ev("end-a", at(40), ended_kind(Some("busy"))),
        ev("end-c", at(60), ended_kind(None)),
    ];
    let r = record_of(&events);
    assert_eq!(r.end_time, Some(at(40)));
    assert_eq!(r.end_reason.as_deref(), Some("busy"));
    assert_eq!(r.sip_hangup_cause, Some(486));
    assert_eq!(r.disposition, Disposition::Busy);
    assert_eq!(r.duration_seconds, Some(40));
}

#[test]
fn simultaneous_ends_pick_the_same_one_in_every_order() {
    let events = vec![
        start_at("start", 0),
        ev("end-x", at(40), ended_kind(Some("busy"))),
        ev("end-y", at(40), ended_kind(Some("failure"))),
    ];
    let expected = record_of(&events);
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let permuted: Vec<_> = order.iter().map(|&i| events[i].clone()).collect();
        assert_eq!(record_of(&permuted), expected);
    }
    assert_eq!(expected.end_time, Some(at(40)));
}

#[test]
fn identification_wins_over_the_dialplan_match() {
    let dialplan = identity(Some(1), Some(11), Some("tenant-a"));
    let events = vec![
        ev("start", at(0), started_kind(FROM, TO, dialplan, true)),
        ev("end", at(30), ended_kind(None)),
    ];
    let r = record_of(&events);
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(1)), Some(11), Some("tenant-a"))
    );
    assert_eq!(r.direction.as_deref(), Some("INBOUND"));

    // The identification arrives after the end and still wins.
    let mut identified = events.clone();
    identified.push(ev(
        "ident",
        at(90),
        EventKind::Identified(identity(Some(2), Some(22), Some("tenant-b"))),
    ));
    let r = record_of(&identified);
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(2)), Some(22), Some("tenant-b"))
    );

    // An identification without a contact or tenant: those fields still come from the dialplan.
    let mut partial = events.clone();
    partial.push(ev(
        "ident",
        at(2),
        EventKind::Identified(identity(Some(3), None, None)),
    ));
    let r = record_of(&partial);
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(3)), Some(11), Some("tenant-a"))
    );
}

#[test]
fn identification_before_the_start_still_wins() {
    let events = vec![
        ev(
            "ident",
            at(-2),
            EventKind::Identified(identity(Some(2), Some(22), Some("tenant-b"))),
        ),
        ev(
            "start",
            at(0),
            started_kind(
                FROM,
                TO,
                identity(Some(1), Some(11), Some("tenant-a")),
                false,
            ),
        ),
    ];
    let r = record_of(&events);
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(2)), Some(22), Some("tenant-b"))
    );
    // The start is still the call.started, not the earlier identification.
    assert_eq!(r.start_time, Some(at(0)));
}

#[test]
fn latest_identification_wins() {
    let events = vec![
        start_at("start", 0),
        ev(
            "ident-late",
            at(20),
            EventKind::Identified(identity(Some(2), Some(22), Some("tenant-b"))),
        ),
        ev(
            "ident-early",
            at(10),
            EventKind::Identified(identity(Some(1), Some(11), Some("tenant-a"))),
        ),
        // Carries nothing: ignored.
        ev(
            "ident-empty",
            at(30),
            EventKind::Identified(Identity::default()),
        ),
    ];
    let r = record_of(&events);
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(2)), Some(22), Some("tenant-b"))
    );
}

#[test]
fn latest_dialplan_match_wins_among_duplicate_starts() {
    let events = vec![
        ev(
            "start-early",
            at(0),
            started_kind(FROM, TO, identity(Some(1), None, Some("tenant-a")), false),
        ),
        ev(
            "start-late",
            at(2),
            started_kind(FROM, TO, identity(Some(2), None, Some("tenant-b")), false),
        ),
        // A later start whose dialplan matched nobody does not erase the match.
        start_at("start-empty", 3),
    ];
    let r = record_of(&events);
    assert_eq!(r.start_time, Some(at(0)));
    assert_eq!(
        (r.user_id, r.tenant_id.as_deref()),
        (Some(user(2)), Some("tenant-b"))
    );
}

#[test]
fn recording_is_the_latest() {
    let mut events = plain_call();
    events.push(ev(
        "rec-2",
        at(130),
        recording_kind("s3://recordings/tenant-a/call-v2.wav"),
    ));
    events.push(ev(
        "rec-1",
        at(95),
        recording_kind("s3://recordings/tenant-a/call.wav"),
    ));
    events.push(ev(
        "rec-none",
        at(200),
        EventKind::RecordingAvailable { uri: None },
    ));
    let r = record_of(&events);
    assert_eq!(
        r.recording_url.as_deref(),
        Some("s3://recordings/tenant-a/call-v2.wav")
    );
    // A recording after the end leaves the end, the status and the duration alone.
    assert_eq!(r.end_time, Some(at(65)));
    assert_eq!(r.status, Status::Completed);
    assert_eq!(r.duration_seconds, Some(60));
}

#[test]
fn disposition_from_answer_and_end_reason() {
    let unanswered = |reason: Option<&str>| {
        record_of(&[start_at("start", 0), ev("end", at(20), ended_kind(reason))]).disposition
    };
    assert_eq!(unanswered(Some("busy")), Disposition::Busy);
    assert_eq!(unanswered(Some("user_busy")), Disposition::Busy);
    assert_eq!(unanswered(Some("failure")), Disposition::Failed);
    assert_eq!(unanswered(Some("network_failure")), Disposition::Failed);
    assert_eq!(unanswered(Some("normal_clearing")), Disposition::NoAnswer);
    assert_eq!(
        unanswered(Some("normal_clearing_by_user")),
        Disposition::NoAnswer
    );
    assert_eq!(
        unanswered(Some("terminated_by_request")),
        Disposition::NoAnswer
    );
    assert_eq!(unanswered(None), Disposition::NoAnswer);

    // Answered wins over any reason.
    let answered = record_of(&[
        start_at("start", 0),
        ev("answer", at(3), EventKind::Answered),
        ev("end", at(20), ended_kind(Some("busy"))),
    ]);
    assert_eq!(answered.disposition, Disposition::Answered);
    assert_eq!(answered.end_reason.as_deref(), Some("busy"));
    assert_eq!(answered.sip_hangup_cause, Some(486));

    // Unanswered with no end yet.
    assert_eq!(
        record_of(&[start_at("start", 0)]).disposition,
        Disposition::NoAnswer
    );
}

#[test]
fn duration_is_end_minus_answer_when_answered_else_end_minus_start() {
    let answered = record_of(&plain_call());
    assert_eq!(answered.duration_seconds, Some(60));

    let unanswered = record_of(&[
        start_at("start", 0),
        ev("end", at(25), ended_kind(Some("normal_clearing"))),
    ]);
    assert_eq!(unanswered.duration_seconds, Some(25));
    assert_eq!(unanswered.billable_seconds, None);

    // The end stamped before the start (clock skew): clamped at 0.
    let skewed = record_of(&[
        start_at("start", 10),
        ev("end", at(7), ended_kind(Some("failure"))),
    ]);
    assert_eq!(skewed.duration_seconds, Some(0));
    assert_eq!(skewed.start_time, Some(at(10)));
    assert_eq!(skewed.end_time, Some(at(7)));

    // The end stamped before the answer: clamped at 0 too.
    let skewed = record_of(&[
        start_at("start", 0),
        ev("answer", at(12), EventKind::Answered),
        ev("end", at(11), ended_kind(None)),
    ]);
    assert_eq!(skewed.duration_seconds, Some(0));
    assert_eq!(skewed.billable_seconds, Some(0));
}

#[test]
fn status_is_timed_out_without_an_end_and_completed_once_it_arrives() {
    let mut events = plain_call();
    let end = events.pop().unwrap();
    let open = record_of(&events);
    assert_eq!(open.status, Status::TimedOut);
    assert_eq!(open.end_time, None);
    assert_eq!(open.duration_seconds, None);
    assert_eq!(open.disposition, Disposition::Answered);

    // The end arrives after the idle-timeout flush: the row converges to the full fold.
    let mut state = CallState::fold(&events);
    state.apply(&end);
    let late = state.record(CALL_ID, &prices());
    assert_eq!(late.status, Status::Completed);
    assert_eq!(late, record_of(&plain_call()));

    // A terminate request does not end the call.
    events.push(ev("terminate", at(60), EventKind::TerminateRequested));
    assert_eq!(record_of(&events).status, Status::TimedOut);
}

#[test]
fn inferred_timestamps_are_listed() {
    let all = [
        inferred(start_at("start", 0)),
        inferred(ev("answer", at(5), EventKind::Answered)),
        inferred(ev("end", at(65), ended_kind(None))),
    ];
    assert_eq!(
        record_of(&all).inferred_times.as_deref(),
        Some("start,answer,end")
    );

    let only_end = [
        start_at("start", 0),
        ev("answer", at(5), EventKind::Answered),
        inferred(ev("end", at(65), ended_kind(None))),
    ];
    assert_eq!(record_of(&only_end).inferred_times.as_deref(), Some("end"));

    // Only the chosen (earliest) start counts: a later inferred duplicate does not.
    let mut dup = plain_call();
    dup.push(inferred(start_at("start-dup", 2)));
    assert_eq!(record_of(&dup).inferred_times, None);

    // An inferred event that is not start/answer/end is not listed.
    let mut other = plain_call();
    other.push(inferred(ev(
        "terminate",
        at(50),
        EventKind::TerminateRequested,
    )));
    assert_eq!(record_of(&other).inferred_times, None);
}

#[test]
fn timestamp_less_event_uses_its_receive_time_end_to_end() {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        max_json_depth: 32,
    };
    let to_event = |body: &str, received: DateTime<Utc>| {
        CallEvent::from(decode(body.as_bytes(), received, limits).unwrap())
    };
    let events = vec![
        // The typed producer omits the timestamp of call.started.
        to_event(
            r#"{"eventType":"call.started","callId":"a84b4c76e66710@198.51.100.7",
               "traceId":"trace-Ab12Cd34Ef56",
               "from":"\"<sip:905551234567@203.0.113.5>;tag=abc\"",
               "to":"<sip:902124440000@10.0.0.1>",
               "media":{"server_rtp_port":10000,"caller_rtp_addr":"203.0.113.5:4000"},
               "dialplan":{"tenantId":"tenant-a",
                           "matchedUser":{"id":"5e170000-0000-4000-8000-000000000001"},
                           "matchedContact":{"id":11,
                                             "userId":"5e170000-0000-4000-8000-000000000001"}}}"#,
            at(1),
        ),
        to_event(
            r#"{"eventType":"call.answered","callId":"a84b4c76e66710@198.51.100.7",
               "timestamp":"2025-09-24T10:00:05.000+00:00"}"#,
            at(6),
        ),
        to_event(
            r#"{"eventType":"call.ended","callId":"a84b4c76e66710@198.51.100.7",
               "timestamp":"2025-09-24T10:01:05Z","reason":"normal_clearing_by_user"}"#,
            at(66),
        ),
    ];
    let r = record_of(&events);
    assert_eq!(r.start_time, Some(at(1)));
    assert_eq!(r.answer_time, Some(at(5)));
    assert_eq!(r.end_time, Some(at(65)));
    assert_eq!(r.inferred_times.as_deref(), Some("start"));
    assert_eq!(r.trace_id.as_deref(), Some(TRACE));
    assert_eq!(r.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(r.callee_number.as_deref(), Some("902124440000"));
    assert_eq!(
        (r.user_id, r.contact_id, r.tenant_id.as_deref()),
        (Some(user(1)), Some(11), Some("tenant-a"))
    );
    assert_eq!(r.duration_seconds, Some(60));
    assert_eq!(r.hangup_source.as_deref(), Some("CALLER"));
}

#[test]
fn caller_and_callee_numbers_come_from_sip_from_and_to() {
    let r = record_of(&[ev(
        "start",
        at(0),
        started_kind(
            "\"Alice\" <sip:905559876543@203.0.113.9;transport=udp>;tag=q1",
            "<tel:+902124440000>",
            Identity::default(),
            false,
        ),
    )]);
    assert_eq!(r.caller_number.as_deref(), Some("905559876543"));
    assert_eq!(r.callee_number.as_deref(), Some("+902124440000"));
}

#[test]
fn cost_is_usage_priced_at_the_start_plus_telephony_minutes() {
    let events = vec![
        start_at("start", 0),
        ev("answer", at(5), EventKind::Answered),
        // 61 s billable: two telephony minutes (rounded up), at the price in force at the start
        // (the change at +45 s does not apply).
        ev("end", at(66), ended_kind(Some("normal_clearing"))),
        // 1000 llm tokens at the June price: the change at +30 s does not apply.
        ev(
            "usage-1",
            at(40),
            usage_kind(Some("u-1"), "llm_token", "1000"),
        ),
        // The same usageId reported again (another body): counted once.
        ev(
            "usage-1-again",
            at(41),
            usage_kind(Some("u-1"), "llm_token", "1000"),
        ),
        // 30 STT seconds without a usageId.
        ev("usage-stt", at(50), usage_kind(None, "stt_second", "30")),
        // A resource without a price adds nothing.
        ev(
            "usage-unpriced",
            at(50),
            usage_kind(Some("u-9"), "gpu_second", "7"),
        ),
    ];
    let r = record_of(&events);
    assert_eq!(r.billable_seconds, Some(61));
    // 1000 * 0.00002 + 30 * 0.0001 + 2 * 0.01
    assert_eq!(r.total_cost, Some(dec("0.043")));
    // The exact duplicate of the report without usageId (a redelivery) is counted once.
    let mut redelivered = events.clone();
    redelivered.insert(1, events[5].clone());
    assert_eq!(record_of(&redelivered), r);
}

#[test]
fn two_reports_sharing_a_usage_id_count_once_whatever_their_order() {
    let base = vec![start_at("start", 0), ev("end", at(20), ended_kind(None))];
    let mut events = base.clone();
    events.push(ev(
        "usage-a",
        at(10),
        usage_kind(Some("u-7"), "tts_character", "1000"),
    ));
    events.push(ev(
        "usage-b",
        at(11),
        usage_kind(Some("u-7"), "tts_character", "2000"),
    ));
    let r = record_of(&events);
    // Unanswered: no telephony minutes. One of the two reports (chosen by content): 2000 * 0.000015.
    assert_eq!(r.total_cost, Some(dec("0.03")));

    // Two reports without a usageId and with different bodies are two reports.
    let mut distinct = base;
    distinct.push(ev(
        "usage-c",
        at(10),
        usage_kind(None, "tts_character", "1000"),
    ));
    distinct.push(ev(
        "usage-d",
        at(11),
        usage_kind(None, "tts_character", "500"),
    ));
    // 1500 * 0.000015
    assert_eq!(record_of(&distinct).total_cost, Some(dec("0.0225")));
}

#[test]
fn price_is_valid_from_its_start_date() {
    // A call that starts exactly when the +30 s price takes effect pays it.
    let events = [
        start_at("start", 30),
        ev(
            "usage",
            at(40),
            usage_kind(Some("u-1"), "llm_token", "1000"),
        ),
    ];
    assert_eq!(record_of(&events).total_cost, Some(dec("0.05")));
    // One that starts a millisecond earlier does not.
    let events = [
        ev(
            "start",
            at_ms(29_999),
            started_kind(FROM, TO, Identity::default(), false),
        ),
        ev(
            "usage",
            at(40),
            usage_kind(Some("u-1"), "llm_token", "1000"),
        ),
    ];
    assert_eq!(record_of(&events).total_cost, Some(dec("0.02")));
}

#[test]
fn reported_telephony_minutes_are_not_added_twice() {
    let mut events = plain_call();
    events.push(ev(
        "usage-tel",
        at(70),
        usage_kind(Some("tel-1"), TELEPHONY_MINUTE, "3"),
    ));
    assert_eq!(record_of(&events).total_cost, Some(dec("0.03")));
}

#[test]
fn nothing_priced_means_no_cost() {
    let events = [
        start_at("start", 0),
        ev("end", at(20), ended_kind(Some("busy"))),
    ];
    assert_eq!(record_of(&events).total_cost, None);
    let unpriced = CallState::fold(&plain_call()).record(CALL_ID, &PriceBook::default());
    assert_eq!(unpriced.total_cost, None);
}

#[test]
fn late_recording_and_identification_converge_after_a_flush() {
    let mut state = CallState::fold(&plain_call());
    let flushed = state.record(CALL_ID, &prices());
    assert_eq!(flushed.recording_url, None);
    let late = [
        ev(
            "rec",
            at(120),
            recording_kind("s3://recordings/tenant-a/call.wav"),
        ),
        ev(
            "ident",
            at(125),
            EventKind::Identified(identity(Some(1), Some(11), Some("tenant-a"))),
        ),
    ];
    for e in &late {
        state.apply(e);
    }
    let mut all = plain_call();
    all.extend(late);
    let r = record_of(&all);
    assert_eq!(state.record(CALL_ID, &prices()), r);
    assert_eq!(
        r.recording_url.as_deref(),
        Some("s3://recordings/tenant-a/call.wav")
    );
    assert_eq!(r.user_id, Some(user(1)));
    assert_eq!(r.end_time, Some(at(65)));
}

#[test]
fn trace_id_is_the_earliest_present() {
    let with_trace = |e: &CallEvent, trace: Option<&str>| {
        CallEvent::new(
            e.timestamp,
            e.timestamp_inferred,
            e.body_hash,
            trace.map(str::to_owned),
            e.kind.clone(),
        )
    };
    let mut events: Vec<CallEvent> = plain_call().iter().map(|e| with_trace(e, None)).collect();
    events[2] = with_trace(&events[2], Some("trace-late"));
    events[1] = with_trace(&events[1], Some("trace-first"));
    assert_eq!(record_of(&events).trace_id.as_deref(), Some("trace-first"));
}

#[test]
fn unknown_events_and_dialog_turns_add_no_record_fields() {
    let mut events = plain_call();
    events.push(ev("other", at(30), EventKind::Other));
    events.push(ev("turn-0", at(20), turn_kind(0)));
    events.push(ev("turn-1", at(40), turn_kind(1)));
    assert_eq!(record_of(&events), record_of(&plain_call()));
}

#[test]
fn equal_quantities_written_differently_cost_the_same_in_every_order() {
    // One report re-sent under its usageId with `30.0` for `30`: the record (as the live view
    // shows it, scale included) must not depend on which arrived first.
    let start = start_at("start", 0);
    let a = ev(
        "usage-a",
        at(10),
        usage_kind(Some("u-1"), "stt_second", "30"),
    );
    let b = ev(
        "usage-b",
        at(11),
        usage_kind(Some("u-1"), "stt_second", "30.0"),
    );
    let first = CallState::fold([&start, &a, &b]);
    let second = CallState::fold([&start, &b, &a]);
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    let (x, y) = (
        first.record(CALL_ID, &prices()),
        second.record(CALL_ID, &prices()),
    );
    assert_eq!(json(&x), json(&y));
    // 30 * 0.0001, counted once.
    assert_eq!(
        x.total_cost.map(|c| c.to_string()).as_deref(),
        Some("0.0030")
    );
}

/// A quantity whose cost overflows any number (here the largest `Decimal` at a price of 2)
/// leaves that line unpriced and the record whole: no arithmetic on event data panics.
#[test]
fn an_absurd_quantity_leaves_its_line_unpriced_and_the_record_whole() {
    let prices = PriceBook::new([("llm_token".to_owned(), at(-10), dec("2"))]);
    let events = vec![
        start_at("start", 0),
        ev(
            "huge",
            at(3),
            usage_kind(Some("u-huge"), "llm_token", "79228162514264337593543950335"),
        ),
        ev(
            "small",
            at(4),
            usage_kind(Some("u-small"), "llm_token", "3"),
        ),
        ev("end", at(9), ended_kind(Some("normal_clearing"))),
    ];
    let (record, lines) = CallState::fold(&events).record_and_usage(CALL_ID, &prices);
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.total_cost, Some(dec("6")));
    let costs: Vec<(&str, Option<Decimal>)> =
        lines.iter().map(|l| (l.key.as_str(), l.cost)).collect();
    assert_eq!(costs, [("id:u-huge", None), ("id:u-small", Some(dec("6")))]);
}
