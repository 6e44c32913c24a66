//! Crash safety (DESIGN.md, guarantee 6): the real binary is killed with SIGKILL several times
//! while it consumes a storm of thousands of interleaved calls, some of them still open at every
//! kill, and every record must end exactly as the merge rules give for its call's events, with
//! every dialog turn and usage line projected (those are written after the commit, so a kill
//! can fall between the two).
//!
//! The storm mixes the wire formats as a current platform does (most events as today's
//! producers' protobuf, the rest as the older producers' JSON, the two within one call) and
//! gives every timestamp nanoseconds, so a call rebuilt from the log after a kill must fold
//! exactly as it did live in both formats.
//!
//! The storm is random but reproducible: the seed is printed, and `CRASH_SEED=<seed>` replays it.

use cdr_testkit as common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cdr_service::event::{self, Limits};
use cdr_service::merge::{CallEvent, CallRecord, CallState, PriceBook};
use cdr_service::project::ProjectionRows;
use cdr_service::row::CallRow;
use cdr_storm::protobuf;
use cdr_storm::simulate::SyntheticCall;
use cdr_storm::verify::{expected_row, load_rows};
use chrono::{DateTime, Utc};
use common::service::Service;
use common::*;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Calls in the storm.
const CALLS: usize = 3000;
/// How many calls are "in progress" at once in the storm: a call's events are spread over the
/// publishes of about this many neighbouring calls.
const WINDOW: f64 = 300.0;
/// Share of the storm's messages published a second time (redeliveries).
const DUPLICATES: f64 = 0.1;
/// Publishes in flight (each waits for its publisher confirm).
const IN_FLIGHT: usize = 64;
/// Generous bound for every wait; never a pass/fail timing threshold.
const PATIENCE: Duration = Duration::from_secs(120);

/// Share of the events published as today's producers publish them (protobuf), where a
/// current producer sends the event type; the rest as the older producers' JSON.
const PROTOBUF: f64 = 0.7;

/// One message to publish.
#[derive(Clone)]
struct Msg {
    routing_key: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
}

impl Msg {
    /// The event in JSON, or, with probability `PROTOBUF`, in its protobuf form when a current
    /// producer sends one.
    fn of(event: &Value, rng: &mut StdRng) -> Msg {
        let routing_key = event["eventType"].as_str().unwrap_or_default().to_owned();
        match protobuf::encode(event).filter(|_| rng.random_bool(PROTOBUF)) {
            Some(twin) => Msg {
                routing_key,
                body: twin.body,
                content_type: twin.content_type,
            },
            None => Msg {
                routing_key,
                body: event.to_string().into_bytes(),
                content_type: Some(protobuf::JSON_CONTENT_TYPE),
            },
        }
    }
}

/// One call of the storm: every distinct body published for it.
struct PlannedCall {
    call_id: String,
    bodies: Vec<Vec<u8>>,
    long: bool,
    /// Of `bodies`, how many are withheld until after the last restart.
    withheld: usize,
}

struct Plan {
    calls: Vec<PlannedCall>,
    /// Published while the service is killed and restarted.
    storm: Vec<Msg>,
    /// The long calls' ends and recordings, published after the last restart.
    withheld: Vec<Msg>,
}

/// Builds the calls and the order their messages are published in.
fn plan(rng: &mut StdRng) -> Plan {
    let t0: DateTime<Utc> = "2025-09-24T10:00:00Z".parse().unwrap();
    let mut calls = Vec::with_capacity(CALLS);
    // (sort key, message): a call's events get independent keys around the call's position,
    // so they come out in a random order within the call and interleaved with the neighbours.
    let mut storm: Vec<(f64, Msg)> = Vec::new();
    let mut withheld: Vec<Msg> = Vec::new();
    for i in 0..CALLS {
        // Nanosecond timestamps: a call rebuilt from the log must fold them exactly as live.
        let start = t0
            + chrono::Duration::seconds(2 * i as i64)
            + chrono::Duration::nanoseconds(rng.random_range(0..1_000_000_000));
        let mut c = SyntheticCall::new(format!("crash-{i:05}@198.51.100.7"), start);
        c.answer_after = Duration::from_millis(rng.random_range(500..20_000));
        c.talk = Duration::from_millis(rng.random_range(0..900_000));
        let variant = i % 20;
        // Variants: no call.answered (answered only through its recording), no recording, and
        // neither (a NO_ANSWER call); some calls identified twice (the later one wins, or on a
        // tie of timestamps the body hash decides); 10% long calls.
        let answered = variant != 3 && variant != 11;
        let recording = variant != 5 && variant != 11;
        let long = i % 10 == 7;

        let mut main = vec![c.started()];
        if answered {
            main.push(c.answered());
        }
        main.push(c.identified());
        if answered && i % 3 == 0 {
            main.extend(dialog_and_usage(&c, start, i % 6 == 0));
        }
        if i % 7 == 0 {
            let mut second = c.identified();
            second["userId"] = json!(uuid::Uuid::new_v4().to_string());
            second["contactId"] = json!(43);
            if i % 14 != 0 {
                let later = start
                    + chrono::Duration::from_std(c.answer_after).unwrap()
                    + chrono::Duration::seconds(2);
                second["timestamp"] = json!(event::format_timestamp(later));
            }
            main.push(second);
        }
        let mut tail = vec![c.ended()];
        if recording {
            tail.push(c.recording());
        }
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for e in &main {
            let msg = Msg::of(e, rng);
            bodies.push(msg.body.clone());
            storm.push((i as f64 + rng.random_range(0.0..WINDOW), msg));
        }
        for e in &tail {
            let msg = Msg::of(e, rng);
            bodies.push(msg.body.clone());
            if long {
                withheld.push(msg);
            } else {
                storm.push((i as f64 + rng.random_range(0.0..WINDOW), msg));
            }
        }
        calls.push(PlannedCall {
            call_id: c.call_id.clone(),
            bodies,
            long,
            withheld: if long { tail.len() } else { 0 },
        });
    }
    // Redeliveries: exact copies, some soon after the first copy, some long after the call
    // was written.
    let mut copies: Vec<(f64, Msg)> = Vec::new();
    for (key, msg) in &storm {
        if rng.random_bool(DUPLICATES) {
            copies.push((key + rng.random_range(0.0..2.0 * WINDOW), msg.clone()));
        }
    }
    storm.extend(copies);
    storm.sort_by(|a, b| a.0.total_cmp(&b.0));
    let extra: Vec<Msg> = withheld
        .iter()
        .filter(|_| rng.random_bool(2.0 * DUPLICATES))
        .cloned()
        .collect();
    withheld.extend(extra);
    rand::seq::SliceRandom::shuffle(withheld.as_mut_slice(), rng);
    Plan {
        calls,
        storm: storm.into_iter().map(|(_, m)| m).collect(),
        withheld,
    }
}

/// Two dialog turns (the first in two versions: the later one by timestamp wins) and a usage
/// report, in two versions when `versions` (the larger quantity wins).
fn dialog_and_usage(c: &SyntheticCall, start: DateTime<Utc>, versions: bool) -> Vec<Value> {
    let at = |secs: i64| {
        json!(event::format_timestamp(
            start + chrono::Duration::seconds(secs)
        ))
    };
    let turn = |index: u32, secs: i64, text: &str| {
        json!({"eventType": "dialog.turn.completed", "callId": c.call_id, "timestamp": at(secs),
               "turnIndex": index, "userText": "hello", "aiText": text})
    };
    let usage = |quantity: &str| {
        json!({"eventType": "cost.usage.reported", "callId": c.call_id, "timestamp": at(30),
               "usageId": "tokens-1", "resourceType": "LLM_TOKENS", "quantity": quantity})
    };
    let mut events = vec![
        turn(0, 21, "first answer"),
        turn(1, 25, "goodbye"),
        usage("120"),
    ];
    if versions {
        events.push(turn(0, 22, "first answer, revised"));
        events.push(usage("150"));
    }
    events
}

/// What the tables derived from the events hold: (call, turn index, body hash) of each dialog
/// turn and (call, usage key, quantity) of each usage line, sorted.
type Projections = (Vec<(String, i32, Vec<u8>)>, Vec<(String, String, String)>);

/// What those tables must hold: the dialog turns of every distinct event, and the usage lines
/// of every call's record.
fn expected_projections(calls: &[PlannedCall]) -> Projections {
    let events: Vec<(String, CallEvent)> = calls
        .iter()
        .flat_map(|call| call.bodies.iter())
        .map(|body| {
            let e = event::decode(body, Utc::now(), limits()).expect("a valid event");
            (e.call_id.clone(), CallEvent::from(e))
        })
        .collect();
    let rows = ProjectionRows::of(events.iter().map(|(c, e)| (c.as_str(), e)));
    let mut turns: Vec<(String, i32, Vec<u8>)> = rows
        .turns()
        .map(|t| (t.call_id.clone(), t.turn.turn_index, t.body_hash.to_vec()))
        .collect();
    let mut usage: Vec<(String, String, String)> = calls
        .iter()
        .flat_map(|call| {
            let (_, lines) = fold(call).record_and_usage(&call.call_id, &PriceBook::default());
            lines.into_iter().map(|l| {
                (
                    call.call_id.clone(),
                    l.key,
                    l.quantity.round_dp(5).normalize().to_string(),
                )
            })
        })
        .collect();
    turns.sort();
    usage.sort();
    (turns, usage)
}

async fn stored_projections(pool: &PgPool) -> Projections {
    let turns = sqlx::query_as(
        "SELECT call_id, turn_index, body_sha256 FROM call_dialog_events ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("read call_dialog_events");
    let usage = sqlx::query_as(
        "SELECT call_id, usage_key, trim_scale(quantity)::text FROM usage_records \
         ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("read usage_records");
    (turns, usage)
}

/// Publishes every message, each with its publisher confirm, `IN_FLIGHT` at a time.
async fn publish_all(producer: &Producer, msgs: &[Msg]) {
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for m in msgs {
        if in_flight.len() >= IN_FLIGHT {
            in_flight.next().await;
        }
        in_flight.push(producer.publish(&m.routing_key, &m.body, m.content_type));
    }
    while in_flight.next().await.is_some() {}
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_json_depth: 32,
    }
}

/// The call's record by the merge rules: the fold of its distinct events.
fn expected_record(call: &PlannedCall) -> CallRecord {
    fold(call).record(&call.call_id, &PriceBook::default())
}

/// The fold of the call's distinct events.
fn fold(call: &PlannedCall) -> CallState {
    let events: Vec<CallEvent> = call
        .bodies
        .iter()
        .map(|body| {
            let e = event::decode(body, Utc::now(), limits()).expect("a valid event");
            assert_eq!(e.call_id, call.call_id);
            CallEvent::from(e)
        })
        .collect();
    CallState::fold(&events)
}

fn body_hash(body: &[u8]) -> Vec<u8> {
    event::decode(body, Utc::now(), limits())
        .expect("a valid event")
        .body_hash
        .to_vec()
}

async fn stored_rows(pool: &PgPool, call_ids: &[&str]) -> Vec<CallRow> {
    load_rows(pool, call_ids).await.expect("read calls")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query")
}

async fn logged(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM call_events").await
}

/// Calls whose row does not (yet) fold all their distinct events: (call_id, have, want).
async fn incomplete(pool: &PgPool, want: &HashMap<String, usize>) -> Vec<(String, i32, usize)> {
    let have: HashMap<String, i32> = sqlx::query_as("SELECT call_id, event_count FROM calls")
        .fetch_all(pool)
        .await
        .expect("read event counts")
        .into_iter()
        .collect();
    let mut out: Vec<(String, i32, usize)> = want
        .iter()
        .filter(|(id, n)| have.get(*id).copied() != Some(i32::try_from(**n).unwrap()))
        .map(|(id, n)| (id.clone(), have.get(id).copied().unwrap_or(-1), *n))
        .collect();
    out.sort();
    out
}

/// Calls that recovery would not rebuild although their row lacks logged events: not in
/// `open_calls` (or quarantined) while the log holds more of their events than the row folds.
/// Checked while the service is dead, when the database is exactly what the next start sees.
async fn unrecoverable(pool: &PgPool) -> Vec<(String, i64, Option<i32>)> {
    sqlx::query_as(
        "SELECT e.call_id, e.n, c.event_count \
         FROM (SELECT call_id, count(*) AS n FROM call_events GROUP BY call_id) e \
         LEFT JOIN calls c ON c.call_id = e.call_id \
         WHERE (c.event_count IS NULL OR c.event_count < e.n) \
           AND (NOT EXISTS (SELECT 1 FROM open_calls o WHERE o.call_id = e.call_id) \
                OR EXISTS (SELECT 1 FROM quarantined_calls q WHERE q.call_id = e.call_id)) \
         ORDER BY e.call_id",
    )
    .fetch_all(pool)
    .await
    .expect("recovery check")
}

/// The running child: SIGKILLed if the test fails while holding it, so no service outlives a
/// failed run.
struct Running(Option<Service>);

impl Running {
    fn take(&mut self) -> Service {
        self.0.take().expect("a running service")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            service.kill9();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_storm_leaves_every_record_right() {
    let started = Instant::now();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (CRASH_SEED={seed} replays this storm)");
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = plan(&mut rng);
    let want: HashMap<String, usize> = plan
        .calls
        .iter()
        .map(|c| (c.call_id.clone(), c.bodies.len()))
        .collect();
    let distinct_total: usize = want.values().sum();
    let withheld_distinct: usize = plan.calls.iter().map(|c| c.withheld).sum();
    let storm_distinct = distinct_total - withheld_distinct;
    eprintln!(
        "storm: {} calls ({} long), {} distinct events, {} publishes in the storm, {} withheld publishes",
        CALLS,
        plan.calls.iter().filter(|c| c.long).count(),
        distinct_total,
        plan.storm.len(),
        plan.withheld.len()
    );

    let env = TestEnv::new().await;
    eprintln!("database {}, queue test.{}.queue", env.db_name, env.id);
    let mut settings = env.settings();
    // No open call may time out during the test: every record must come from its end.
    settings.tracker.idle_timeout = Duration::from_secs(600);
    // Long calls rest between their events, so kills also hit resting and waking calls.
    settings.tracker.rest_after = Duration::from_millis(300);
    let pool = env.pool().await;

    // The first start declares the queue; the storm waits in it whenever the service is down.
    let mut service = Running(Some(
        Service::start(service_binary!(), &env, &settings).await,
    ));
    let publisher = Producer::connect(&settings.amqp.exchange).await;
    let storm = plan.storm.clone();
    let storm_task = tokio::spawn(async move {
        publish_all(&publisher, &storm).await;
        eprintln!("storm fully published at {:?}", started.elapsed());
        publisher
    });

    // Kill while the storm is consumed: at five depths of the log (jittered by the seed), and
    // once right after a restart became ready (recovered calls lingering and being written,
    // ingest catching up on redeliveries).
    let mut kills = 0;
    let mut kill = async |service: Service, what: String| {
        service.kill9();
        kills += 1;
        eprintln!("kill {kills} at {:?}: SIGKILL {what}", started.elapsed());
        // Dead: what the database holds now is all the next start has to go on.
        let lost = unrecoverable(&pool).await;
        assert!(
            lost.is_empty(),
            "after kill {kills}, {} calls have logged events their row lacks but are not \
             listed for recovery (call, logged, row's count): {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    };
    for (round, share) in [0.1, 0.3, 0.5, 0.7, 0.9].into_iter().enumerate() {
        let at = (storm_distinct as f64 * (share + rng.random_range(-0.05..0.05))) as i64;
        let deadline = Instant::now() + PATIENCE;
        while logged(&pool).await < at {
            assert!(
                Instant::now() < deadline,
                "the log never reached {at} events (has {})",
                logged(&pool).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = format!(
            "with {} of {storm_distinct} storm events logged, {} open calls, {} rows",
            logged(&pool).await,
            count(&pool, "SELECT count(*) FROM open_calls").await,
            count(&pool, "SELECT count(*) FROM calls").await
        );
        kill(service.take(), state).await;
        service.0 = Some(Service::start(service_binary!(), &env, &settings).await);
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
            let state = format!(
                "just after a restart, with {} events logged, {} open calls",
                logged(&pool).await,
                count(&pool, "SELECT count(*) FROM open_calls").await,
            );
            kill(service.take(), state).await;
            service.0 = Some(Service::start(service_binary!(), &env, &settings).await);
        }
    }
    let publisher = storm_task.await.expect("storm publisher");

    // The long calls end after the last restart.
    publish_all(&publisher, &plan.withheld).await;

    // Wait for every call's row to fold all of its distinct events, and for the queue to empty.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing = incomplete(&pool, &want).await;
        if missing.is_empty() && queue_depth(&settings.amqp.queue).await == 0 {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "after {PATIENCE:?}, {} calls lack events in their rows (call, row's count or -1, \
                 distinct events): {:?}; log has {} of {distinct_total} events, {} open calls, \
                 queue depth {}",
                missing.len(),
                &missing[..missing.len().min(20)],
                logged(&pool).await,
                count(&pool, "SELECT count(*) FROM open_calls").await,
                queue_depth(&settings.amqp.queue).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("all records complete after {:?}", started.elapsed());

    // Every row is what the merge rules give for the call's distinct events.
    let ids: Vec<&str> = plan.calls.iter().map(|c| c.call_id.as_str()).collect();
    let rows: HashMap<String, CallRow> = stored_rows(&pool, &ids)
        .await
        .into_iter()
        .map(|r| (r.call_id.clone(), r))
        .collect();
    let mut wrong = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for call in &plan.calls {
        let expected = expected_row(&expected_record(call), call.bodies.len());
        let answer = if expected.answer_time.is_some() {
            ""
        } else {
            ", no answer time"
        };
        *kinds
            .entry(format!(
                "{:?}/{:?}{answer}",
                expected.status, expected.disposition
            ))
            .or_default() += 1;
        match rows.get(&call.call_id) {
            Some(row) if *row == expected => {}
            other => wrong.push(format!("expected {expected:?}\n     found {other:?}")),
        }
    }
    eprintln!("expected records: {kinds:?}");
    assert!(
        wrong.is_empty(),
        "{} of {CALLS} records differ from the fold of their events; first ones:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM calls").await,
        CALLS as i64,
        "one row per call, no other rows"
    );

    // Both formats went through the kills, and each row keeps the format it came in.
    for encoding in ["json", "protobuf"] {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM call_events WHERE body_encoding = $1")
                .bind(encoding)
                .fetch_one(&pool)
                .await
                .expect("count by encoding");
        assert!(n > 0, "no {encoding} event in the storm");
    }

    // The log holds exactly the distinct events: none missing, none twice.
    let logged_events: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT call_id, body_sha256 FROM call_events")
            .fetch_all(&pool)
            .await
            .expect("read call_events");
    assert_eq!(
        logged_events.len(),
        distinct_total,
        "one log row per distinct event"
    );
    let mut by_call: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (call_id, hash) in logged_events {
        by_call.entry(call_id).or_default().push(hash);
    }
    assert_eq!(
        by_call.len(),
        CALLS,
        "events logged for every call and no other"
    );
    for call in &plan.calls {
        let mut want_hashes: Vec<Vec<u8>> = call.bodies.iter().map(|b| body_hash(b)).collect();
        want_hashes.sort();
        let mut have = by_call.remove(&call.call_id).unwrap_or_default();
        have.sort();
        assert_eq!(have, want_hashes, "logged events of {}", call.call_id);
    }

    // Every dialog turn and usage line projected, each the winning version, and nothing else.
    let (want_turns, want_usage) = expected_projections(&plan.calls);
    assert!(!want_turns.is_empty() && !want_usage.is_empty());
    let (turns, usage) = stored_projections(&pool).await;
    assert_eq!(turns.len(), want_turns.len(), "one row per call and turn");
    assert!(turns == want_turns, "dialog turns differ from the log's");
    assert_eq!(usage, want_usage, "usage lines");

    // Nothing left to recover, nothing held back, nothing rejected, nothing waiting.
    assert_eq!(count(&pool, "SELECT count(*) FROM open_calls").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM quarantined_calls").await,
        0
    );
    assert_eq!(queue_depth(&settings.amqp.queue).await, 0);
    assert_eq!(queue_depth(&settings.amqp.dead_letter_queue).await, 0);

    let (code, _) = service.take().terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    // Stopped: anything delivered but not acked would be back in the queue now.
    assert_eq!(queue_depth(&settings.amqp.queue).await, 0);
    eprintln!(
        "crash test done: {CALLS} calls, {distinct_total} distinct events, {} publishes, {kills} kills, {:?}",
        plan.storm.len() + plan.withheld.len(),
        started.elapsed()
    );
    pool.close().await;
    env.cleanup(&settings).await;
}
