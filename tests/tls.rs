//! TLS to the service's peers, over their real protocols: PostgreSQL directly (the machine's
//! server has `ssl = on`) and through a proxy that presents a certificate of the test's own CA
//! (`cdr_testkit::tls`); a misconfiguration stops the start with a clear message and is never
//! retried.

use cdr_testkit as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Protocol, TestCa, TlsProxy, socket_address};
use common::*;

/// The machine's PostgreSQL.
fn postgres() -> std::net::SocketAddr {
    socket_address(&postgres_admin_url(), 5432)
}

/// The test database's URL with another host and port.
fn via(db_url: &str, host: &str, port: u16) -> String {
    let mut url = url::Url::parse(db_url).expect("the test's URL");
    url.set_host(Some(host)).expect("host");
    url.set_port(Some(port)).expect("port");
    url.to_string()
}

async fn one_call_goes_through(app: &TestApp, name: &str) {
    let c = call(name);
    for e in c.events(true) {
        app.publisher.publish(&e).await.expect("publish");
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
}

/// Runs the binary on `settings` and expects it to stop by itself, at start, with exit code
/// 1; returns what it wrote on stderr.
fn fails_at_start(env: &TestEnv, settings: &cdr_service::config::Settings) -> String {
    let mut vars = env.env_vars(settings);
    vars.retain(|(k, _)| k != "CDR__HTTP__LISTEN");
    vars.push((
        "CDR__HTTP__LISTEN".into(),
        format!("127.0.0.1:{}", common::service::free_port()),
    ));
    let mut child = Command::new(service_binary!())
        .arg("run")
        .env_clear()
        .envs(vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cdr-service");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(
                &mut child.stderr.take().expect("stderr"),
                &mut stderr,
            );
            let _ = std::io::Read::read_to_string(
                &mut child.stdout.take().expect("stdout"),
                &mut stderr,
            );
            panic!(
                "the service did not stop within 30 s: a TLS failure must not be retried\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// `require`: every connection of the service is encrypted, as PostgreSQL itself reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_encrypts_every_connection_of_the_service() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.tls_mode = "require".into();
    let db_name = env.db_name.clone();
    let app = TestApp::start(env, settings).await;
    one_call_goes_through(&app, "tls-require").await;
    let (encrypted, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.datname = $1 AND a.application_name = 'cdr-service'",
    )
    .bind(&db_name)
    .fetch_one(&app.pool)
    .await
    .expect("pg_stat_ssl");
    assert!(
        encrypted >= 2,
        "the pool and the lease: {encrypted} encrypted"
    );
    assert_eq!(plain, 0, "no plain connection");
    app.finish().await;
}

/// `verify-full` with the CA that signed the server's certificate works, and so does mutual
/// TLS with a client certificate; a wrong CA, a certificate for another name, a missing client
/// certificate or an unreadable file stop the start with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_takes_the_right_ca_and_refuses_the_wrong_one_at_start() {
    let ca = TestCa::new("cdr test CA");
    let server = ca.issue("server", &["localhost"]);
    let client = ca.issue("client", &["cdr-service"]);
    let proxy = TlsProxy::start(postgres(), Protocol::Postgres, &server, None).await;
    let mutual = TlsProxy::start(postgres(), Protocol::Postgres, &server, Some(&ca)).await;

    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.database.url = (via(&env.db_url, "localhost", proxy.addr().port())).into();
    settings.database.tls_mode = "verify-full".into();
    settings.database.tls_ca_file = ca.ca_file();
    let app = TestApp::start(env, settings.clone()).await;
    one_call_goes_through(&app, "tls-verify-full").await;
    let (env, _) = app.stop().await;

    let mut mtls = settings.clone();
    mtls.database.url = (via(&env.db_url, "localhost", mutual.addr().port())).into();
    mtls.database.tls_cert_file = client.cert.clone();
    mtls.database.tls_key_file = client.key.clone();
    let app = TestApp::start(env, mtls.clone()).await;
    one_call_goes_through(&app, "tls-mutual").await;
    let (env, _) = app.stop().await;

    let other = TestCa::new("another CA");
    let mut wrong_ca = settings.clone();
    wrong_ca.database.tls_ca_file = other.ca_file();
    let mut wrong_name = settings.clone();
    wrong_name.database.url = (via(&env.db_url, "127.0.0.1", proxy.addr().port())).into();
    let mut no_client_cert = mtls.clone();
    no_client_cert.database.tls_cert_file = Default::default();
    no_client_cert.database.tls_key_file = Default::default();
    let mut missing_file = settings.clone();
    missing_file.database.tls_ca_file = ca.dir().join("nowhere.pem");
    let mut not_pem = settings.clone();
    not_pem.database.tls_ca_file = client.key.clone();
    for (what, s, says) in [
        ("a wrong CA", &wrong_ca, "UnknownIssuer"),
        ("another name", &wrong_name, "not valid for name"),
        ("no client certificate", &no_client_cert, "TLS"),
        ("a missing CA file", &missing_file, "database.tls_ca_file"),
        ("a key as the CA", &not_pem, "database.tls_ca_file"),
    ] {
        let stderr = fails_at_start(&env, s);
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    env.cleanup(&settings).await;
}

/// The machine's RabbitMQ.
fn rabbitmq() -> std::net::SocketAddr {
    socket_address(&amqp_url(), 5672)
}

/// `amqps://` through a proxy that presents a certificate of the test's CA and requires a
/// client certificate of it: a call goes through; a wrong CA or no client certificate stops
/// the service with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_mutual_tls_takes_the_right_ca_and_refuses_the_wrong_one() {
    let ca = TestCa::new("cdr test CA");
    let server = ca.issue("broker", &["localhost"]);
    let client = ca.issue("client", &["cdr-service"]);
    let proxy = TlsProxy::start(rabbitmq(), Protocol::Tls, &server, Some(&ca)).await;
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let mut url = url::Url::parse(&amqp_url()).expect("the broker's URL");
    url.set_scheme("amqps").expect("scheme");
    url.set_host(Some("localhost")).expect("host");
    url.set_port(Some(proxy.addr().port())).expect("port");
    settings.amqp.url = (url.to_string()).into();
    settings.amqp.tls_ca_file = ca.ca_file();
    settings.amqp.tls_cert_file = client.cert.clone();
    settings.amqp.tls_key_file = client.key.clone();

    let running = Running::start(&settings).await;
    // The test publishes on the broker's plain listener; the service consumes over TLS.
    let publisher = cdr_storm::simulate::Publisher::connect(&amqp_url(), &settings.amqp.exchange)
        .await
        .expect("publisher");
    let pool = env.pool().await;
    let c = call("amqps");
    for e in c.events(true) {
        publisher.publish(&e).await.expect("publish");
    }
    let r = wait_for_row(&pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    running.stop().await;

    let other = TestCa::new("another CA");
    let mut wrong_ca = settings.clone();
    wrong_ca.amqp.tls_ca_file = other.ca_file();
    let mut no_client_cert = settings.clone();
    no_client_cert.amqp.tls_cert_file = Default::default();
    no_client_cert.amqp.tls_key_file = Default::default();
    for (what, s, says) in [
        ("a wrong CA", &wrong_ca, "UnknownIssuer"),
        (
            "no client certificate",
            &no_client_cert,
            "TLS to RabbitMQ failed",
        ),
    ] {
        let stderr = fails_at_start(&env, s);
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(!stderr.contains("guest:guest"), "{what}: {stderr}");
    }
    pool.close().await;
    env.cleanup(&settings).await;
}
