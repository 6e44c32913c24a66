//! The HTTP listener over TLS: mutual TLS (a client certificate of the configured CA required),
//! the plain probe listener serving only the probes and the metrics, and a renewed certificate
//! served without a restart.

use cdr_testkit as common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::{TestCa, https_get};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_requires_a_client_certificate_and_serves_a_renewed_one() {
    let ca = TestCa::new("cdr HTTP CA");
    let server = ca.issue("http", &["localhost"]);
    let client = ca.issue("operator", &["operator"]);
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.http.tls_cert_file = server.cert.clone();
    settings.http.tls_key_file = server.key.clone();
    settings.http.tls_client_ca_file = ca.ca_file();
    settings.http.tls_reload_check = Duration::from_millis(100);
    settings.http.probe_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = Running::start(&settings).await;
    let main = SocketAddr::from(([127, 0, 0, 1], running.port));
    let get = |path: &'static str,
               ca: std::path::PathBuf,
               client: Option<common::tls::CertFiles>| async move {
        https_get(main, "localhost", path, &ca, client.as_ref()).await
    };

    // Mutual TLS: every endpoint, with a client certificate.
    let (code, body) = get("/health/ready", ca.ca_file(), Some(client.clone()))
        .await
        .expect("HTTPS with a client certificate");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    let (code, _) = get("/calls", ca.ca_file(), Some(client.clone()))
        .await
        .expect("the live view");
    assert_eq!(code, 200);
    // Refused: no client certificate, another client CA's, and plain HTTP.
    let stranger = TestCa::new("a stranger's CA").issue("stranger", &["stranger"]);
    assert!(get("/health/live", ca.ca_file(), None).await.is_err());
    assert!(get("/calls", ca.ca_file(), Some(stranger)).await.is_err());
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/health/live", running.port))
            .await
            .is_err(),
        "no plain HTTP on the TLS listener"
    );

    // The plain probe listener: the probes and the metrics, nothing else.
    let probe = running.probe_port.expect("the probe listener");
    let plain = |path: &str| format!("http://127.0.0.1:{probe}{path}");
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let r = reqwest::get(plain(path)).await.expect(path);
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let r = reqwest::get(plain("/calls")).await.expect("/calls");
    assert_eq!(r.status().as_u16(), 404, "the live view is not a probe's");
    let metrics = metrics::scrape(probe).await;
    assert!(
        metrics::value(&metrics, "cdr_http_tls_handshakes_failed_total").unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );

    // Rotation: a certificate of a new CA written over the files is served once the listener
    // sees the change; the old CA no longer verifies it.
    let renewed_ca = TestCa::new("cdr HTTP CA, renewed");
    let renewed = renewed_ca.issue("http-renewed", &["localhost"]);
    std::fs::copy(&renewed.key, &server.key).expect("the new key");
    std::fs::copy(&renewed.cert, &server.cert).expect("the new certificate");
    wait_until(
        Duration::from_secs(10),
        "the renewed certificate served",
        || {
            let (ca, client) = (renewed_ca.ca_file(), client.clone());
            async move { matches!(get("/health/live", ca, Some(client)).await, Ok((200, _))) }
        },
    )
    .await;
    assert!(
        get("/health/live", ca.ca_file(), Some(client.clone()))
            .await
            .is_err()
    );
    let metrics = metrics::scrape(probe).await;
    assert!(
        metrics::value(&metrics, "cdr_http_tls_reloads_total{outcome=\"loaded\"}").unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    running.stop().await;
    env.cleanup(&settings).await;
}
