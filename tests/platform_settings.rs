//! The settings of the service this one replaces, under its variable names, on the real binary:
//! `ENV`, `LOG_FORMAT` and `NODE_HOSTNAME` shape the lines it prints, `CDR_SERVICE_METRICS_PORT`
//! moves the listener of `/metrics`, and a bad value stops it with the variable's name.
//! How the names layer with the rest of the configuration is unit-tested in `src/config.rs`.

use cdr_testkit as common;
use secrecy::ExposeSecret;

use std::process::{Command, Stdio};

use cdr_service::config::Settings;
use cdr_storm::simulate::Publisher;
use common::service::{Service, captured, free_port};
use common::*;

/// The test's settings as an operator of the platform gives them: its URLs under the platform's
/// names (as [`env_vars`] does), neither the log level nor the listen address under the
/// service's own names, and `extra`.
fn platform_env(
    env: &TestEnv,
    settings: &Settings,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut vars = env.env_vars(settings);
    vars.retain(|(k, _)| k != "CDR__HTTP__LISTEN" && k != "CDR__LOG__LEVEL");
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

/// The line as a JSON object, or a panic naming it.
fn json(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert!(v.is_object(), "not a JSON object: {line}");
    v
}

/// `ENV=production` and `NODE_HOSTNAME=node-7`: every line printed, from startup to shutdown and
/// from every task (the call actors, the signal handler, the pipeline's stages), is JSON and
/// carries `"node_hostname":"node-7"`. `CDR_SERVICE_METRICS_PORT` gives `/metrics` its port on
/// the host of `http.listen` (here from a `CDR_CONFIG` file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_line_carries_node_hostname_and_metrics_answer_on_the_platform_port() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let pool = env.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdr.toml");
    // The file's port is one nothing may listen on: the platform's port replaces it.
    std::fs::write(&file, "[http]\nlisten = \"127.0.0.1:9\"\n").unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let vars = platform_env(
        &env,
        &settings,
        &[
            ("ENV", "production"),
            ("NODE_HOSTNAME", "node-7"),
            // Debug for the service: each call actor logs the record it writes.
            ("LOG_LEVEL", "info,cdr_service=debug"),
            ("CDR_SERVICE_METRICS_PORT", &port_text),
            ("CDR_CONFIG", file.to_str().unwrap()),
        ],
    );
    let (stdout, lines) = captured();
    let service =
        Service::start_with_env(service_binary!(), vars, port, stdout, Stdio::inherit()).await;

    let publisher = Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
        .await
        .unwrap();
    let c = call("node-hostname");
    for event in [c.started(), c.answered(), c.identified(), c.ended()] {
        publisher.publish(&event).await.unwrap();
    }
    let r = wait_for_row(&pool, &c.call_id, 4).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    let metrics = common::metrics::scrape(port).await;
    assert!(
        metrics.contains("cdr_build_info"),
        "/metrics on CDR_SERVICE_METRICS_PORT {port}:\n{metrics}"
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");

    let lines = lines.lines();
    assert!(!lines.is_empty(), "the service printed nothing");
    let lines: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    for line in &lines {
        assert_eq!(line["node_hostname"], "node-7", "{line}");
        assert_eq!(line["service"], "cdr-service", "{line}");
    }
    let message = |m: &str| lines.iter().find(|l| l["message"] == m);
    // Lines written by tasks the service spawns, none of them inside a span of main's.
    let record = message("writing call record").expect("a call actor's line");
    assert_eq!(record["call_id"], c.call_id.as_str(), "{record}");
    assert!(
        message("shutdown requested").is_some(),
        "the signal handler's line"
    );
    assert!(message("logging started").is_some());
    assert!(message("stopped").is_some(), "the last line of a shutdown");
    pool.close().await;
    env.cleanup(&settings).await;
}

/// `LOG_FORMAT=console` wins over the JSON of `ENV=production`: no line is JSON, and
/// `NODE_HOSTNAME` adds nothing to them. `CDR__HTTP__LISTEN`, the service's own name, wins over
/// `CDR_SERVICE_METRICS_PORT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_console_wins_over_env_production() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let vars = platform_env(
        &env,
        &settings,
        &[
            ("ENV", "production"),
            ("LOG_FORMAT", "console"),
            ("NODE_HOSTNAME", "node-7"),
            // Not where it listens: CDR__HTTP__LISTEN wins.
            ("CDR_SERVICE_METRICS_PORT", "9"),
            ("CDR__HTTP__LISTEN", &listen),
        ],
    );
    let (stdout, lines) = captured();
    let service =
        Service::start_with_env(service_binary!(), vars, port, stdout, Stdio::inherit()).await;
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM");

    let lines = lines.lines();
    assert!(
        lines.iter().any(|l| l.contains("logging started")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(line.starts_with("cdr-service "), "{line}");
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "a JSON line: {line}"
        );
        assert!(!line.contains("node-7"), "{line}");
    }
    env.cleanup(&settings).await;
}

/// A value the platform's variable cannot take stops the service before it connects to anything,
/// with exit code 1 and a message naming the variable and the value.
#[test]
fn a_bad_platform_value_stops_the_service_naming_the_variable() {
    for (variable, value) in [
        ("LOG_FORMAT", "xml"),
        ("CDR_SERVICE_METRICS_PORT", "metrics"),
        ("CDR_SERVICE_METRICS_PORT", "70000"),
    ] {
        let out = Command::new(service_binary!())
            .arg("run")
            .env_clear()
            .env("ENV", "production")
            .env(variable, value)
            .stdin(Stdio::null())
            .output()
            .expect("run cdr-service");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{variable}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("`{variable}`")) && stderr.contains(&format!("{value:?}")),
            "{variable}={value}: {stderr}"
        );
    }
}
