//! One call of the storm, as the platform's producers would send it: its facts drawn first
//! (ids, tenant, numbers, what happens to it, its timeline), then its events in the order they
//! happen, each in a producer form chosen by `--variants`, as JSON. Whether an event goes out
//! as its protobuf twin is decided later, on a random stream of its own (`mod.rs`), so the
//! calls are the same whatever the format mix.
//!
//! Every value comes from the storm's main random generator, in a fixed order: the same seed
//! gives the same calls, byte for byte.

use chrono::{DateTime, Utc};
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

use super::producer::{
    ANSWERED_REASONS, ENVELOPE_VARIANTS, STARTED_VARIANTS, UNANSWERED_REASONS, Variant,
    dialplan_camel, dialplan_snake, timestamp,
};
use super::{NOMINAL_RATE, StormStats};
use crate::StormOptions;

/// One generated event before serialization.
#[derive(Clone)]
pub(super) struct Ev {
    /// The event as a JSON producer sends it.
    pub value: Value,
    /// The JSON producer sets `application/json`.
    pub content_type: bool,
    pub empty_routing_key: bool,
    /// In a form only a JSON producer sends: it never goes out as protobuf.
    pub json_only: bool,
    pub late: bool,
}

pub(super) struct PlannedCall {
    pub call_id: String,
    pub ended: bool,
    pub events: Vec<Ev>,
}

/// Who the caller turns out to be.
pub(super) struct Identity {
    pub user_id: String,
    pub contact_id: i64,
    pub tenant_id: String,
}

/// Which event comes after the record was written.
#[derive(PartialEq)]
enum Late {
    None,
    Recording,
    Identification,
}

/// One call's facts, drawn before its events.
struct CallPlan {
    call_id: String,
    tenant: &'static str,
    caller: String,
    callee: String,
    answered: bool,
    identified: bool,
    recording: bool,
    dialog: bool,
    usage: bool,
    ended: bool,
    dup_start: bool,
    late: Late,
    start: DateTime<Utc>,
    answer_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    talk: chrono::Duration,
    reason: &'static str,
}

const TENANTS: [&str; 3] = ["sentiric_demo", "acme_corp", "legacy_tenant"];
const UTTERANCES: [(&str, &str); 4] = [
    (
        "Randevumu yarına alabilir miyim?",
        "Tabii, yarın saat 14:00 için randevunuzu güncelledim.",
    ),
    (
        "What are your opening hours?",
        "We are open from 9 to 18 on weekdays.",
    ),
    (
        "Faturamı öğrenmek istiyorum.",
        "Son faturanız 245,90 TL, son ödeme tarihi ayın 28'i.",
    ),
    (
        "I'd like to speak to a person.",
        "I'm transferring you to an agent now.",
    ),
];

/// Generates calls, drawing from the storm's generator and counting into its stats.
pub(super) struct CallGen<'a> {
    pub rng: &'a mut StdRng,
    pub o: &'a StormOptions,
    pub stats: &'a mut StormStats,
}

impl CallGen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn ms(&mut self, lo: u64, hi: u64) -> chrono::Duration {
        chrono::Duration::milliseconds(self.rng.random_range(lo..=hi) as i64)
    }

    fn identity(&mut self, tenant: &str) -> Identity {
        Identity {
            user_id: uuid::Builder::from_random_bytes(self.rng.random())
                .into_uuid()
                .to_string(),
            contact_id: self.rng.random_range(1..100_000),
            tenant_id: tenant.to_owned(),
        }
    }

    fn variant(&mut self, specific: &[&'static str]) -> Variant {
        if !self.chance(self.o.variants) {
            return Variant::Canonical;
        }
        let n = self.rng.random_range(0..ENVELOPE_VARIANTS + specific.len());
        let (v, name) = match n {
            0 => (Variant::TimestampGo, "timestamp_go_trimmed"),
            1 => {
                let digits = *[0u8, 3, 6, 9].choose(self.rng).unwrap_or(&0);
                let name = match digits {
                    0 => "timestamp_rust_0_digits",
                    3 => "timestamp_rust_3_digits",
                    6 => "timestamp_rust_6_digits",
                    _ => "timestamp_rust_9_digits",
                };
                (Variant::TimestampRust(digits), name)
            }
            2 => (Variant::NoContentType, "no_content_type"),
            3 => (Variant::EmptyRoutingKey, "empty_routing_key"),
            4 => (Variant::NoTraceId, "no_trace_id"),
            k => (
                Variant::Specific(k - ENVELOPE_VARIANTS),
                specific[k - ENVELOPE_VARIANTS],
            ),
        };
        *self.stats.variants.entry(name).or_default() += 1;
        v
    }

    /// The envelope of one event of call `p`, with its variant applied (`specific`: the forms
    /// of its event type the variant was drawn among). The trace id is the call id, as today's
    /// producers set it (`call.answered`'s always is, EVENTS.md): every event of a call
    /// carries that one trace id or none, in either format, so the record's trace id (the
    /// earliest event's) never turns on which event or which format came first.
    fn envelope(
        &self,
        p: &CallPlan,
        event_type: &str,
        at: DateTime<Utc>,
        v: Variant,
        specific: &[&'static str],
    ) -> Ev {
        let mut o = Map::new();
        o.insert("eventType".into(), json!(event_type));
        if v != Variant::NoTraceId {
            o.insert("traceId".into(), json!(p.call_id));
        }
        o.insert("callId".into(), json!(p.call_id));
        o.insert("timestamp".into(), json!(timestamp(at, v)));
        Ev {
            value: Value::Object(o),
            content_type: v != Variant::NoContentType,
            empty_routing_key: v == Variant::EmptyRoutingKey,
            json_only: v.json_only(specific),
            late: false,
        }
    }

    /// Call `i` of the storm: its facts, then its events in the order they happen.
    pub fn call(&mut self, i: usize, prefix: &str) -> PlannedCall {
        let p = self.plan(i, prefix);
        let identity = self.identity(p.tenant);
        let mut events = Vec::new();
        self.started(&p, &identity, &mut events);
        self.answered(&p, &mut events);
        self.identifications(&p, &identity, &mut events);
        let talk_ms = p.talk.num_milliseconds().max(1);
        if p.dialog {
            self.dialog_turns(&p, talk_ms, &mut events);
        }
        if p.usage {
            self.usage_reports(&p, talk_ms, &mut events);
        }
        self.other_events(&p, talk_ms, &mut events);
        self.end(&p, &mut events);
        PlannedCall {
            call_id: p.call_id,
            ended: p.ended,
            events,
        }
    }

    /// Call `i`'s facts: ids, tenant, numbers, what happens to it, its timeline.
    fn plan(&mut self, i: usize, prefix: &str) -> CallPlan {
        let o = self.o;
        let per_call = 1.0 / if o.rate > 0.0 { o.rate } else { NOMINAL_RATE };
        let start = o.base_time
            + chrono::Duration::nanoseconds((i as f64 * per_call * 1e9) as i64)
            + chrono::Duration::nanoseconds(self.rng.random_range(0..(per_call * 1e9) as i64 + 1));
        let call_id = self.call_id(i, prefix);
        let tenant = TENANTS.choose(self.rng).copied().unwrap_or("sentiric_demo");
        let caller = format!(
            "90{}",
            self.rng.random_range(5_000_000_000u64..6_000_000_000)
        );
        let callee = format!("90212444000{}", self.rng.random_range(0..3));

        let answered = self.chance(o.answered);
        let identified = self.chance(o.identified);
        let recording = answered && self.chance(o.recording);
        let dialog = answered && self.chance(o.dialog);
        let usage = answered && self.chance(o.usage);
        let ended = !self.chance(o.missing_end);
        let late = ended && self.chance(o.late);
        let dup_start = self.chance(o.duplicates);
        self.stats.answered += usize::from(answered);
        self.stats.identified += usize::from(identified);
        self.stats.with_recording += usize::from(recording);
        self.stats.with_dialog += usize::from(dialog);
        self.stats.with_usage += usize::from(usage);
        self.stats.missing_end += usize::from(!ended);
        self.stats.late_calls += usize::from(late);

        // The timeline.
        let ring = self.ms(500, if answered { 15_000 } else { 40_000 });
        let answer_at = start + ring;
        let talk = if answered {
            chrono::Duration::from_std(o.duration.sample(self.rng)).unwrap_or_default()
        } else {
            chrono::Duration::zero()
        };
        let (reasons, default): (&[&'static str], _) = if answered {
            (&ANSWERED_REASONS, "normal_clearing")
        } else {
            (&UNANSWERED_REASONS, "busy")
        };
        let reason = reasons.choose(self.rng).copied().unwrap_or(default);
        let late = match (late, recording, identified) {
            (false, _, _) => Late::None,
            (true, true, true) if self.chance(0.5) => Late::Identification,
            (true, true, _) => Late::Recording,
            _ => Late::Identification,
        };
        CallPlan {
            call_id,
            tenant,
            caller,
            callee,
            answered,
            identified,
            recording,
            dialog,
            usage,
            ended,
            dup_start,
            late,
            start,
            answer_at,
            end_at: answer_at + talk,
            talk,
            reason,
        }
    }

    /// `{prefix}-{i}@host`; with `--variants`, sometimes padded to the longest Call-ID the
    /// column holds.
    fn call_id(&mut self, i: usize, prefix: &str) -> String {
        let host = format!("198.51.100.{}", i % 250 + 1);
        let mut call_id = format!("{prefix}-{i:06}@{host}");
        if self.chance(self.o.variants * 0.1) {
            let pad = 255usize.saturating_sub(call_id.chars().count() + 1);
            call_id = format!("{prefix}-{i:06}-{}@{host}", "a".repeat(pad));
            call_id.truncate(255);
            self.stats.long_call_ids += 1;
            *self.stats.variants.entry("call_id_255_chars").or_default() += 1;
        }
        call_id
    }

    /// `call.started`, and a duplicate INVITE's second one.
    fn started(&mut self, p: &CallPlan, identity: &Identity, events: &mut Vec<Ev>) {
        let v = self.variant(&STARTED_VARIANTS);
        let mut ev = self.envelope(p, "call.started", p.start, v, &STARTED_VARIANTS);
        let spec = match v {
            Variant::Specific(k) => Some(STARTED_VARIANTS[k]),
            _ => None,
        };
        let matched = p.identified && self.chance(0.5);
        let obj = ev.value.as_object_mut().expect("an object");
        self.started_body(obj, p, spec, matched.then_some(identity));
        if !p.dup_start {
            events.push(ev);
            return;
        }
        // A duplicate INVITE: a second call.started, a little later. The typed producer sends
        // no timestamp, so its second copy is the same body.
        let mut second = ev.clone();
        if spec != Some("started_no_timestamp") {
            let at = p.start + self.ms(1, 2000);
            second.value["timestamp"] = json!(timestamp(at, v));
            self.stats.duplicate_starts += 1;
        }
        events.push(ev);
        events.push(second);
    }

    /// The SIP, media and dialplan parts of `call.started`, in the producer form `spec` names.
    fn started_body(
        &mut self,
        obj: &mut Map<String, Value>,
        p: &CallPlan,
        spec: Option<&str>,
        user: Option<&Identity>,
    ) {
        let (caller, callee, tenant) = (&p.caller, &p.callee, p.tenant);
        let from = if spec == Some("started_display_name") {
            format!("\"Caller {caller}\" <sip:{caller}@203.0.113.5;transport=udp>;tag=9fx")
        } else {
            format!("<sip:{caller}@203.0.113.5>;tag=abc")
        };
        let to = format!("<sip:{callee}@198.51.100.7>");
        let port = self.rng.random_range(10_000..20_000);
        let rtp = match spec {
            Some("started_null_rtp_addr") => Value::Null,
            Some("started_empty_rtp_addr") => json!(""),
            _ => json!("203.0.113.5:40000"),
        };
        let uri_keys = spec == Some("started_uri_keys");
        obj.insert(
            if uri_keys { "fromUri" } else { "from" }.into(),
            json!(from),
        );
        obj.insert(if uri_keys { "toUri" } else { "to" }.into(), json!(to));
        let media = if spec == Some("started_snake_media") {
            json!({"server_rtp_port": port, "caller_rtp_addr": rtp})
        } else {
            json!({"serverRtpPort": port, "callerRtpAddr": rtp})
        };
        obj.insert(if uri_keys { "mediaInfo" } else { "media" }.into(), media);
        let dialplan = match spec {
            Some("started_no_dialplan") => None,
            Some("started_snake_dialplan") => {
                Some(dialplan_snake(tenant, caller, callee, user, true))
            }
            Some("started_snake_user_only") => {
                Some(dialplan_snake(tenant, caller, callee, user, false))
            }
            _ => Some(dialplan_camel(tenant, caller, callee, user)),
        };
        if let Some(d) = dialplan {
            obj.insert(
                if uri_keys {
                    "dialplanResolution"
                } else {
                    "dialplan"
                }
                .into(),
                d,
            );
        }
        if spec == Some("started_no_timestamp") {
            obj.remove("timestamp");
            self.stats.inferred_start += 1;
        }
    }

    /// `call.answered`: some producer versions never sent it (answered by media evidence).
    fn answered(&mut self, p: &CallPlan, events: &mut Vec<Ev>) {
        let no_answered_event =
            p.answered && (p.recording || p.dialog) && self.chance(self.o.variants * 0.2);
        if no_answered_event {
            *self.stats.variants.entry("no_call_answered").or_default() += 1;
        }
        if p.answered && !no_answered_event {
            const SPECIFIC: [&str; 1] = ["answered_extra_keys"];
            let v = self.variant(&SPECIFIC);
            let mut ev = self.envelope(p, "call.answered", p.answer_at, v, &SPECIFIC);
            if v == Variant::Specific(0) {
                let obj = ev.value.as_object_mut().expect("an object");
                obj.insert("sipStatus".into(), json!(200));
                obj.insert("producerVersion".into(), json!("signaling-1.4.2"));
                obj.insert(
                    "x-debug".into(),
                    json!({"node": "sbc-eu-1", "hops": [1, 2]}),
                );
            }
            events.push(ev);
        }
    }

    /// Identification (agent service), possibly twice (the latest wins), possibly late.
    fn identifications(&mut self, p: &CallPlan, identity: &Identity, events: &mut Vec<Ev>) {
        let mut at = if p.answered { p.answer_at } else { p.start } + self.ms(200, 3000);
        let late = p.late == Late::Identification;
        if late {
            at = p.end_at + self.ms(1000, 30_000);
            if !p.identified {
                // A late identification for a caller not known before the end.
                self.stats.identified += 1;
            }
        }
        if p.identified || late {
            let alias_without_timestamp = self.identification(p, identity, at, late, false, events);
            // A second identification with another identity, later: it wins. Not after the
            // timestamp-less alias, whose place among them would follow its receive time.
            if !alias_without_timestamp && self.chance(0.1) {
                let other = self.identity(p.tenant);
                let at = at + self.ms(1000, 5000);
                self.identification(p, &other, at, late, true, events);
            }
        }
    }

    /// One identification of `ident`; true when it went out in the alias form without a
    /// timestamp.
    fn identification(
        &mut self,
        p: &CallPlan,
        ident: &Identity,
        at: DateTime<Utc>,
        late: bool,
        second: bool,
        events: &mut Vec<Ev>,
    ) -> bool {
        let specific: &[&'static str] = if second {
            &["identified_dot_alias"]
        } else {
            &["identified_dot_alias", "identified_created_alias"]
        };
        let v = self.variant(specific);
        let (event_type, no_ts) = match v {
            Variant::Specific(0) => ("user.identified.for.call", false),
            Variant::Specific(_) => ("user.created.for_call", true),
            _ => ("user.identified.for_call", false),
        };
        let mut ev = self.envelope(p, event_type, at, v, specific);
        let obj = ev.value.as_object_mut().expect("an object");
        obj.insert("userId".into(), json!(ident.user_id));
        obj.insert("contactId".into(), json!(ident.contact_id));
        obj.insert("tenantId".into(), json!(ident.tenant_id));
        if no_ts {
            obj.remove("timestamp");
        }
        ev.late = late;
        events.push(ev);
        no_ts
    }

    /// One to six dialog turns, spread over the talk.
    fn dialog_turns(&mut self, p: &CallPlan, talk_ms: i64, events: &mut Vec<Ev>) {
        let turns = self.rng.random_range(1..=6);
        for k in 0..turns {
            let at = p.answer_at
                + chrono::Duration::milliseconds(talk_ms * (k + 1) / (turns + 1))
                + self.ms(0, 50);
            let v = self.variant(&[]);
            let mut ev = self.envelope(p, "dialog.turn.completed", at, v, &[]);
            let (user_text, ai_text) = *UTTERANCES.choose(self.rng).unwrap_or(&UTTERANCES[0]);
            let obj = ev.value.as_object_mut().expect("an object");
            obj.insert("turnIndex".into(), json!(k));
            obj.insert("userText".into(), json!(user_text));
            obj.insert("aiText".into(), json!(ai_text));
            obj.insert(
                "ragSources".into(),
                json!([{"documentId": format!("kb-{:03}", k), "score": 0.87}, "kb-faq-12"]),
            );
            obj.insert("sttMs".into(), json!(self.rng.random_range(100..600)));
            obj.insert("llmMs".into(), json!(self.rng.random_range(300..3000)));
            obj.insert("ttsMs".into(), json!(self.rng.random_range(100..500)));
            events.push(ev);
        }
    }

    /// One to four usage reports, spread over the talk.
    fn usage_reports(&mut self, p: &CallPlan, talk_ms: i64, events: &mut Vec<Ev>) {
        const SPECIFIC: [&str; 1] = ["usage_no_usage_id"];
        let reports = self.rng.random_range(1..=4);
        for k in 0..reports {
            let at = p.answer_at
                + chrono::Duration::milliseconds(talk_ms * (k + 1) / (reports + 1))
                + self.ms(0, 50);
            let v = self.variant(&SPECIFIC);
            let mut ev = self.envelope(p, "cost.usage.reported", at, v, &SPECIFIC);
            let (service, resource, quantity) = match self.rng.random_range(0..4) {
                0 => (
                    "stt-whisper-service",
                    "stt_second",
                    json!(self.rng.random_range(10..2000) as f64 / 10.0),
                ),
                1 => (
                    "llm-gateway-service",
                    "llm_token",
                    json!(self.rng.random_range(50..5000)),
                ),
                2 => (
                    "tts-service",
                    "tts_character",
                    json!(self.rng.random_range(20..3000)),
                ),
                _ => (
                    "sip-signaling-service",
                    cdr_core::merge::TELEPHONY_MINUTE,
                    json!((talk_ms + 59_999) / 60_000),
                ),
            };
            let obj = ev.value.as_object_mut().expect("an object");
            if v != Variant::Specific(0) {
                let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
                obj.insert("usageId".into(), json!(id.to_string()));
            }
            obj.insert("service".into(), json!(service));
            obj.insert("resourceType".into(), json!(resource));
            obj.insert("quantity".into(), quantity);
            events.push(ev);
        }
    }

    /// An unknown call-scoped event (kept raw, merged into nothing) and the agent's hang-up
    /// request (no traceId; its timestamp is often missing).
    fn other_events(&mut self, p: &CallPlan, talk_ms: i64, events: &mut Vec<Ev>) {
        if p.answered && self.chance(self.o.variants * 0.2) {
            *self
                .stats
                .variants
                .entry("unknown_call_scoped_event")
                .or_default() += 1;
            let at = p.answer_at + chrono::Duration::milliseconds(talk_ms / 2);
            let mut ev = self.envelope(p, "call.transfer.requested", at, Variant::Canonical, &[]);
            let obj = ev.value.as_object_mut().expect("an object");
            obj.insert("targetUri".into(), json!("sip:902124449999@198.51.100.7"));
            obj.insert("requestedBy".into(), json!("agent-service"));
            obj.insert(
                "metadata".into(),
                json!({"reason": "caller_asked_for_human", "priority": 1}),
            );
            events.push(ev);
        }
        if p.reason == "terminated_by_request" || self.chance(0.03) {
            let at = p.end_at - self.ms(50, 1000);
            const SPECIFIC: [&str; 1] = ["terminate_no_timestamp"];
            let v = self.variant(&SPECIFIC);
            let mut ev = self.envelope(p, "call.terminate.request", at, v, &SPECIFIC);
            let obj = ev.value.as_object_mut().expect("an object");
            obj.remove("traceId");
            if v == Variant::Specific(0) {
                obj.remove("timestamp");
            }
            events.push(ev);
        }
    }

    /// `call.ended` (unless the call has no end) and the recording, possibly late.
    fn end(&mut self, p: &CallPlan, events: &mut Vec<Ev>) {
        if p.ended {
            const SPECIFIC: [&str; 1] = ["ended_without_reason"];
            let v = self.variant(&SPECIFIC);
            let mut ev = self.envelope(p, "call.ended", p.end_at, v, &SPECIFIC);
            if v != Variant::Specific(0) {
                ev.value["reason"] = json!(p.reason);
            }
            events.push(ev);
        }
        if p.recording {
            let at = p.end_at + self.ms(1000, 60_000);
            let v = self.variant(&[]);
            let mut ev = self.envelope(p, "call.recording.available", at, v, &[]);
            ev.value["recordingUri"] = json!(format!(
                "s3://sentiric-recordings/{}/{}.wav",
                p.tenant, p.call_id
            ));
            ev.late = p.late == Late::Recording;
            events.push(ev);
        }
    }
}
