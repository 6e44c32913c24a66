//! Every query of the Grafana dashboard (`deploy/grafana/dashboards/cdr-service.json`) has data
//! in a real Prometheus that scrapes the real service.
//!
//! The service runs in-process; a small real workload goes through it (complete calls, garbage,
//! an exact duplicate, a late recording, a call recovered at start then timed out, a copy of a
//! message logged before the restart (a log batch rechecked), and a call actor that keeps
//! failing: restarted, then quarantined, through the `failpoints` feature); a Prometheus server
//! from Debian's `prometheus` package (installed by `scripts/services.sh`) scrapes it every
//! second; then each `expr` of the dashboard, with Grafana's variables replaced, must evaluate
//! to a non-empty result through `/api/v1/query`. A query naming a metric the service does not
//! export has no data, and fails the test.

use cdr_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdr_storm::simulate::SyntheticCall;
use common::service::free_port;
use common::*;
use serde_json::{Value, json};

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/cdr-service.json")
}

/// Every `expr` anywhere in the dashboard JSON, with the title of the panel it belongs to.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", Value::String(expr)) => out.push((title.to_owned(), expr.clone())),
                        _ => walk(child, title, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}

/// Grafana's variables as Grafana would fill them in for a short time range.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (name, value) in [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ] {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// The `cdr_` series names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && expr[i..].starts_with("cdr_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            let name = expr[i..end].to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// A Prometheus server on a free port, scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: this test runs a real Prometheus server. Run \
             `bash scripts/services.sh` (it installs Debian's `prometheus` package, binary only), \
             then run the test again."
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: cdr-service\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {PROMETHEUS}: {e}"));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            let url = format!("{}/-/ready", self.base);
            if matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instant query: Ok(number of series) when Prometheus answers `success` with data,
/// Err(why) for an error or an empty result.
async fn evaluate(client: &reqwest::Client, base: &str, expr: &str) -> Result<usize, String> {
    let url = url::Url::parse_with_params(&format!("{base}/api/v1/query"), [("query", expr)])
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("response is not JSON: {e}"))?;
    if body.get("status").and_then(Value::as_str) != Some("success") {
        return Err(format!(
            "status {}: {} {}",
            body.get("status").unwrap_or(&Value::Null),
            body.get("errorType").unwrap_or(&Value::Null),
            body.get("error").unwrap_or(&Value::Null)
        ));
    }
    let data = body.get("data").ok_or("no data in the response")?;
    match data.get("resultType").and_then(Value::as_str) {
        Some("vector") | Some("matrix") => {
            let n = data
                .get("result")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n == 0 {
                Err("empty result (no series)".into())
            } else {
                Ok(n)
            }
        }
        Some("scalar") | Some("string") => Ok(1),
        other => Err(format!("unexpected result type {other:?}")),
    }
}

/// [`evaluate`] again until it has data or `timeout` passes (a rate needs two scrapes).
async fn eventually(
    client: &reqwest::Client,
    base: &str,
    expr: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match evaluate(client, base, expr).await {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Fault injection (cargo feature `failpoints`): a call actor that fails on every event.
#[cfg(feature = "failpoints")]
mod faults {
    const FAIL_POINT: &str = "call-actor-event";

    pub struct Scenario(fail::FailScenario<'static>);

    pub fn setup() -> Scenario {
        Scenario(fail::FailScenario::setup())
    }

    impl Scenario {
        /// Every call whose id starts with `prefix` fails when it folds an event.
        pub fn poison(&self, prefix: &str) {
            fail::cfg(FAIL_POINT, &format!("return({prefix})")).unwrap();
        }

        pub fn clear(&self) {
            fail::remove(FAIL_POINT);
        }

        pub fn teardown(self) {
            self.0.teardown();
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod faults {
    pub struct Scenario;

    pub fn setup() -> Scenario {
        panic!("actor restarts and quarantines are injected: run with --features failpoints");
    }

    impl Scenario {
        pub fn poison(&self, _: &str) {}
        pub fn clear(&self) {}
        pub fn teardown(self) {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (actor failures are injected); scripts/test.sh passes it"
)]
async fn every_dashboard_expression_has_data_in_a_real_prometheus() {
    // Before anything else: without the binary this test fails, it never skips.
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is missing: run `bash scripts/services.sh` (it installs Debian's \
         `prometheus` package, binary only), then run the test again."
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_path()).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 10, "only {} expressions found", exprs.len());

    let faults = faults::setup();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // A fixed port, so that the restarted service is the same scrape target.
    let port = free_port();
    let app = TestApp::spawn_with(|s| {
        s.http.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.tracker.restart_budget = 1;
    })
    .await;

    // A call open when the service stops is recovered from the log at the next start, and,
    // without its end, written as TIMED_OUT after the idle timeout (3s in tests).
    let open = call("open-1");
    app.publisher.publish(&open.started()).await.unwrap();
    app.publisher.publish(&open.answered()).await.unwrap();
    wait_until(Duration::from_secs(30), "open call logged", || {
        let pool = app.pool.clone();
        let id = open.call_id.clone();
        async move { logged_events(&pool, &id).await == 2 }
    })
    .await;
    // A call finished before the stop: not recovered, so not remembered by the next run.
    let done = call("done-1");
    for e in done.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    wait_for_row(&app.pool, &done.call_id, 5).await;
    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    assert_eq!(app.port, port);
    assert!(app.metric("cdr_calls_recovered_total").await >= 1.0);
    // A copy of a message of the finished call: the restarted service does not remember it, so
    // its plain insert is refused by the unique index and the batch goes again with the
    // conflict check; the copy is still a duplicate.
    app.publisher.publish(&done.started()).await.unwrap();
    wait_until(Duration::from_secs(30), "a log batch rechecked", || {
        let app = &app;
        async move { app.metric("cdr_log_append_rechecks_total").await >= 1.0 }
    })
    .await;
    assert!(app.metric("cdr_duplicates_dropped_total").await >= 1.0);
    assert_eq!(logged_events(&app.pool, &done.call_id).await, 5);

    let mut prometheus = Prometheus::start(port);
    prometheus.wait_ready(&client).await;
    let base = prometheus.base.clone();

    // Complete calls, one of them in reverse order, one with an exact duplicate.
    let complete: Vec<SyntheticCall> = (0..3).map(|i| call(&format!("ok-{i}"))).collect();
    for (i, c) in complete.iter().enumerate() {
        let mut events = c.events(true);
        if i == 1 {
            events.reverse();
        }
        for e in &events {
            app.publisher.publish(e).await.unwrap();
        }
    }
    app.publisher.publish(&complete[0].started()).await.unwrap();
    // A dialog turn and a usage report: the projection panels.
    for e in [
        json!({"eventType": "dialog.turn.completed", "callId": complete[2].call_id,
               "turnIndex": 0, "userText": "hello", "aiText": "hi there"}),
        json!({"eventType": "cost.usage.reported", "callId": complete[2].call_id,
               "usageId": "u-1", "resourceType": "LLM_TOKENS", "quantity": "42"}),
    ] {
        app.publisher.publish(&e).await.unwrap();
    }
    // Garbage: dead-lettered.
    app.publisher
        .publish_raw("call.started", b"not json")
        .await
        .unwrap();
    app.publisher
        .publish_raw("call.ended", br#"{"eventType":"call.ended"}"#)
        .await
        .unwrap();
    // A call whose actor fails on every event: restarted, then quarantined (budget 1).
    faults.poison("poison-");
    for e in call("poison-1").events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    wait_until(Duration::from_secs(30), "a quarantined call", || {
        let app = &app;
        async move { app.metric("cdr_actor_quarantines_total").await >= 1.0 }
    })
    .await;
    faults.clear();
    assert!(app.metric("cdr_actor_restarts_total").await >= 1.0);
    // A platform event that is not about a call: acknowledged and counted.
    app.publisher
        .publish(&json!({"eventType": "user.created", "userId": "u-1"}))
        .await
        .unwrap();

    // A recording after the record was written: a late event.
    let late = call("late-1");
    for e in [
        late.started(),
        late.answered(),
        late.identified(),
        late.ended(),
    ] {
        app.publisher.publish(&e).await.unwrap();
    }
    wait_for_row(&app.pool, &late.call_id, 4).await;
    tokio::time::sleep(app.settings.tracker.linger * 3).await;
    app.publisher.publish(&late.recording()).await.unwrap();
    let r = wait_for_row(&app.pool, &late.call_id, 5).await;
    assert!(r.recording_url.is_some());
    for (i, c) in complete.iter().enumerate() {
        let events = if i == 2 { 7 } else { 5 };
        let r = wait_for_row(&app.pool, &c.call_id, events).await;
        assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    }
    let r = wait_for_row(&app.pool, &open.call_id, 2).await;
    assert_eq!(r.status.as_deref(), Some("TIMED_OUT"));

    // Prometheus has scraped the service.
    eventually(
        &client,
        &base,
        r#"up{job="cdr-service"} == 1"#,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "prometheus never scraped 127.0.0.1:{port}: {e}\n{}",
            prometheus.log()
        )
    });

    // Every dashboard expression, and every series it names, has data.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (title, raw) in &exprs {
        let expr = substitute_grafana_variables(raw);
        assert!(
            !expr.contains('$'),
            "panel `{title}`: a Grafana variable this test does not know: `{raw}`"
        );
        let names = metric_names(&expr);
        if names.is_empty() {
            failures.push(format!("panel `{title}`: `{expr}` names no cdr_ metric"));
        }
        // A failing check uses up the shared deadline; the next ones still get a few tries.
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(3))
        };
        for name in names {
            if let Err(e) = eventually(&client, &base, &name, left()).await {
                failures.push(format!(
                    "panel `{title}`: series `{name}` is not exported by the service: {e}"
                ));
            }
        }
        match eventually(&client, &base, &expr, left()).await {
            Ok(_) => checked += 1,
            Err(e) => failures.push(format!("panel `{title}`: `{expr}`: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard expressions have no data in Prometheus:\n  {}",
        failures.len(),
        exprs.len(),
        failures.join("\n  ")
    );
    assert_eq!(checked, exprs.len());

    // The check has teeth: with the same data in place, a dashboard-style query over a metric
    // the service does not export is reported empty, and a broken one as an error.
    let bogus = substitute_grafana_variables(
        "sum by (reason) (rate(cdr_no_such_metric_total[$__rate_interval]))",
    );
    let err = eventually(&client, &base, &bogus, Duration::from_secs(3))
        .await
        .expect_err("a metric the service does not export must have no data");
    assert!(err.contains("empty"), "{err}");
    let err = eventually(&client, &base, "cdr_no_such_metric", Duration::from_secs(1))
        .await
        .expect_err("an unknown series has no data");
    assert!(err.contains("empty"), "{err}");
    let err = evaluate(&client, &base, "sum(rate(cdr_events_received_total[1m])")
        .await
        .expect_err("a syntax error must fail");
    assert!(err.contains("bad_data"), "{err}");

    drop(prometheus);
    app.finish().await;
    faults.teardown();
}

#[test]
fn grafana_variables_are_replaced() {
    assert_eq!(
        substitute_grafana_variables(
            "rate(a[$__rate_interval]) + rate(b[${__rate_interval}]) + c[$__interval] + d[$__range]"
        ),
        "rate(a[1m]) + rate(b[1m]) + c[15s] + d[5m]"
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(cdr_log_batch_size_bucket[1m]))) / \
             sum(cdr_active_calls{state=\"ringing\"}) + xcdr_not_this"
        ),
        ["cdr_log_batch_size_bucket", "cdr_active_calls"]
    );
}

#[test]
fn every_expr_of_the_dashboard_is_extracted() {
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert_eq!(exprs.len(), text.matches("\"expr\":").count());
    assert!(exprs.iter().all(|(title, _)| !title.is_empty()));
}

/// A fresh service (the binary, in a process of its own, nothing consumed yet) already exports
/// every counter the dashboard queries, and every labelled counter for each label value known
/// in advance, at 0: panels and `rate()` work before the first incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_service_exports_every_counter_the_dashboard_queries() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_path()).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let counters: Vec<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .filter(|name| name.ends_with("_total"))
        .collect();
    assert!(counters.len() >= 8, "{counters:?}");

    let env = TestEnv::new().await;
    let settings = env.settings();
    let service = common::service::Service::start(service_binary!(), &env, &settings).await;
    let text = metrics::scrape(service.port).await;
    let series: Vec<&str> = metrics::samples(&text).map(|(s, _)| s).collect();
    for name in &counters {
        assert!(
            series.iter().any(|s| s
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))),
            "{name} is not exported by a fresh service"
        );
    }
    for reason in cdr_service::event::Reject::DEAD_LETTER_CODES
        .into_iter()
        .chain([cdr_service::ingest::UNSTORABLE])
    {
        let series = format!("cdr_events_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metrics::value(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        metrics::value(
            &text,
            "cdr_records_written_total{status=\"TIMED_OUT\",disposition=\"BUSY\",cause=\"idle_timeout\"}"
        ),
        Some(0.0)
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0));
    env.cleanup(&settings).await;
}
