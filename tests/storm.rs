//! `cdr-service storm --verify` end to end: the binary publishes a storm of a few thousand calls
//! with every fault share non-zero (reordering, exact and INVITE duplicates, calls without an
//! end, late events, every poison class, every producer variant, both wire formats mixed within
//! calls, platform events that are not about a call) to the service running in-process, waits
//! for the records and checks each against the storm's ground truth.
//!
//! It runs twice: on an empty database (the service creates every table) and on one whose
//! tables the platform's scripts created first (EVENTS.md, "What is stored"). Both are checked
//! against the same ground truth, records and usage lines, so their records are identical.
//!
//! The storm is reproducible: `STORM_SEED=<seed>` replays another one.

use cdr_testkit as common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cdr_storm::{self as storm, StormOptions};
use common::*;

const CALLS: usize = 2500;

/// One after the other (not as two tests): the platform-event counter they check is the
/// process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_verify_passes_with_every_fault_share_on_an_empty_and_on_the_platforms_database() {
    storm_verify_passes_on(false).await;
    storm_verify_passes_on(true).await;
}

async fn storm_verify_passes_on(platform_tables: bool) {
    let started = Instant::now();
    let seed: u64 = std::env::var("STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20250924);
    eprintln!("storm test seed: {seed} (STORM_SEED={seed} replays this storm)");

    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.tracker.idle_timeout = Duration::from_secs(3);
    // Calls rest and wake many times over the storm: every record must still be right.
    settings.tracker.rest_after = Duration::from_millis(50);
    let pool = env.pool().await;
    if platform_tables {
        create_platform_tables(&pool).await;
    }
    cdr_service::db::migrate(&pool).await.expect("migrate");
    // Unit prices as the platform keeps them (named ids, a start date), one of them changing
    // at midnight in the middle of the storm's timeline (it starts two minutes before; calls
    // are priced at their start).
    insert_storm_prices(&pool).await;
    pool.close().await;
    let app = TestApp::start(env, settings).await;
    let platform_counted = app.metric("cdr_platform_events_total").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("storm.json");
    let mut args = storm_args_with_every_fault(CALLS, seed, &report_path);
    args.extend(["--base-time".to_owned(), "2025-09-23T23:58:00Z".to_owned()]);
    let vars = app.env.env_vars(&app.settings);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cdr-service"))
            .args(&args)
            .envs(vars)
            .output()
            .expect("run cdr-service storm")
    })
    .await
    .expect("storm task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "--- storm stdout ---\n{stdout}--- storm stderr ---\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "storm --verify failed: {:?}",
        output.status
    );
    assert!(stdout.contains("verify: PASSED"));

    let report = storm_report_verified(&report_path, CALLS);
    let verify = &report["verify"];
    let st = &report["storm"];
    assert_eq!(verify["platform_leaked"], 0);
    assert_eq!(st["calls"], CALLS);
    // Every fault is present in this storm.
    for key in [
        "missing_end",
        "late_calls",
        "duplicate_starts",
        "exact_duplicates",
        "inferred_start",
        "long_call_ids",
        "poison",
        "platform_events",
    ] {
        assert!(st[key].as_u64().unwrap_or(0) > 0, "no {key} in the storm");
    }
    let poison = st["poison"].as_u64().unwrap();
    let by_class = st["poison_by_class"].as_object().expect("poison by class");
    assert_eq!(
        by_class.len(),
        storm::PoisonClass::ALL.len(),
        "every poison class"
    );
    for format in ["json", "protobuf"] {
        assert!(
            st["messages_by_format"][format].as_u64().unwrap_or(0) > 0,
            "no {format} message in the storm"
        );
    }
    assert_eq!(verify["poison_expected"], poison);
    assert_eq!(
        verify["dead_lettered"], poison,
        "every poison message dead-lettered"
    );
    assert_eq!(
        queue_depth(&app.settings.amqp.dead_letter_queue).await,
        u32::try_from(poison).unwrap()
    );
    // The platform events were acknowledged and counted, not dead-lettered.
    let platform = st["platform_events"].as_u64().unwrap();
    assert_eq!(verify["platform_expected"], platform);
    assert_eq!(
        app.metric("cdr_platform_events_total").await - platform_counted,
        platform as f64
    );
    assert!(
        report["publish"]["main_messages_per_second"]
            .as_f64()
            .unwrap()
            > 0.0,
        "publish rate reported"
    );

    // The binary published exactly the storm the library generates for the same seed (the
    // same events twice), and the log holds each of its distinct events once.
    let options = StormOptions {
        calls: CALLS,
        seed,
        reorder_window: STORM_FAULTS.reorder_window,
        duplicates: STORM_FAULTS.duplicates,
        missing_end: STORM_FAULTS.missing_end,
        late: STORM_FAULTS.late,
        poison: STORM_FAULTS.poison,
        platform_events: STORM_FAULTS.platform_events,
        variants: STORM_FAULTS.variants,
        base_time: "2025-09-23T23:58:00Z".parse().unwrap(),
        ..StormOptions::default()
    };
    let generated = storm::generate(&options, storm::limits(&app.settings));
    assert_eq!(report["call_id_prefix"], generated.call_id_prefix.as_str());
    assert_eq!(st["messages"], generated.stats.messages);
    let want: HashSet<(String, Vec<u8>)> = generated
        .main
        .iter()
        .chain(&generated.late)
        .filter_map(|m| {
            let e = cdr_service::event::decode(
                &m.body,
                chrono::Utc::now(),
                storm::limits(&app.settings),
            )
            .ok()?;
            Some((e.call_id, e.body_hash.to_vec()))
        })
        .collect();
    assert_eq!(want.len(), generated.stats.distinct_events);
    let logged: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT call_id, body_sha256 FROM call_events")
            .fetch_all(&app.pool)
            .await
            .expect("read call_events");
    assert_eq!(logged.len(), want.len(), "one log row per distinct event");
    let logged: HashSet<(String, Vec<u8>)> = logged.into_iter().collect();
    assert!(
        logged == want,
        "the log holds exactly the storm's distinct events"
    );

    // The records were priced (the prices are part of the ground truth).
    let priced: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE total_cost IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .expect("count priced calls");
    assert!(priced > 0, "some records carry a cost");
    // Billing readers sum the usage lines: each call's lines add up to its total cost.
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls c WHERE c.total_cost IS DISTINCT FROM \
           (SELECT sum(u.calculated_cost) FROM usage_records u WHERE u.call_id = c.call_id)",
    )
    .fetch_one(&app.pool)
    .await
    .expect("compare costs and lines");
    assert_eq!(
        unbalanced, 0,
        "calls whose usage lines do not sum to their cost"
    );
    let lines: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_records WHERE resource_type = 'telephony_minute' \
           AND service_name = 'telephony-core' AND calculated_cost IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count telephony lines");
    assert!(lines > 0, "priced telephony-minute lines");

    eprintln!("storm test done in {:?}", started.elapsed());
    app.finish().await;
}
