//! CPU cost per event of the service's pure hot path, for each wire format: decoding a
//! message and folding it into its call's state. `cargo bench --bench fold`.
//!
//! The same call is measured in both formats: its five events as the older producers publish
//! them (JSON) and as today's do (protobuf: the typed messages, `call.answered` as a
//! `GenericEvent`), so the two figures of each group compare directly.

use std::hint::black_box;

use cdr_service::event::{Limits, decode};
use cdr_service::merge::{CallEvent, CallState, PriceBook};
use cdr_storm::protobuf;
use cdr_storm::simulate::SyntheticCall;
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LIMITS: Limits = Limits {
    max_body_bytes: 1024 * 1024,
    max_json_depth: 32,
};

const CALL_ID: &str = "bench@198.51.100.7";

/// The call's bodies in each format: (format name, bodies).
fn bodies() -> [(&'static str, Vec<Vec<u8>>); 2] {
    let call = SyntheticCall::new(CALL_ID, Utc::now());
    let events = call.events(true);
    let json = events.iter().map(|e| e.to_string().into_bytes()).collect();
    let protobuf = events
        .iter()
        .map(|e| {
            protobuf::encode(e)
                .expect("every event of the call has a protobuf producer")
                .body
        })
        .collect();
    [("json", json), ("protobuf", protobuf)]
}

fn decode_events(c: &mut Criterion) {
    let now = Utc::now();
    let mut group = c.benchmark_group("decode");
    for (format, bodies) in bodies() {
        group.throughput(Throughput::Elements(bodies.len() as u64));
        group.bench_function(format!("{format}: one call (5 events)"), |b| {
            b.iter(|| {
                for body in &bodies {
                    black_box(decode(black_box(body), now, LIMITS).unwrap());
                }
            })
        });
    }
    group.finish();
}

fn fold_and_record(c: &mut Criterion) {
    let now = Utc::now();
    let prices = PriceBook::default();
    let mut group = c.benchmark_group("fold");
    let mut records = Vec::new();
    for (format, bodies) in bodies() {
        let events: Vec<CallEvent> = bodies
            .iter()
            .map(|b| CallEvent::from(decode(b, now, LIMITS).unwrap()))
            .collect();
        records.push(CallState::fold(&events).record(CALL_ID, &prices));
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(format!("{format}: one call (5 events) + record"), |b| {
            b.iter(|| {
                let state = CallState::fold(black_box(&events));
                black_box(state.record(CALL_ID, &prices))
            })
        });
    }
    assert_eq!(records[0], records[1], "both formats make the same record");
    group.finish();
}

criterion_group!(benches, decode_events, fold_and_record);
criterion_main!(benches);
