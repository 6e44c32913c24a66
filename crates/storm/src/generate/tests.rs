use super::*;

fn options(seed: u64) -> StormOptions {
    StormOptions {
        calls: 300,
        seed,
        duplicates: 0.2,
        missing_end: 0.1,
        late: 0.2,
        poison: 0.02,
        variants: 0.6,
        ..StormOptions::default()
    }
}

const LIMITS: Limits = Limits {
    max_body_bytes: 64 * 1024,
    max_json_depth: 32,
};

fn bytes(s: &Storm) -> Vec<(String, Vec<u8>, bool, u64)> {
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
        st.distinct_events + st.exact_duplicates + st.poison
    );
    assert_eq!(
        s.calls.iter().map(|c| c.distinct_events).sum::<usize>(),
        st.distinct_events
    );
    // Poison never decodes; every other message decodes to its call.
    let limits = LIMITS;
    for m in s.main.iter().chain(&s.late) {
        let decoded = event::decode(&m.body, Utc::now(), limits);
        match m.kind {
            MessageKind::Poison(class) => {
                assert_eq!(decoded.unwrap_err().as_code(), class.reason())
            }
            MessageKind::Event { call } | MessageKind::Duplicate { call } => {
                assert_eq!(decoded.unwrap().call_id, s.calls[call as usize].call_id)
            }
        }
    }
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
