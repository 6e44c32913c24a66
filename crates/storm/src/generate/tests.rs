use super::*;
use crate::protobuf::PROTOBUF_CONTENT_TYPE;
use cdr_core::event::Reject;

fn options(seed: u64) -> StormOptions {
    StormOptions {
        calls: 300,
        seed,
        duplicates: 0.2,
        missing_end: 0.1,
        late: 0.2,
        poison: 0.02,
        platform_events: 0.01,
        variants: 0.6,
        ..StormOptions::default()
    }
}

const LIMITS: Limits = Limits {
    max_body_bytes: 64 * 1024,
    max_json_depth: 32,
};

fn bytes(s: &Storm) -> Vec<(String, Vec<u8>, Option<&'static str>, u64)> {
    s.main
        .iter()
        .chain(&s.late)
        .map(|m| {
            (
                m.routing_key.clone(),
                m.body.to_vec(),
                m.content_type,
                m.at.to_bits(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_byte_identical_events() {
    let a = generate(&options(7), LIMITS);
    let b = generate(&options(7), LIMITS);
    assert_eq!(bytes(&a), bytes(&b));
    assert_eq!(a.call_id_prefix, b.call_id_prefix);
    let records = |s: &Storm| {
        s.calls
            .iter()
            .map(|c| {
                (
                    c.distinct_events,
                    c.record(&PriceBook::default(), s.base_time),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(records(&a), records(&b));
    assert!(!a.main.is_empty() && !a.late.is_empty());
}

#[test]
fn different_seeds_give_different_storms() {
    let a = generate(&options(7), LIMITS);
    let b = generate(&options(8), LIMITS);
    assert_ne!(a.call_id_prefix, b.call_id_prefix);
    // Even with the same call ids, the events differ.
    let mut o = options(8);
    o.call_id_prefix = Some(a.call_id_prefix.clone());
    let c = generate(&o, LIMITS);
    assert_ne!(bytes(&a), bytes(&c));
}

#[test]
fn every_fault_and_variant_is_present_and_counts_add_up() {
    let s = generate(&options(3), LIMITS);
    let st = &s.stats;
    for class in PoisonClass::ALL {
        assert!(
            st.poison_by_reason
                .get(class.reason())
                .copied()
                .unwrap_or(0)
                > 0,
            "{class:?}"
        );
    }
    for v in [
        "timestamp_go_trimmed",
        "no_content_type",
        "empty_routing_key",
        "no_trace_id",
        "started_uri_keys",
        "started_snake_dialplan",
        "started_snake_user_only",
        "started_no_timestamp",
        "identified_created_alias",
        "identified_dot_alias",
        "ended_without_reason",
        "usage_no_usage_id",
        "terminate_no_timestamp",
        "answered_extra_keys",
        "call_id_255_chars",
    ] {
        assert!(
            st.variants.contains_key(v),
            "variant {v} missing: {:?}",
            st.variants
        );
    }
    assert!(st.missing_end > 0 && st.late_calls > 0 && st.duplicate_starts > 0);
    assert!(st.exact_duplicates > 0 && st.inferred_start > 0);
    assert_eq!(
        st.messages,
        st.distinct_events + st.exact_duplicates + st.poison + st.platform_events
    );
    assert_eq!(st.messages_by_format.values().sum::<usize>(), st.messages);
    assert!(st.messages_by_format["json"] > 0 && st.messages_by_format["protobuf"] > 0);
    assert_eq!(
        st.poison_by_class.len(),
        PoisonClass::ALL.len(),
        "{:?}",
        st.poison_by_class
    );
    for kind in PlatformEvent::ALL {
        assert!(st.platform_by_type[kind.event_type()] > 0, "{kind:?}");
    }
    assert_eq!(
        s.calls.iter().map(|c| c.distinct_events).sum::<usize>(),
        st.distinct_events
    );
    // Poison never decodes, a platform event is told from it; every other message decodes
    // to its call.
    let limits = LIMITS;
    for m in s.main.iter().chain(&s.late) {
        let hint = m.content_type.and_then(Format::from_content_type);
        let decoded = event::decode_hinted(&m.body, hint, Utc::now(), limits);
        match m.kind {
            MessageKind::Poison(class) => {
                assert_eq!(decoded.unwrap_err().as_code(), class.reason(), "{class:?}")
            }
            MessageKind::Platform(kind) => assert_eq!(
                decoded.unwrap_err(),
                Reject::NotCallEvent {
                    event_type: kind.event_type().to_owned(),
                    format: kind.format()
                }
            ),
            MessageKind::Event { call } | MessageKind::Duplicate { call } => {
                assert_eq!(decoded.unwrap().call_id, s.calls[call as usize].call_id)
            }
        }
    }
    assert_eq!(
        s.platform_ids.len(),
        s.main
            .iter()
            .filter(|m| matches!(
                m.kind,
                MessageKind::Platform(PlatformEvent::UserCreated | PlatformEvent::DialplanUpdated)
            ))
            .count()
    );
    // Only calls with a timestamp-less call.started depend on the receive time.
    let dependent = s
        .calls
        .iter()
        .filter(|c| c.receive_dependent.is_some())
        .count();
    assert!(dependent > 0 && dependent <= st.inferred_start);
}

#[test]
fn no_reorder_window_keeps_each_call_in_order() {
    let o = StormOptions {
        calls: 50,
        reorder_window: 0,
        duplicates: 0.0,
        late: 0.0,
        ..StormOptions::default()
    };
    let s = generate(&o, LIMITS);
    let mut last = 0;
    for m in &s.main {
        let MessageKind::Event { call } = m.kind else {
            panic!("only events")
        };
        assert!(call >= last, "calls one after another");
        last = call;
    }
}

#[test]
fn duration_distributions_parse_and_stay_in_range() {
    let mut rng = StdRng::seed_from_u64(1);
    let d: DurationDist = "uniform:10s..1m".parse().unwrap();
    for _ in 0..100 {
        let x = d.sample(&mut rng);
        assert!(x >= Duration::from_secs(10) && x <= Duration::from_secs(60));
    }
    assert_eq!(
        "42s".parse::<DurationDist>().unwrap(),
        DurationDist::Fixed(Duration::from_secs(42))
    );
    let e: DurationDist = "exp:90s".parse().unwrap();
    let mean = (0..20_000)
        .map(|_| e.sample(&mut rng).as_secs_f64())
        .sum::<f64>()
        / 20_000.0;
    assert!((80.0..100.0).contains(&mean), "mean {mean}");
    assert!("uniform:1m..10s".parse::<DurationDist>().is_err());
    assert!("normal:3s".parse::<DurationDist>().is_err());
    assert_eq!(e.to_string(), "exp:1m 30s");
}

/// The expected records of a storm, call by call, at two receive times (the second matters
/// for the calls that depend on one).
fn ground_truth(s: &Storm) -> Vec<(String, usize, bool, bool, CallRecord, CallRecord)> {
    let later = s.base_time + chrono::Duration::days(30);
    s.calls
        .iter()
        .map(|c| {
            (
                c.call_id.clone(),
                c.distinct_events,
                c.ended,
                c.receive_dependent.is_some(),
                c.record(&PriceBook::default(), s.base_time),
                c.record(&PriceBook::default(), later),
            )
        })
        .collect()
}

/// The calls' messages that go out as protobuf.
fn protobuf_events(s: &Storm) -> usize {
    s.main
        .iter()
        .chain(&s.late)
        .filter(|m| {
            matches!(
                m.kind,
                MessageKind::Event { .. } | MessageKind::Duplicate { .. }
            )
        })
        .filter(|m| event::decode(&m.body, Utc::now(), LIMITS).unwrap().format == Format::Protobuf)
        .count()
}

/// Where and what every message is, apart from its body and content type.
fn placement(s: &Storm) -> Vec<(String, u64, MessageKind)> {
    s.main
        .iter()
        .chain(&s.late)
        .map(|m| (m.routing_key.clone(), m.at.to_bits(), m.kind))
        .collect()
}

#[test]
fn the_format_mix_changes_the_bodies_and_nothing_else() {
    for (seed, duration) in [
        (1, "exp:90s"),
        (2, "exp:90s"),
        (5, "exp:90s"),
        (11, "fixed:0s"),
        (12, "uniform:0s..20ms"),
    ] {
        let mix = |protobuf: f64| {
            let o = StormOptions {
                protobuf,
                duration: duration.parse().unwrap(),
                call_id_prefix: Some(format!("mix-{seed}")),
                ..options(seed)
            };
            generate(&o, LIMITS)
        };
        let json = mix(0.0);
        let mixed = mix(StormOptions::default().protobuf);
        let all = mix(1.0);
        let (none, some, most) = (
            protobuf_events(&json),
            protobuf_events(&mixed),
            protobuf_events(&all),
        );
        assert!(none == 0 && 0 < some && some < most, "{none} {some} {most}");
        for other in [&mixed, &all] {
            assert_ne!(bytes(&json), bytes(other), "seed {seed}: the bodies differ");
            assert_eq!(placement(&json), placement(other), "seed {seed}");
            assert_eq!(json.poison_call_ids, other.poison_call_ids);
            assert_eq!(json.platform_ids, other.platform_ids);
            for (a, b) in ground_truth(&json).iter().zip(ground_truth(other)) {
                assert_eq!(*a, b, "seed {seed}, {duration}: {}", a.0);
            }
            assert_eq!(json.calls.len(), other.calls.len());
        }
    }
    // Without a prefix of its own, another mix is another storm: it never shares a call.
    let mut o = options(1);
    let a = default_prefix(&o);
    o.protobuf = 0.0;
    assert_ne!(a, default_prefix(&o));
}

/// Whether a JSON event shows a form only JSON producers send.
fn json_only_form(m: &Message) -> bool {
    let body = std::str::from_utf8(&m.body).expect("a JSON event");
    let value: Value = serde_json::from_str(body).expect("a JSON event");
    let timestamp_style = value["timestamp"]
        .as_str()
        .is_some_and(|t| event::format_timestamp(event::parse_timestamp(t).unwrap()) != t);
    m.routing_key.is_empty()
        || m.content_type.is_none()
        // The agent's hang-up request never has one.
        || (value.get("traceId").is_none() && value["eventType"] != "call.terminate.request")
        || timestamp_style
        || body.contains("_id\"")
        || body.contains("server_rtp_port")
        || body.contains(r#""fromUri""#)
        || body.contains("producerVersion")
        || body.contains("user.identified.for.call")
}

#[test]
fn events_go_out_as_their_producers_send_them() {
    let storm = |protobuf: f64| {
        generate(
            &StormOptions {
                protobuf,
                variants: 0.6,
                call_id_prefix: Some("formats".into()),
                ..options(4)
            },
            LIMITS,
        )
    };
    let (json, all) = (storm(0.0), storm(1.0));
    let now = Utc::now();
    let mut formats_per_call: HashMap<u32, HashSet<Format>> = HashMap::new();
    let mut by_format: HashMap<Format, usize> = HashMap::new();
    for (j, m) in json
        .main
        .iter()
        .chain(&json.late)
        .zip(all.main.iter().chain(&all.late))
    {
        let (MessageKind::Event { call } | MessageKind::Duplicate { call }) = m.kind else {
            assert_eq!(
                j, m,
                "poison and platform events do not change with the mix"
            );
            continue;
        };
        let twin = event::decode(&j.body, now, LIMITS).unwrap();
        let e = event::decode(&m.body, now, LIMITS).unwrap();
        formats_per_call.entry(call).or_default().insert(e.format);
        *by_format.entry(e.format).or_default() += 1;
        if e.format == Format::Json {
            assert_eq!(j, m);
            continue;
        }
        // Its twin, in a form a protobuf producer sends, with the same facts.
        assert!(!json_only_form(j), "{}", String::from_utf8_lossy(&j.body));
        assert_eq!(m.routing_key, e.event_type);
        assert_eq!(
            (
                &e.event_type,
                &e.call_id,
                &e.trace_id,
                e.timestamp,
                e.timestamp_inferred
            ),
            (
                &twin.event_type,
                &twin.call_id,
                &twin.trace_id,
                twin.timestamp,
                twin.timestamp_inferred
            )
        );
        assert_eq!(e.kind, twin.kind, "{}", e.payload_json());
        let content_type = match e.event_type.as_str() {
            "call.started" | "call.answered" | "call.ended" | "call.recording.available" => None,
            "user.identified.for_call"
            | "user.created.for_call"
            | "call.terminate.request"
            | "dialog.turn.completed"
            | "cost.usage.reported" => Some(PROTOBUF_CONTENT_TYPE),
            other => panic!("{other} has no protobuf producer"),
        };
        assert_eq!(m.content_type, content_type, "{}", e.event_type);
        if e.event_type == "call.answered" {
            assert_eq!(e.trace_id.as_deref(), Some(e.call_id.as_str()));
            assert!(e.payload_json().contains(r#""tenantId":"system""#));
        }
    }
    assert!(by_format[&Format::Protobuf] > 0 && by_format[&Format::Json] > 0);
    // The JSON producers' forms stay JSON: calls mix both.
    assert!(formats_per_call.values().any(|f| f.len() == 2));

    // Without the JSON producers' forms, every event a current producer sends as protobuf
    // goes out as protobuf.
    let canonical = generate(
        &StormOptions {
            protobuf: 1.0,
            variants: 0.0,
            ..options(4)
        },
        LIMITS,
    );
    for m in canonical.main.iter().chain(&canonical.late) {
        if let MessageKind::Event { .. } | MessageKind::Duplicate { .. } = m.kind {
            let e = event::decode(&m.body, now, LIMITS).unwrap();
            let has_twin = e.event_type != "call.transfer.requested";
            assert_eq!(e.format == Format::Protobuf, has_twin, "{}", e.event_type);
        }
    }
}
