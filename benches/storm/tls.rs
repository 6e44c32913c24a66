//! TLS to both peers against none: the drain storm drained twice, back to back, each on a
//! fresh database and queue, the service reaching PostgreSQL and RabbitMQ through a proxy in
//! the bench either way, so that both drains take the same extra hop:
//!
//! - plain: TCP proxies (`cdr_testkit::proxy`), `sslmode=disable`, `amqp://`;
//! - TLS: TLS-terminating proxies with a CA the bench makes (`cdr_testkit::tls`), the service
//!   on `verify-full` to PostgreSQL and `amqps://` to RabbitMQ, each with a client certificate
//!   (mutual TLS).
//!
//! The ratio of the two rates is what TLS to both peers costs the service's drain; the proxies'
//! own work (TLS termination included) is the bench's CPU, outside the service's.

use serde::Serialize;

use crate::env::Env;
use crate::service_drain::{ServiceDrain, service_drain_with};
use crate::stats::finite;
use crate::{Protocol, Proxy, Storm, StormOptions, TestCa, TlsProxy, socket_address};

pub struct Tls {
    pub plain: ServiceDrain,
    pub tls: ServiceDrain,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFigures {
    pub plain_drain_events_per_s: Option<f64>,
    pub tls_drain_events_per_s: Option<f64>,
    /// TLS over plain.
    pub tls_vs_plain_ratio: Option<f64>,
    pub plain_service_cpu_us_per_event: Option<f64>,
    pub tls_service_cpu_us_per_event: Option<f64>,
    pub records_mismatched: usize,
    pub records_missing: usize,
}

impl Tls {
    pub fn figures(&self) -> TlsFigures {
        let us = |d: &ServiceDrain| {
            finite(
                d.cpu_whole.seconds().service * 1e6 / d.drain.events.max(1) as f64,
                2,
            )
        };
        TlsFigures {
            plain_drain_events_per_s: finite(self.plain.drain.rate(), 0),
            tls_drain_events_per_s: finite(self.tls.drain.rate(), 0),
            tls_vs_plain_ratio: finite(
                self.tls.drain.rate() / self.plain.drain.rate().max(1e-9),
                3,
            ),
            plain_service_cpu_us_per_event: us(&self.plain),
            tls_service_cpu_us_per_event: us(&self.tls),
            records_mismatched: self.plain.records_mismatched + self.tls.records_mismatched,
            records_missing: self.plain.records_missing + self.tls.records_missing,
        }
    }
}

/// `url` with another scheme, host and port.
fn moved(url: &str, scheme: &str, host: &str, port: u16) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url)?;
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot set the scheme {scheme}"))?;
    url.set_host(Some(host))?;
    url.set_port(Some(port))
        .map_err(|()| anyhow::anyhow!("cannot set the port"))?;
    Ok(url.to_string())
}

pub async fn tls(
    env: &mut Env,
    storm: &Storm,
    o: &StormOptions,
    round: usize,
) -> anyhow::Result<Tls> {
    let amqp = crate::env::amqp_url();
    let postgres = socket_address(&env.db_url, 5432);
    let broker = socket_address(&amqp, 5672);

    progress!("tls: service drain, plain, through TCP proxies");
    env.next_round(round).await?;
    let pg_plain = Proxy::start(postgres).await;
    let mq_plain = Proxy::start(broker).await;
    let plain_vars = [
        (
            "POSTGRES_URL",
            moved(&env.db_url, "postgres", "127.0.0.1", pg_plain.addr().port())?
                + "?sslmode=disable",
        ),
        (
            "RABBITMQ_URL",
            moved(&amqp, "amqp", "127.0.0.1", mq_plain.addr().port())?,
        ),
    ];
    let plain = service_drain_with(env, storm, o, &plain_vars).await?;
    drop((pg_plain, mq_plain));

    progress!("tls: service drain, TLS to both peers (verify-full, amqps, client certificates)");
    env.next_round(round + 1).await?;
    let ca = TestCa::new("cdr bench CA");
    let server = ca.issue("server", &["localhost"]);
    let client = ca.issue("client", &["cdr-service"]);
    let pg_tls = TlsProxy::start(postgres, Protocol::Postgres, &server, Some(&ca)).await;
    let mq_tls = TlsProxy::start(broker, Protocol::Tls, &server, Some(&ca)).await;
    let path = |p: &std::path::Path| p.display().to_string();
    let tls_vars = [
        (
            "POSTGRES_URL",
            moved(&env.db_url, "postgres", "localhost", pg_tls.addr().port())?,
        ),
        ("CDR__DATABASE__TLS_MODE", "verify-full".to_owned()),
        ("CDR__DATABASE__TLS_CA_FILE", path(&ca.ca_file())),
        ("CDR__DATABASE__TLS_CERT_FILE", path(&client.cert)),
        ("CDR__DATABASE__TLS_KEY_FILE", path(&client.key)),
        (
            "RABBITMQ_URL",
            moved(&amqp, "amqps", "localhost", mq_tls.addr().port())?,
        ),
        ("CDR__AMQP__TLS_CA_FILE", path(&ca.ca_file())),
        ("CDR__AMQP__TLS_CERT_FILE", path(&client.cert)),
        ("CDR__AMQP__TLS_KEY_FILE", path(&client.key)),
    ];
    let tls = service_drain_with(env, storm, o, &tls_vars).await?;
    progress!(
        "tls: plain {:.0} events/s, TLS {:.0} events/s: ratio {:.3}",
        plain.drain.rate(),
        tls.drain.rate(),
        tls.drain.rate() / plain.drain.rate().max(1e-9)
    );
    Ok(Tls { plain, tls })
}
