//! More than one instance on the same database and queue, as the real binary in child
//! processes: at most one of them is active (holds the lease, consumes, writes), the others
//! stand by, and whatever happens to the processes (a second replica, a rolling update, a
//! kill -9, a cut from the database) every record is right, checked by `storm --verify` with
//! every fault share non-zero.

use cdr_testkit as common;

use std::process::{Command, Output};
use std::time::Duration;

use common::proxy::proxied;
use common::service::Service;
use common::*;
use serde_json::Value;

/// The role an instance reports on `/health/ready`.
async fn role(service: &Service) -> String {
    let body: Value = reqwest::get(format!("http://127.0.0.1:{}/health/ready", service.port))
        .await
        .expect("GET /health/ready")
        .json()
        .await
        .expect("JSON");
    body["role"].as_str().unwrap_or_default().to_owned()
}

async fn wait_for_role(service: &Service, want: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if role(service).await == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances of the binary: the first started and active, then the second, a standby.
async fn active_and_standby(
    env: &TestEnv,
    first: &cdr_service::config::Settings,
    second: &cdr_service::config::Settings,
) -> (Service, Service) {
    let a = Service::start(service_binary!(), env, first).await;
    wait_for_role(&a, "active", "the first instance active").await;
    let b = Service::start(service_binary!(), env, second).await;
    wait_for_role(&b, "standby", "the second instance standing by").await;
    (a, b)
}

/// Events an instance took from the broker.
async fn received(service: &Service) -> f64 {
    metric_at(service.port, "cdr_events_received_total").await
}

/// Waits until `service` has taken at least `events` events from the broker.
async fn wait_for_received(service: &Service, events: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received(service).await < events {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{events} events not consumed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `cdr-service storm --verify` on the test's settings, paced at `rate` calls a second (0: as
/// fast as the broker confirms), with every fault share non-zero; its report.
fn storm(vars: Vec<(String, String)>, calls: usize, rate: u32, seed: u64) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("storm.json");
    let mut args = storm_args_with_every_fault(calls, seed, &report);
    args.extend(["--rate".to_owned(), rate.to_string()]);
    let output = Command::new(service_binary!())
        .args(&args)
        .envs(vars)
        .output()
        .expect("run cdr-service storm");
    eprintln!(
        "--- storm stdout ---\n{}--- storm stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap_or_default()).unwrap_or(Value::Null);
    (output, report)
}

/// The storm's verdict: every record right, none missing, poison and platform events where
/// they belong.
fn assert_verified(output: &Output, report: &Value, calls: usize) {
    assert!(
        output.status.success(),
        "storm --verify failed: {:?}",
        output.status
    );
    let verify = &report["verify"];
    assert_eq!(verify["passed"], true, "{verify}");
    assert_eq!(verify["calls"], calls);
    assert_eq!(verify["correct"], calls);
    assert_eq!(verify["mismatched"], 0);
    assert_eq!(verify["missing"], 0);
    assert_eq!(verify["poison_leaked"], 0);
    assert_eq!(verify["platform_leaked"], 0);
    for key in ["missing_end", "late_calls", "exact_duplicates", "poison"] {
        assert!(
            report["storm"][key].as_u64().unwrap_or(0) > 0,
            "no {key} in the storm"
        );
    }
}

/// A second replica on the same database and queue stands by: it is ready, consumes nothing,
/// and the active one records every call of a storm right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_active_every_record_right() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let (a, b) = active_and_standby(&env, &settings, &settings).await;

    const CALLS: usize = 1500;
    let storm_env = env.env_vars(&settings);
    let (output, report) = tokio::task::spawn_blocking(move || storm(storm_env, CALLS, 0, 7))
        .await
        .expect("storm task");
    assert_verified(&output, &report, CALLS);

    assert_eq!(role(&a).await, "active");
    assert_eq!(role(&b).await, "standby");
    assert!(received(&a).await > 0.0);
    assert_eq!(received(&b).await, 0.0, "the standby consumed nothing");
    assert_eq!(
        metric_at(b.port, "cdr_cluster_role{role=\"standby\"}").await,
        1.0
    );
    let (code, _) = a.terminate();
    assert_eq!(code, Some(0));
    // The lease released last: the standby takes over at once.
    wait_for_role(&b, "active", "the standby taking over after a clean stop").await;
    let (code, _) = b.terminate();
    assert_eq!(code, Some(0));
    env.cleanup(&settings).await;
}

/// kill -9 of the active mid-storm with a standby running: the standby takes the lease,
/// recovers every open call from the log and consumes; every record is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_active_mid_storm() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let (a, b) = active_and_standby(&env, &settings, &settings).await;

    const CALLS: usize = 1500;
    let storm_env = env.env_vars(&settings);
    let storm = tokio::task::spawn_blocking(move || storm(storm_env, CALLS, 300, 8));
    // Well into the storm (about 11,000 messages over 5 s): a's calls are open, lingering,
    // resting.
    wait_for_received(&a, 4000.0).await;
    a.kill9();
    wait_for_role(&b, "active", "the standby taking over").await;
    let (output, report) = storm.await.expect("storm task");
    assert_verified(&output, &report, CALLS);
    assert!(metric_at(b.port, "cdr_lease_taken_total").await >= 1.0);
    let (code, _) = b.terminate();
    assert_eq!(code, Some(0));
    env.cleanup(&settings).await;
}

/// A rolling update: the new instance starts mid-storm (a standby), the old one gets SIGTERM
/// (it commits and acks what it holds, writes its ended calls, releases the lease last); the
/// new one takes over; every record is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_mid_storm_keeps_every_record_right() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let old = Service::start(service_binary!(), &env, &settings).await;
    wait_for_role(&old, "active", "the old instance active").await;

    const CALLS: usize = 1500;
    let storm_env = env.env_vars(&settings);
    let storm = tokio::task::spawn_blocking(move || storm(storm_env, CALLS, 300, 9));
    wait_for_received(&old, 3000.0).await;
    let new = Service::start(service_binary!(), &env, &settings).await;
    wait_for_role(&new, "standby", "the new instance standing by").await;
    wait_for_received(&old, 6000.0).await;
    let (code, _) = tokio::task::spawn_blocking(move || old.terminate())
        .await
        .expect("terminate");
    assert_eq!(code, Some(0), "a clean exit on SIGTERM");
    wait_for_role(&new, "active", "the new instance taking over").await;
    let (output, report) = storm.await.expect("storm task");
    assert_verified(&output, &report, CALLS);
    let (code, _) = new.terminate();
    assert_eq!(code, Some(0));
    env.cleanup(&settings).await;
}

/// The active cut from the database: its lease frees, it stops consuming and writing at once
/// and stands by; the standby takes over. When the cut heals, the first one does not act again
/// while the second holds the lease. Every call is recorded right throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_from_the_database_stands_down_and_stays_down() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let (db_proxy, proxied_url) = proxied(&env.db_url).await;
    let mut cut_settings = settings.clone();
    cut_settings.database.url = (proxied_url).into();
    let (a, b) = active_and_standby(&env, &cut_settings, &settings).await;
    let pool = env.pool().await;
    let producer = Producer::connect(&settings.amqp.exchange).await;
    let publish = async |c: &cdr_storm::simulate::SyntheticCall| {
        for e in c.events(true) {
            let key = e["eventType"].as_str().unwrap().to_owned();
            producer
                .publish(&key, e.to_string().as_bytes(), Some("application/json"))
                .await;
        }
    };

    let before = call("before-the-cut");
    publish(&before).await;
    assert_full_record(&wait_for_row(&pool, &before.call_id, 5).await, &before);

    db_proxy.cut();
    wait_for_role(
        &b,
        "active",
        "the standby taking over from the cut instance",
    )
    .await;
    let during = call("during-the-cut");
    publish(&during).await;
    assert_full_record(&wait_for_row(&pool, &during.call_id, 5).await, &during);
    let consumed_by_a = received(&a).await;

    db_proxy.restore();
    // Healed: the first instance reconnects, finds the lease held and stays a standby.
    wait_for_role(&a, "standby", "the healed instance standing by").await;
    let after = call("after-the-cut");
    publish(&after).await;
    assert_full_record(&wait_for_row(&pool, &after.call_id, 5).await, &after);
    assert_eq!(role(&a).await, "standby");
    assert_eq!(role(&b).await, "active");
    assert_eq!(
        received(&a).await,
        consumed_by_a,
        "the stood-down instance consumed nothing more"
    );
    assert!(metric_at(a.port, "cdr_lease_lost_total").await >= 1.0);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM open_calls")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "every call closed");
    pool.close().await;
    for s in [a, b] {
        let (code, _) = s.terminate();
        assert_eq!(code, Some(0));
    }
    env.cleanup(&settings).await;
}
