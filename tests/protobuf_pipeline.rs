//! Today's protobuf producers end to end, through the real broker and database and the
//! in-process service: whole calls as the producers send them (content type as each sets it:
//! none from signaling and media, `application/protobuf` from the agent service), in any order,
//! duplicated, mixed with JSON within a call; platform events that are not about a call
//! acknowledged and counted; broken protobuf dead-lettered; the log keeping the exact bytes;
//! and a call rebuilt from the log after a restart giving the row it had live.

use cdr_testkit as common;

use std::collections::{BTreeSet, HashMap};

use cdr_core::proto;
use cdr_service::event::{self, Format, Limits};
use cdr_service::merge::{CallEvent, CallState};
use cdr_service::row::CallRow;
use cdr_storm::simulate::SyntheticCall;
use cdr_storm::verify::expected_row;
use chrono::{DateTime, Utc};
use common::metrics::samples;
use common::*;
use prost::Message;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The B2BUA/signaling and media services set no content type.
const SIGNALING: Option<&str> = None;
const MEDIA: Option<&str> = None;
/// The agent service announces its protobuf.
const AGENT: Option<&str> = Some("application/protobuf");
const JSON: Option<&str> = Some("application/json");

const LIMITS: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_json_depth: 32,
};

/// One message as a producer publishes it.
#[derive(Clone, Debug)]
struct Msg {
    routing_key: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    format: Format,
}

impl Msg {
    fn protobuf(event_type: &str, m: &impl Message, content_type: Option<&'static str>) -> Msg {
        Msg {
            routing_key: event_type.to_owned(),
            body: m.encode_to_vec(),
            content_type,
            format: Format::Protobuf,
        }
    }

    fn json(v: &Value, content_type: Option<&'static str>) -> Msg {
        Msg::json_text(&v.to_string(), content_type)
    }

    /// JSON exactly as written (numbers like `1e0` stay as they are).
    fn json_text(text: &str, content_type: Option<&'static str>) -> Msg {
        let v: Value = serde_json::from_str(text).expect("a JSON fixture");
        Msg {
            routing_key: v["eventType"].as_str().unwrap_or_default().to_owned(),
            body: text.as_bytes().to_vec(),
            content_type,
            format: Format::Json,
        }
    }
}

async fn publish(producer: &Producer, msgs: &[Msg]) {
    for m in msgs {
        producer
            .publish(&m.routing_key, &m.body, m.content_type)
            .await;
    }
}

async fn producer(app: &TestApp) -> Producer {
    Producer::connect(&app.settings.amqp.exchange).await
}

fn at(c: &SyntheticCall, secs: u64) -> DateTime<Utc> {
    c.start + chrono::Duration::seconds(secs as i64)
}

fn ts(t: DateTime<Utc>) -> Option<proto::Timestamp> {
    Some(proto::Timestamp::from(t))
}

// ---------------------------------------------------------------------------------------------
// A `SyntheticCall` as today's producers send it: the same call its JSON events describe
// (see `assert_full_record`), in protobuf.
// ---------------------------------------------------------------------------------------------

fn started(c: &SyntheticCall, timestamp: Option<proto::Timestamp>) -> Msg {
    let m = proto::CallStartedEvent {
        event_type: "call.started".into(),
        trace_id: c.trace_id.clone(),
        call_id: c.call_id.clone(),
        from_uri: "\"<sip:905551234567@203.0.113.5>;tag=abc\"".into(),
        to_uri: "<sip:902124440000@198.51.100.7>".into(),
        timestamp,
        dialplan_resolution: Some(proto::ResolveDialplanResponse {
            dialplan_id: "DP_DEMO".into(),
            tenant_id: c.tenant_id.clone(),
            action: Some(proto::DialplanAction {
                action: "START_AI_CONVERSATION".into(),
                ..Default::default()
            }),
            matched_user: None,
            matched_contact: None,
            inbound_route: Some(proto::InboundRoute {
                phone_number: "902124440000".into(),
                tenant_id: c.tenant_id.clone(),
                ..Default::default()
            }),
        }),
        media_info: Some(proto::MediaInfo {
            caller_rtp_addr: "203.0.113.5:40000".into(),
            server_rtp_port: 10044,
        }),
    };
    Msg::protobuf("call.started", &m, SIGNALING)
}

/// `call.answered`: a `GenericEvent`, trace id = call id, tenant `system`.
fn answered(c: &SyntheticCall) -> Msg {
    let m = proto::GenericEvent {
        event_type: "call.answered".into(),
        trace_id: c.call_id.clone(),
        timestamp: ts(at(c, 3)),
        tenant_id: "system".into(),
        payload_json: json!({"callId": c.call_id}).to_string(),
    };
    Msg::protobuf("call.answered", &m, SIGNALING)
}

/// The agent's identification, its user's tenant as given (`system` when it does not know).
fn identified(c: &SyntheticCall, tenant: &str) -> Msg {
    let m = proto::UserIdentifiedForCallEvent {
        event_type: "user.identified.for_call".into(),
        trace_id: c.trace_id.clone(),
        call_id: c.call_id.clone(),
        timestamp: ts(at(c, 4)),
        user: Some(proto::User {
            id: c.user_id.clone(),
            tenant_id: tenant.into(),
            ..Default::default()
        }),
        contact: Some(proto::Contact {
            id: 42,
            user_id: c.user_id.clone(),
            contact_type: "PHONE".into(),
            contact_value: "905551234567".into(),
            is_primary: true,
        }),
    };
    Msg::protobuf("user.identified.for_call", &m, AGENT)
}

fn ended(c: &SyntheticCall) -> Msg {
    let m = proto::CallEndedEvent {
        event_type: "call.ended".into(),
        trace_id: c.trace_id.clone(),
        call_id: c.call_id.clone(),
        timestamp: ts(at(c, 45)),
        reason: "normal_clearing".into(),
    };
    Msg::protobuf("call.ended", &m, SIGNALING)
}

fn recording(c: &SyntheticCall) -> Msg {
    let m = proto::CallRecordingAvailableEvent {
        event_type: "call.recording.available".into(),
        trace_id: c.trace_id.clone(),
        call_id: c.call_id.clone(),
        timestamp: ts(at(c, 50)),
        recording_uri: format!("s3://recordings/{}/{}.wav", c.tenant_id, c.call_id),
        public_url: format!("https://media.example.com/{}.wav", c.call_id),
    };
    Msg::protobuf("call.recording.available", &m, MEDIA)
}

/// The agent asks for the hang-up: a `GenericEvent` without timestamp.
fn terminate(c: &SyntheticCall) -> Msg {
    let m = proto::GenericEvent {
        event_type: "call.terminate.request".into(),
        trace_id: c.trace_id.clone(),
        timestamp: None,
        tenant_id: c.tenant_id.clone(),
        payload_json: json!({"callId": c.call_id, "reason": "PIPELINE_ERROR"}).to_string(),
    };
    Msg::protobuf("call.terminate.request", &m, AGENT)
}

/// An announcement finished playing: its `uri` is a prompt, not a recording.
fn playback(c: &SyntheticCall, secs: u64) -> Msg {
    let m = proto::GenericEvent {
        event_type: "call.media.playback.finished".into(),
        trace_id: c.call_id.clone(),
        timestamp: ts(at(c, secs)),
        tenant_id: c.tenant_id.clone(),
        payload_json: json!({"callId": c.call_id, "uri": "file:///audio/tr/welcome.wav"})
            .to_string(),
    };
    Msg::protobuf("call.media.playback.finished", &m, MEDIA)
}

/// The whole call from today's producers, in the order it happened: what
/// `assert_full_record` expects, and two more events that change nothing of it.
fn protobuf_call(c: &SyntheticCall) -> Vec<Msg> {
    vec![
        started(c, ts(c.start)),
        playback(c, 1),
        answered(c),
        identified(c, &c.tenant_id),
        terminate(c),
        ended(c),
        recording(c),
    ]
}

// ---------------------------------------------------------------------------------------------
// What the log holds
// ---------------------------------------------------------------------------------------------

#[derive(Debug, sqlx::FromRow)]
struct Logged {
    event_type: String,
    body: Vec<u8>,
    body_encoding: Option<String>,
    payload: Value,
    received_at: DateTime<Utc>,
    timestamp_inferred: bool,
}

async fn logged(pool: &PgPool, call_id: &str) -> Vec<Logged> {
    sqlx::query_as(
        "SELECT event_type, body, body_encoding, payload, received_at, timestamp_inferred \
         FROM call_events WHERE call_id = $1 ORDER BY event_id",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await
    .expect("read call_events")
}

/// The log holds each distinct message once, its exact bytes, its wire format, and as
/// `payload` the JSON body itself or the camelCase rendering of a protobuf one.
async fn assert_logged_exactly(pool: &PgPool, call_id: &str, published: &[Msg]) {
    let rows = logged(pool, call_id).await;
    let distinct: HashMap<&[u8], &Msg> = published.iter().map(|m| (m.body.as_slice(), m)).collect();
    assert_eq!(
        rows.len(),
        distinct.len(),
        "{call_id}: one row per distinct message"
    );
    let bodies: BTreeSet<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(
        bodies,
        distinct.keys().copied().collect::<BTreeSet<_>>(),
        "{call_id}: the bytes as published"
    );
    for r in &rows {
        let m = distinct[r.body.as_slice()];
        assert_eq!(
            r.body_encoding.as_deref(),
            Some(m.format.as_str()),
            "{call_id}: {}",
            r.event_type
        );
        let envelope = event::decode(&m.body, Utc::now(), LIMITS).expect("a call event");
        let rendering: Value = serde_json::from_str(envelope.payload_json()).unwrap();
        assert_eq!(r.payload, rendering, "{call_id}: {} payload", r.event_type);
        if m.format == Format::Protobuf {
            assert!(
                r.payload.get("eventType").is_some() && r.payload.get("callId").is_some(),
                "camelCase keys: {}",
                r.payload
            );
        }
    }
}

/// The value of metric `name` in the series that carries every one of `labels`.
fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Whole calls
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_calls_become_complete_records_in_order_reversed_and_duplicated() {
    let app = TestApp::spawn().await;
    let producer = producer(&app).await;
    let in_order = call("pb-in-order");
    let reversed = call("pb-reversed");
    let duplicated = call("pb-duplicated");

    publish(&producer, &protobuf_call(&in_order)).await;
    let mut msgs = protobuf_call(&reversed);
    msgs.reverse();
    publish(&producer, &msgs).await;
    // Every message three times, the copies interleaved, as redeliveries and a producer's
    // retries would.
    let msgs = protobuf_call(&duplicated);
    for round in 0..3 {
        for (i, m) in msgs.iter().enumerate() {
            if (i + round) % 2 == 0 {
                publish(&producer, std::slice::from_ref(m)).await;
            }
        }
        for (i, m) in msgs.iter().enumerate().rev() {
            if (i + round) % 2 == 1 {
                publish(&producer, std::slice::from_ref(m)).await;
            }
        }
    }

    for c in [&in_order, &reversed, &duplicated] {
        let r = wait_for_row(&app.pool, &c.call_id, 7).await;
        assert_full_record(&r, c);
        assert_eq!(r.event_count, 7, "{}", c.call_id);
        // The agent asked for the hang-up and the reason does not say who hung up.
        assert_eq!(r.hangup_source.as_deref(), Some("CALLEE"), "{}", c.call_id);
        assert_eq!(r.direction, "INBOUND", "{}", c.call_id);
        assert_logged_exactly(&app.pool, &c.call_id, &protobuf_call(c)).await;
    }
    app.finish().await;
}

/// Older producers' JSON and today's protobuf within one call; the tenant `system` (the
/// answer's `GenericEvent`, an identification that does not know the tenant) beside the real
/// one of the dialplan: the record keeps the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_mixed_within_a_call_make_one_record() {
    let app = TestApp::spawn().await;
    let producer = producer(&app).await;
    let c = call("mixed");
    let late_identification = {
        let m = proto::UserIdentifiedForCallEvent {
            event_type: "user.created.for_call".into(),
            trace_id: c.call_id.clone(),
            call_id: c.call_id.clone(),
            timestamp: ts(at(&c, 30)),
            user: Some(proto::User {
                id: c.user_id.clone(),
                tenant_id: "system".into(),
                ..Default::default()
            }),
            contact: None,
        };
        Msg::protobuf("user.created.for_call", &m, AGENT)
    };
    let msgs = vec![
        Msg::json(&c.recording(), JSON),
        answered(&c),
        Msg::json(&c.started(), JSON),
        identified(&c, "system"),
        late_identification,
        Msg::json(&c.ended(), None),
        playback(&c, 2),
    ];
    publish(&producer, &msgs).await;
    let r = wait_for_row(&app.pool, &c.call_id, 7).await;
    assert_full_record(&r, &c);
    assert_eq!(r.tenant_id.as_deref(), Some(c.tenant_id.as_str()));
    assert_logged_exactly(&app.pool, &c.call_id, &msgs).await;
    let encodings: Vec<(String, Option<String>)> = logged(&app.pool, &c.call_id)
        .await
        .into_iter()
        .map(|l| (l.event_type, l.body_encoding))
        .collect();
    assert_eq!(
        encodings
            .iter()
            .filter(|(_, e)| e.as_deref() == Some("json"))
            .count(),
        3,
        "{encodings:?}"
    );
    app.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Platform events and broken protobuf
// ---------------------------------------------------------------------------------------------

/// A message of its own without a call id (`CognitiveMapUpdatedEvent`): field 1, then fields
/// the service does not know.
fn cognitive_map_updated() -> Vec<u8> {
    let mut body = proto::Header {
        event_type: "cognitive.map.updated".into(),
    }
    .encode_to_vec();
    body.extend_from_slice(&[0x12, 0x08]);
    body.extend_from_slice(b"map-7f3a");
    body.extend_from_slice(&[0x18, 0x0c]);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_are_acked_and_counted_never_dead_lettered_or_logged() {
    let app = TestApp::spawn().await;
    let producer = producer(&app).await;
    let user_created = proto::GenericEvent {
        event_type: "user.created".into(),
        trace_id: "trace-Us3rCr34t3d0".into(),
        timestamp: ts(t0()),
        tenant_id: "sentiric_demo".into(),
        payload_json: json!({"userId": "3f2c9a4e-8b1d-4e6f-9a2b-7c5d1e0f4a36"}).to_string(),
    };
    let dialplan_updated = proto::GenericEvent {
        event_type: "dialplan.updated".into(),
        timestamp: ts(t0()),
        tenant_id: "sentiric_demo".into(),
        payload_json: json!({"dialplanId": "DP_DEMO"}).to_string(),
        ..Default::default()
    };
    let platform = vec![
        Msg::protobuf("user.created", &user_created, AGENT),
        Msg::protobuf("dialplan.updated", &dialplan_updated, SIGNALING),
        Msg {
            routing_key: "cognitive.map.updated".into(),
            body: cognitive_map_updated(),
            content_type: AGENT,
            format: Format::Protobuf,
        },
        Msg::json(
            &json!({"eventType": "user.created", "userId": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"}),
            JSON,
        ),
        Msg::protobuf("user.created", &user_created, None),
    ];
    publish(&producer, &platform).await;
    // A call after them: once its row is there, the platform events before it were consumed.
    let c = call("after-platform-events");
    publish(&producer, &protobuf_call(&c)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 7).await;
    assert_full_record(&r, &c);

    let text = app.scrape().await;
    let platform_events = "cdr_platform_events_total";
    for (event_type, format, n) in [
        ("user.created", "protobuf", 2.0),
        ("dialplan.updated", "protobuf", 1.0),
        ("cognitive.map.updated", "protobuf", 1.0),
        ("user.created", "json", 1.0),
    ] {
        assert_eq!(
            labelled(
                &text,
                platform_events,
                &[("event_type", event_type), ("format", format)]
            ),
            n,
            "{event_type} {format}:\n{}",
            text.lines()
                .filter(|l| l.starts_with(platform_events))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Counted by kind and format (the recorder is the process's: other tests add to it).
    assert!(
        labelled(
            &text,
            "cdr_events_received_total",
            &[("event_type", "call.answered"), ("format", "protobuf")]
        ) >= 1.0
    );
    assert!(
        drain_queue(&app.settings.amqp.dead_letter_queue)
            .await
            .is_empty(),
        "nothing dead-lettered"
    );
    let (events, calls): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM call_events), (SELECT count(*) FROM calls)")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (events, calls),
        (7, 1),
        "only the call is logged and recorded"
    );

    // Everything was acknowledged: after a stop nothing comes back to the queue.
    let (env, settings) = app.stop().await;
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        0,
        "the queue is drained"
    );
    env.cleanup(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_protobuf_is_dead_lettered_with_its_reason_and_nothing_stops() {
    let app = TestApp::spawn().await;
    let producer = producer(&app).await;
    let c = call("pb-after-garbage");
    let header = |event_type: &str| {
        proto::Header {
            event_type: event_type.into(),
        }
        .encode_to_vec()
    };
    let truncated = {
        let mut b = started(&c, ts(c.start)).body;
        b.truncate(b.len() - 3);
        b
    };
    let wrong_wire_type = [
        header("call.ended"),
        vec![0x1a, 0x02, b'x', b'y'],
        vec![0x20, 0x01],
    ]
    .concat();
    let invalid_utf8 = [
        header("call.ended"),
        vec![0x1a, 0x03, b'c', b'@', b'h'],
        vec![0x2a, 0x02, 0xff, 0xfe],
    ]
    .concat();
    let payload_not_json = proto::GenericEvent {
        event_type: "call.terminate.request".into(),
        trace_id: c.call_id.clone(),
        payload_json: "reason=PIPELINE_ERROR".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let nanos_out_of_range = proto::CallEndedEvent {
        event_type: "call.ended".into(),
        call_id: c.call_id.clone(),
        timestamp: Some(proto::Timestamp {
            seconds: c.start.timestamp(),
            nanos: 2_000_000_000,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let no_call_id = proto::CallEndedEvent {
        event_type: "call.ended".into(),
        trace_id: "trace-NoCallId0000".into(),
        timestamp: ts(c.start),
        ..Default::default()
    }
    .encode_to_vec();
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (truncated, SIGNALING, "bad_protobuf"),
        (wrong_wire_type, SIGNALING, "bad_protobuf"),
        (invalid_utf8, MEDIA, "bad_protobuf"),
        (payload_not_json, AGENT, "bad_protobuf"),
        // Neither JSON nor protobuf by its first byte: the agent's content type settles it.
        (b"PIPELINE_ERROR".to_vec(), AGENT, "bad_protobuf"),
        (nanos_out_of_range, SIGNALING, "bad_timestamp"),
        (no_call_id, SIGNALING, "missing_call_id"),
    ];
    for (body, content_type, _) in &cases {
        producer.publish("call.ended", body, *content_type).await;
    }
    publish(&producer, &protobuf_call(&c)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 7).await;
    assert_full_record(&r, &c);

    let dead = wait_for_dead_letters(&app.settings.amqp.dead_letter_queue, cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    for ((body, _, reason), (dl_body, dl_reason)) in cases.iter().zip(&dead) {
        assert_eq!(dl_reason.as_deref(), Some(*reason), "{body:?}");
        assert_eq!(dl_body, body, "the dead letter carries the original bytes");
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, 7, "only the good call's events are logged");
    app.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Live equals rebuilt
// ---------------------------------------------------------------------------------------------

/// A start with nanoseconds: JSON timestamps with nine fraction digits, protobuf nanos.
fn nano_start() -> DateTime<Utc> {
    "2025-09-24T10:01:02.123456789Z".parse().unwrap()
}

/// A usage report as JSON, its quantity written `1e0`, with a nine-digit timestamp.
fn usage_json(c: &SyntheticCall) -> Msg {
    Msg::json_text(
        &format!(
            r#"{{"eventType":"cost.usage.reported","callId":"{}","traceId":"{}","timestamp":"{}","service":"stt-whisper-service","resourceType":"stt_second","quantity":1e0,"usageId":"stt-1","score":2.50e1}}"#,
            c.call_id,
            c.trace_id,
            event::format_timestamp(at(c, 20)),
        ),
        None,
    )
}

/// The same report from a protobuf producer: a `GenericEvent`, `1e0` in its payload.
fn usage_protobuf(c: &SyntheticCall) -> Msg {
    let m = proto::GenericEvent {
        event_type: "cost.usage.reported".into(),
        trace_id: c.call_id.clone(),
        timestamp: ts(at(c, 20)),
        tenant_id: c.tenant_id.clone(),
        payload_json: format!(
            r#"{{"callId":"{}","service":"stt-whisper-service","resourceType":"stt_second","quantity":1e0,"usageId":"stt-1"}}"#,
            c.call_id
        ),
    };
    Msg::protobuf("cost.usage.reported", &m, AGENT)
}

/// A terminate request as an older JSON producer sent it: no timestamp.
fn terminate_json(c: &SyntheticCall) -> Msg {
    Msg::json(
        &json!({"eventType": "call.terminate.request", "callId": c.call_id}),
        JSON,
    )
}

/// Three calls: all JSON (nine-digit timestamps, `1e0`), all protobuf (a `call.started`
/// without timestamp, so that its receive time is the start), and a mix.
fn rebuild_calls() -> Vec<(SyntheticCall, Vec<Msg>)> {
    let j = SyntheticCall::new("rebuilt-json@198.51.100.7", nano_start());
    let p = SyntheticCall::new("rebuilt-protobuf@198.51.100.7", nano_start());
    let m = SyntheticCall::new("rebuilt-mixed@198.51.100.7", nano_start());
    let json_msgs = vec![
        Msg::json(&j.started(), JSON),
        Msg::json(&j.answered(), JSON),
        Msg::json(&j.identified(), None),
        usage_json(&j),
        terminate_json(&j),
        Msg::json(&j.ended(), JSON),
        Msg::json(&j.recording(), None),
    ];
    let protobuf_msgs = vec![
        started(&p, None),
        answered(&p),
        identified(&p, &p.tenant_id),
        usage_protobuf(&p),
        terminate(&p),
        ended(&p),
        recording(&p),
    ];
    let mixed_msgs = vec![
        Msg::json(&m.started(), None),
        answered(&m),
        Msg::json(&m.identified(), JSON),
        usage_json(&m),
        terminate(&m),
        ended(&m),
        Msg::json(&m.recording(), JSON),
    ];
    vec![(j, json_msgs), (p, protobuf_msgs), (m, mixed_msgs)]
}

/// The row the merge rules give for the call's logged events: each body decoded as the log
/// holds it, with its logged receive time, priced with the database's prices.
async fn folded_from_the_log(pool: &PgPool, call_id: &str) -> CallRow {
    let rows = logged(pool, call_id).await;
    let events: Vec<CallEvent> = rows
        .iter()
        .map(|r| {
            CallEvent::from(
                event::decode(&r.body, r.received_at, LIMITS).expect("a logged event decodes"),
            )
        })
        .collect();
    let prices = cdr_service::prices::load(pool).await.expect("prices");
    let record = CallState::fold(&events).record(call_id, &prices);
    expected_row(&record, rows.len())
}

async fn rows_of(pool: &PgPool, calls: &[(SyntheticCall, Vec<Msg>)], events: i32) -> Vec<CallRow> {
    let mut rows = Vec::new();
    for (c, _) in calls {
        rows.push(wait_for_row(pool, &c.call_id, events).await);
    }
    rows
}

fn assert_same_rows(found: &[CallRow], expected: &[CallRow], what: &str) {
    for (f, e) in found.iter().zip(expected) {
        assert!(
            e.diff(f).is_empty(),
            "{what}, {}: {:#?}",
            e.call_id,
            e.diff(f)
        );
    }
}

/// A call's row rebuilt from the log after a restart is the row it had live, whatever the
/// format of its events: the log's bytes are decoded again, so a nine-digit fraction, a `1e0`
/// and a receive time standing in for a missing timestamp come back as they were. Rebuilt
/// twice: a written call that a late event re-activates after a restart, and an open call
/// that recovery rebuilds on start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_rebuilt_from_the_log_after_a_restart_has_its_live_row() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    {
        let pool = env.pool().await;
        cdr_service::db::migrate(&pool).await.expect("migrate");
        sqlx::query(
            "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) VALUES \
               ('tel-2025', 'telephony_minute', 0.0125, 'USD', '2025-01-01'), \
               ('stt-2025', 'stt_second', 0.0004, 'USD', '2025-01-01')",
        )
        .execute(&pool)
        .await
        .expect("insert prices");
        pool.close().await;
    }
    let app = TestApp::start(env, settings).await;
    let calls = rebuild_calls();
    let producer = producer(&app).await;
    for (_, msgs) in &calls {
        publish(&producer, msgs).await;
    }
    let live = rows_of(&app.pool, &calls, 7).await;
    for ((c, msgs), row) in calls.iter().zip(&live) {
        assert_logged_exactly_bytes(&app.pool, &c.call_id, msgs).await;
        assert!(row.total_cost.is_some(), "{}: priced", c.call_id);
        assert_eq!(row.status.as_deref(), Some("COMPLETED"));
    }
    assert_eq!(
        live[1].inferred_times.as_deref(),
        Some("start"),
        "the protobuf call.started had no timestamp"
    );
    let inferred: Vec<String> = logged(&app.pool, &calls[1].0.call_id)
        .await
        .into_iter()
        .filter(|l| l.timestamp_inferred)
        .map(|l| l.event_type)
        .collect();
    assert_eq!(inferred, ["call.started", "call.terminate.request"]);
    let mut expected = Vec::new();
    for (c, _) in &calls {
        expected.push(folded_from_the_log(&app.pool, &c.call_id).await);
    }
    assert_same_rows(
        &live,
        &expected,
        "live row against the fold of the logged bodies",
    );

    // A restart, then a late event per call (an announcement that changes nothing of the
    // record): the written call is re-activated and rebuilt from the log.
    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    let producer = Producer::connect(&app.settings.amqp.exchange).await;
    for (c, _) in &calls {
        publish(&producer, &[playback(c, 10)]).await;
    }
    let reactivated = rows_of(&app.pool, &calls, 8).await;
    let mut live_plus_one = live.clone();
    for row in &mut live_plus_one {
        row.event_count += 1;
    }
    assert_same_rows(&reactivated, &live_plus_one, "re-activated after a restart");

    // As if the service had stopped after logging the events and before writing the rows:
    // the calls are open, without a row, and recovery rebuilds them on start.
    let (env, settings) = app.stop().await;
    {
        let pool = env.pool().await;
        sqlx::query("DELETE FROM calls")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO open_calls (call_id, last_event_id) \
             SELECT call_id, max(event_id) FROM call_events GROUP BY call_id \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let app = TestApp::start(env, settings).await;
    let recovered = rows_of(&app.pool, &calls, 8).await;
    assert_same_rows(&recovered, &live_plus_one, "recovered on start");
    app.finish().await;
}

/// Each published message is logged once, byte for byte, with its format.
async fn assert_logged_exactly_bytes(pool: &PgPool, call_id: &str, published: &[Msg]) {
    let rows = logged(pool, call_id).await;
    let mut found: Vec<(Vec<u8>, Option<String>)> = rows
        .into_iter()
        .map(|r| (r.body, r.body_encoding))
        .collect();
    let mut want: Vec<(Vec<u8>, Option<String>)> = published
        .iter()
        .map(|m| (m.body.clone(), Some(m.format.as_str().to_owned())))
        .collect();
    found.sort();
    want.sort();
    assert_eq!(found, want, "{call_id}");
}

/// A protobuf event that only its content type tells from text: its bytes are all printable
/// (the tenant, field 4, first: key `"`, a 32-byte value whose length is a space; then the
/// event type, key `\n`, length 13 = `\r`; then the payload, key `*`). The agent service
/// announces it as `application/protobuf`, and the service takes it live. Rebuilt from the log
/// after a restart, it must decode as it did live: the log stores its format
/// (`body_encoding`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_event_that_only_its_content_type_told_apart_is_rebuilt_as_it_was_taken() {
    let app = TestApp::spawn().await;
    let producer = producer(&app).await;
    let c = call("printable");
    let answered = proto::GenericEvent {
        event_type: "call.answered".into(),
        tenant_id: "sentiric_demo_tenant_eu_west_001".into(),
        payload_json: json!({"callId": c.call_id}).to_string(),
        ..Default::default()
    };
    // prost writes fields in number order; this producer wrote the tenant first.
    let mut body = proto::GenericEvent {
        tenant_id: answered.tenant_id.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    body.extend(
        proto::GenericEvent {
            event_type: answered.event_type.clone(),
            payload_json: answered.payload_json.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(
        body.iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\r'),
        "{body:?}"
    );
    assert_eq!(
        proto::GenericEvent::decode(body.as_slice()).unwrap(),
        answered
    );
    let printable = Msg {
        routing_key: "call.answered".into(),
        body,
        content_type: AGENT,
        format: Format::Protobuf,
    };
    let msgs = vec![started(&c, ts(c.start)), printable, ended(&c)];
    publish(&producer, &msgs).await;
    let live = wait_for_row(&app.pool, &c.call_id, 3).await;
    assert_eq!(live.disposition.as_deref(), Some("ANSWERED"));
    assert_eq!(live.inferred_times.as_deref(), Some("answer"));
    assert_logged_exactly_bytes(&app.pool, &c.call_id, &msgs).await;

    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    let producer = Producer::connect(&app.settings.amqp.exchange).await;
    publish(&producer, &[playback(&c, 10)]).await;
    let rebuilt = wait_for_row(&app.pool, &c.call_id, 4).await;
    let mut want = live.clone();
    want.event_count += 1;
    let undecodable = app.metric("cdr_log_undecodable_events_total").await;
    app.finish().await;
    assert!(want.diff(&rebuilt).is_empty(), "{:#?}", want.diff(&rebuilt));
    assert_eq!(
        undecodable, 0.0,
        "every logged event decodes again as it did live"
    );
}
