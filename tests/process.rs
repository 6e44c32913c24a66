//! The real binary as a child process: graceful stop on SIGTERM, and resumption on restart.

use cdr_testkit as common;
use secrecy::ExposeSecret;

use std::time::Duration;

use cdr_storm::simulate::{Publisher, SyntheticCall};
use common::service::{Service, closed_pipe};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing_and_restart_completes_open_calls() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Long enough that no open call times out during the test.
    settings.tracker.idle_timeout = Duration::from_secs(600);
    let pool = env.pool().await;
    let service = Service::start(service_binary!(), &env, &settings).await;
    assert!(service.port > 0);

    let publisher = Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
        .await
        .unwrap();
    let t0: chrono::DateTime<chrono::Utc> = "2025-09-24T10:00:00Z".parse().unwrap();
    let calls: Vec<SyntheticCall> = (0..150)
        .map(|i| SyntheticCall::new(format!("term-{i}@198.51.100.7"), t0))
        .collect();
    // First part: every call starts and is answered; a third of them also end.
    let mut published = 0i64;
    for (i, c) in calls.iter().enumerate() {
        publisher.publish(&c.started()).await.unwrap();
        publisher.publish(&c.answered()).await.unwrap();
        published += 2;
        if i % 3 == 0 {
            publisher.publish(&c.ended()).await.unwrap();
            published += 1;
        }
    }
    // Stop while the backlog is still being consumed.
    let (code, took) = service.terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    assert!(
        took < settings.shutdown.timeout + Duration::from_secs(5),
        "exit within the configured bound (took {took:?})"
    );

    // Everything acked is in the log; everything else is still in the queue.
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let waiting = i64::from(queue_depth(&settings.amqp.queue).await);
    assert_eq!(
        logged + waiting,
        published,
        "logged {logged} + queued {waiting}"
    );

    // The rest of the calls' lives happen while the service is down.
    for (i, c) in calls.iter().enumerate() {
        if i % 3 != 0 {
            publisher.publish(&c.ended()).await.unwrap();
        }
        publisher.publish(&c.identified()).await.unwrap();
        publisher.publish(&c.recording()).await.unwrap();
    }

    let service = Service::start(service_binary!(), &env, &settings).await;
    for c in &calls {
        let r = wait_for_row(&pool, &c.call_id, 5).await;
        assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{}", c.call_id);
        assert_eq!(r.start_time, Some(t0), "{}", c.call_id);
        assert_eq!(r.duration_seconds, Some(42), "{}", c.call_id);
        assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
        assert!(r.recording_url.is_some(), "{}", c.call_id);
        assert_eq!(r.event_count, 5);
    }
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, calls.len() as i64, "one row per call");
    assert_eq!(queue_depth(&settings.amqp.queue).await, 0);
    pool.close().await;
    env.cleanup(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sizes_its_runtime_from_runtime_worker_threads() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();

    settings.runtime.worker_threads = 3;
    let service = Service::start(service_binary!(), &env, &settings).await;
    assert_eq!(
        metric_at(service.port, "cdr_runtime_worker_threads").await,
        3.0
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0));

    // 0: one fewer than the CPUs this process may use, at least one.
    settings.runtime.worker_threads = 0;
    let service = Service::start(service_binary!(), &env, &settings).await;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(
        metric_at(service.port, "cdr_runtime_worker_threads").await,
        cpus.saturating_sub(1).max(1) as f64
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0));
    env.cleanup(&settings).await;
}

/// A container's log collector can go away and leave the service writing into a closed pipe.
/// Logs are then lost, but nothing else may be: a failed log line must not panic the task that
/// wrote it (tracing's fallback reports such a failure on stderr, the same closed pipe, and a
/// failed `eprintln!` panics), nor leave SIGTERM unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_loses_logs_only() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // Chatty, so that every part of the pipeline writes log lines into the closed pipe.
    settings.log.level = "debug".into();
    let pool = env.pool().await;
    let (stdout, stderr) = closed_pipe();
    let service =
        Service::start_logging_to(service_binary!(), &env, &settings, stdout, stderr).await;

    let publisher = Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
        .await
        .unwrap();
    let calls: Vec<SyntheticCall> = (0..20).map(|i| call(&format!("mute-{i}"))).collect();
    for c in &calls {
        for event in [c.started(), c.answered(), c.identified(), c.ended()] {
            publisher.publish(&event).await.unwrap();
        }
    }
    for c in &calls {
        let r = wait_for_row(&pool, &c.call_id, 4).await;
        assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{}", c.call_id);
        assert_eq!(r.duration_seconds, Some(42), "{}", c.call_id);
        assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
    }
    assert_eq!(
        metric_at(service.port, "cdr_actor_restarts_total").await,
        0.0,
        "no call actor failed"
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    pool.close().await;
    env.cleanup(&settings).await;
}

/// A configuration error with both output pipes closed still ends the process with the failure
/// code, not with a panic's: the message cannot be read, but a supervisor still sees a
/// configuration failure rather than a crash.
#[test]
fn a_config_error_with_closed_pipes_exits_with_the_failure_code() {
    let (stdout, stderr) = closed_pipe();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cdr-service"))
        .arg("run")
        .env("CDR__TRACKER__LINGER", "soon")
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .expect("run cdr-service");
    assert_eq!(status.code(), Some(1), "{status}");
}
