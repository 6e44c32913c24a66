//! CPU cost per event of the service's pure hot path: decoding a message and folding it into
//! its call's state. `cargo bench --bench fold`.

use std::hint::black_box;

use cdr_service::event::{Limits, decode};
use cdr_service::merge::{CallEvent, CallState, PriceBook};
use cdr_storm::simulate::SyntheticCall;
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LIMITS: Limits = Limits {
    max_body_bytes: 1024 * 1024,
    max_json_depth: 32,
};

fn bodies() -> Vec<Vec<u8>> {
    let call = SyntheticCall::new("bench@198.51.100.7", Utc::now());
    call.events(true)
        .into_iter()
        .map(|e| e.to_string().into_bytes())
        .collect()
}

fn decode_events(c: &mut Criterion) {
    let bodies = bodies();
    let now = Utc::now();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("one call (5 events)", |b| {
        b.iter(|| {
            for body in &bodies {
                black_box(decode(black_box(body), now, LIMITS).unwrap());
            }
        })
    });
    group.finish();
}

fn fold_and_record(c: &mut Criterion) {
    let now = Utc::now();
    let events: Vec<CallEvent> = bodies()
        .iter()
        .map(|b| {
            let e = decode(b, now, LIMITS).unwrap();
            CallEvent::from(e)
        })
        .collect();
    let prices = PriceBook::default();
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("one call (5 events) + record", |b| {
        b.iter(|| {
            let state = CallState::fold(black_box(&events));
            black_box(state.record("bench@198.51.100.7", &prices))
        })
    });
    group.finish();
}

criterion_group!(benches, decode_events, fold_and_record);
criterion_main!(benches);
