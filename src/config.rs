//! Layered configuration: built-in defaults (`config/default.toml`), an optional file,
//! the platform's own environment names, then `CDR__SECTION__KEY` variables.
//!
//! Every value is checked here, at startup, so that a bad setting stops the service with a
//! message naming the key and the value instead of failing later in the middle of a call storm.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdr_core::redact::redact;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

/// The defaults, compiled in so that the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override any key: `CDR__TRACKER__LINGER=5s`.
pub const ENV_PREFIX: &str = "CDR__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: key `{key}` has invalid value {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// One of the platform's own variables (`LOG_FORMAT`, ...) holds a value it cannot take.
    #[error(
        "configuration: environment variable `{variable}` has invalid value {value:?}: {reason}"
    )]
    InvalidVariable {
        variable: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub ingest: IngestSettings,
    pub tracker: TrackerSettings,
    pub writer: WriterSettings,
    pub backoff: BackoffSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub runtime: RuntimeSettings,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A secret: `Debug` shows none of it; `expose_secret` where it is used, `redact` where it
    /// is shown.
    #[serde(serialize_with = "redacted")]
    pub url: SecretString,
    pub max_connections: u32,
    pub migrate: bool,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// TLS to PostgreSQL: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`; empty
    /// for the URL's `sslmode` (`prefer` without one, as libpq).
    pub tls_mode: String,
    /// PEM: the CA that signed the server's certificate; empty for the URL's `sslrootcert`,
    /// else the public roots.
    pub tls_ca_file: PathBuf,
    /// PEM: a client certificate and its key, for mutual TLS; empty for the URL's `sslcert` and
    /// `sslkey`, else none.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

/// The values `database.tls_mode` takes, as libpq's `sslmode`.
pub const TLS_MODES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// A secret, as `database.url`.
    #[serde(serialize_with = "redacted")]
    pub url: SecretString,
    pub exchange: String,
    pub accept_existing_exchange_type: bool,
    pub queue: String,
    /// The routing keys the queue is bound with (one string is read as a list of one). `#`,
    /// every event, by default; see README for a narrower list.
    #[serde(deserialize_with = "one_or_many")]
    pub binding_keys: Vec<String>,
    /// The earlier name, one key: when set (an older configuration), it is the binding.
    #[serde(default, skip_serializing)]
    pub binding_key: Option<String>,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Most messages the dead-letter queue holds (`x-max-length`); past it the oldest are
    /// dropped. 0: no bound on their number.
    pub dead_letter_max_length: u32,
    /// Most bytes of message bodies it holds (`x-max-length-bytes`), the oldest dropped past
    /// it. 0: no bound on their size.
    pub dead_letter_max_bytes: u64,
    /// Classic-queue storage version (`x-queue-version`) the service declares its queues with;
    /// 0 declares them without it (the broker's default or a policy decides).
    pub queue_version: u8,
    pub prefetch: u16,
    pub consumer_tag: String,
    /// PEM, for `amqps://`: the CA that signed the broker's certificate (empty: the public
    /// roots built into the binary), and a client certificate and its key for mutual TLS (with
    /// `?auth_mechanism=external` in the URL, RabbitMQ's `EXTERNAL` login by that certificate).
    pub tls_ca_file: PathBuf,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub batch_size: usize,
    #[serde(with = "duration")]
    pub batch_max_age: Duration,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub remembered_messages: usize,
    /// An event dated longer than this before its receive time is dead-lettered
    /// (`bad_timestamp`).
    #[serde(with = "duration")]
    pub max_event_age: Duration,
    /// An event dated longer than this after its receive time is dead-lettered
    /// (`bad_timestamp`).
    #[serde(with = "duration")]
    pub max_clock_skew: Duration,
}

impl IngestSettings {
    /// The window around its receive time an event's own timestamp must fall in.
    pub fn timestamp_window(&self) -> crate::event::TimestampWindow {
        let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        crate::event::TimestampWindow {
            past: span(self.max_event_age),
            future: span(self.max_clock_skew),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerSettings {
    #[serde(with = "duration")]
    pub linger: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub rest_after: Duration,
    pub restart_budget: u32,
    #[serde(with = "duration")]
    pub restart_window: Duration,
    /// Distinct events folded per call; past it the call is written from what it has, flagged
    /// `events_capped`, and quarantined.
    pub max_events_per_call: u32,
    /// Calls held in memory (with an actor or resting); past it new calls are deferred.
    pub max_open_calls: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    pub batch_size: usize,
    #[serde(with = "duration")]
    pub batch_max_age: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    #[serde(with = "duration")]
    pub initial: Duration,
    #[serde(with = "duration")]
    pub max: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// PEM: the certificate chain and key `listen` serves TLS with; both empty for plain HTTP.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// PEM: when set, clients must present a certificate this CA signed (mutual TLS).
    pub tls_client_ca_file: PathBuf,
    /// How often the certificate files are checked for a change (and read again when they
    /// changed): rotation without a restart.
    #[serde(with = "duration")]
    pub tls_reload_check: Duration,
    /// A second listener, plain HTTP, serving only `/health/*` and `/metrics`: probes and
    /// scrapers inside the pod while `listen` requires TLS. None: no such listener.
    #[serde(default)]
    pub probe_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    /// The node's name, a `node_hostname` field on every JSON line when set (`NODE_HOSTNAME`).
    #[serde(
        default,
        deserialize_with = "optional_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_hostname: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    #[serde(with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The lease's key: instances with the same key (on the same database) have at most one
    /// active among them. Empty: the queue's name.
    pub lease_key: String,
    /// How often a standby checks whether the lease is free, and the active that it still
    /// holds it.
    #[serde(with = "duration")]
    pub lease_check: Duration,
}

impl ClusterSettings {
    /// The lease's key for a service consuming `queue`.
    pub fn key<'a>(&'a self, queue: &'a str) -> &'a str {
        if self.lease_key.is_empty() {
            queue
        } else {
            &self.lease_key
        }
    }
}

/// The most worker threads `runtime.worker_threads` accepts.
pub const MAX_WORKER_THREADS: usize = 256;

/// The least `tracker.max_events_per_call` takes: a call's start, answer, identification,
/// recording, end and a few turns and reports always fit.
pub const MIN_EVENTS_PER_CALL: u32 = 16;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Worker threads of the async runtime; 0 picks them from the CPUs the process may use
    /// (see `runtime::worker_threads`).
    pub worker_threads: usize,
}

impl Settings {
    /// Loads the layered configuration from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the layered configuration with an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = with_secret_files(env.into_iter().collect())?;
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let platform = platform_overrides(&env, &figment)?;
        figment = figment.merge(Serialized::defaults(platform));
        // `Env` reads the real process environment; feed it ours through a closure-free
        // provider so that tests stay hermetic.
        let prefixed: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(ENV_PREFIX)
                    .map(|rest| (rest.to_ascii_lowercase().replace("__", "."), v.clone()))
            })
            .collect();
        for (key, value) in prefixed {
            figment = figment.merge(Serialized::default(&key, env_value(&value)));
        }
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e)))?;
        if let Some(key) = settings.amqp.binding_key.take() {
            settings.amqp.binding_keys = vec![key];
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value, in the order of the sections; the first bad one is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_database()?;
        self.validate_amqp()?;
        self.validate_http()?;
        self.validate_ingest()?;
        self.validate_the_rest()
    }

    /// `database.*`.
    fn validate_database(&self) -> Result<(), ConfigError> {
        let d = &self.database;
        if !(d.url.expose_secret().starts_with("postgres://")
            || d.url.expose_secret().starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                redact(d.url.expose_secret()),
                "must start with postgres:// or postgresql://",
            ));
        }
        if let Err(e) = d
            .url
            .expose_secret()
            .parse::<sqlx::postgres::PgConnectOptions>()
        {
            // sqlx's message may quote the string: only its kind is kept.
            let reason = match e {
                sqlx::Error::Configuration(_) => {
                    "is not a valid connection string (host, port, database or a parameter)"
                }
                _ => "is not a valid connection string",
            };
            return Err(invalid(
                "database.url",
                redact(d.url.expose_secret()),
                reason,
            ));
        }
        if !d.tls_mode.is_empty() && !TLS_MODES.contains(&d.tls_mode.as_str()) {
            return Err(invalid(
                "database.tls_mode",
                &d.tls_mode,
                &format!("must be one of {}", TLS_MODES.join(", ")),
            ));
        }
        check_pem("database.tls_ca_file", &d.tls_ca_file, Pem::Certificates)?;
        check_pem(
            "database.tls_cert_file",
            &d.tls_cert_file,
            Pem::Certificates,
        )?;
        check_pem("database.tls_key_file", &d.tls_key_file, Pem::PrivateKey)?;
        if d.tls_cert_file.as_os_str().is_empty() != d.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "database.tls_key_file",
                d.tls_key_file.display(),
                "a client certificate (database.tls_cert_file) and its key go together",
            ));
        }
        if self.database.max_connections < 2 {
            return Err(invalid(
                "database.max_connections",
                self.database.max_connections,
                "must be at least 2 (the event log and the record writer each hold one)",
            ));
        }
        Ok(())
    }

    /// `http.*`: the TLS files read and parsed, and set together.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        check_pem("http.tls_cert_file", &h.tls_cert_file, Pem::Certificates)?;
        check_pem("http.tls_key_file", &h.tls_key_file, Pem::PrivateKey)?;
        check_pem(
            "http.tls_client_ca_file",
            &h.tls_client_ca_file,
            Pem::Certificates,
        )?;
        let set = |p: &Path| !p.as_os_str().is_empty();
        if set(&h.tls_cert_file) != set(&h.tls_key_file) {
            return Err(invalid(
                "http.tls_key_file",
                h.tls_key_file.display(),
                "the listener's certificate (http.tls_cert_file) and its key go together",
            ));
        }
        if set(&h.tls_client_ca_file) && !set(&h.tls_cert_file) {
            return Err(invalid(
                "http.tls_client_ca_file",
                h.tls_client_ca_file.display(),
                "client certificates need TLS on the listener: set http.tls_cert_file and http.tls_key_file",
            ));
        }
        if h.tls_reload_check.is_zero() {
            return Err(invalid("http.tls_reload_check", "0s", "must be above zero"));
        }
        if let Some(probe) = h.probe_listen
            && probe == h.listen
        {
            return Err(invalid(
                "http.probe_listen",
                probe,
                "must differ from http.listen",
            ));
        }
        Ok(())
    }

    /// `amqp.*`.
    fn validate_amqp(&self) -> Result<(), ConfigError> {
        if !(self.amqp.url.expose_secret().starts_with("amqp://")
            || self.amqp.url.expose_secret().starts_with("amqps://"))
        {
            return Err(invalid(
                "amqp.url",
                redact(self.amqp.url.expose_secret()),
                "must start with amqp:// or amqps://",
            ));
        }
        if self
            .amqp
            .url
            .expose_secret()
            .parse::<lapin::uri::AMQPUri>()
            .is_err()
        {
            return Err(invalid(
                "amqp.url",
                redact(self.amqp.url.expose_secret()),
                "is not a valid AMQP URI (host, port, vhost or a parameter)",
            ));
        }
        for (key, value) in [
            ("amqp.exchange", &self.amqp.exchange),
            ("amqp.queue", &self.amqp.queue),
            ("amqp.dead_letter_exchange", &self.amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
        ] {
            if value.trim().is_empty() || value.len() > 255 {
                return Err(invalid(key, value, "must be 1 to 255 characters"));
            }
        }
        let a = &self.amqp;
        check_pem("amqp.tls_ca_file", &a.tls_ca_file, Pem::Certificates)?;
        check_pem("amqp.tls_cert_file", &a.tls_cert_file, Pem::Certificates)?;
        check_pem("amqp.tls_key_file", &a.tls_key_file, Pem::PrivateKey)?;
        if a.tls_cert_file.as_os_str().is_empty() != a.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "amqp.tls_key_file",
                a.tls_key_file.display(),
                "a client certificate (amqp.tls_cert_file) and its key go together",
            ));
        }
        if self.amqp.binding_keys.is_empty() {
            return Err(invalid(
                "amqp.binding_keys",
                "[]",
                "must name at least one routing key (`#` for every event)",
            ));
        }
        if let Some(key) = self
            .amqp
            .binding_keys
            .iter()
            .find(|k| k.contains([',', ' ']) || k.len() > 255)
        {
            return Err(invalid(
                "amqp.binding_keys",
                key,
                "each routing key is one word pattern of up to 255 characters, without commas \
                 or spaces (several keys are a list: [\"call.#\", \"user.identified.for_call\"])",
            ));
        }
        if self.amqp.exchange == self.amqp.dead_letter_exchange {
            return Err(invalid(
                "amqp.dead_letter_exchange",
                &self.amqp.dead_letter_exchange,
                "must differ from amqp.exchange, or dead letters would be consumed again",
            ));
        }
        if self.amqp.queue_version > 2 {
            return Err(invalid(
                "amqp.queue_version",
                self.amqp.queue_version,
                "must be 1 or 2 (RabbitMQ's classic-queue versions), or 0 to leave it to the broker",
            ));
        }
        if self.amqp.prefetch == 0 {
            return Err(invalid(
                "amqp.prefetch",
                0,
                "must be at least 1 (0 would mean unlimited)",
            ));
        }
        Ok(())
    }

    /// `ingest.*`, and the prefetch that must hold a whole batch.
    fn validate_ingest(&self) -> Result<(), ConfigError> {
        if self.ingest.batch_size == 0 || self.ingest.batch_size > 10_000 {
            return Err(invalid(
                "ingest.batch_size",
                self.ingest.batch_size,
                "must be between 1 and 10000",
            ));
        }
        if usize::from(self.amqp.prefetch) < self.ingest.batch_size {
            return Err(invalid(
                "amqp.prefetch",
                self.amqp.prefetch,
                "must be at least ingest.batch_size, or batches could never fill",
            ));
        }
        if self.ingest.max_body_bytes < 1024 {
            return Err(invalid(
                "ingest.max_body_bytes",
                self.ingest.max_body_bytes,
                "must be at least 1024",
            ));
        }
        if self.ingest.max_json_depth < 4 || self.ingest.max_json_depth > 512 {
            return Err(invalid(
                "ingest.max_json_depth",
                self.ingest.max_json_depth,
                "must be between 4 and 512",
            ));
        }
        if self.ingest.max_event_age < Duration::from_secs(3600) {
            return Err(invalid(
                "ingest.max_event_age",
                humantime::format_duration(self.ingest.max_event_age),
                "must be at least 1h",
            ));
        }
        if self.ingest.max_clock_skew < Duration::from_secs(1) {
            return Err(invalid(
                "ingest.max_clock_skew",
                humantime::format_duration(self.ingest.max_clock_skew),
                "must be at least 1s",
            ));
        }
        if self.ingest.remembered_messages > 100_000_000 {
            return Err(invalid(
                "ingest.remembered_messages",
                self.ingest.remembered_messages,
                "must be at most 100000000 (16 bytes each)",
            ));
        }
        Ok(())
    }

    /// `writer`, `tracker`, `backoff`, `runtime` and `log`.
    fn validate_the_rest(&self) -> Result<(), ConfigError> {
        if self.writer.batch_size == 0 || self.writer.batch_size > 10_000 {
            return Err(invalid(
                "writer.batch_size",
                self.writer.batch_size,
                "must be between 1 and 10000",
            ));
        }
        if self.tracker.idle_timeout <= self.tracker.linger {
            return Err(invalid(
                "tracker.idle_timeout",
                humantime::format_duration(self.tracker.idle_timeout),
                "must be longer than tracker.linger",
            ));
        }
        if self.tracker.rest_after.is_zero() {
            return Err(invalid(
                "tracker.rest_after",
                humantime::format_duration(self.tracker.rest_after),
                "must be above zero",
            ));
        }
        if self.tracker.restart_budget == 0 {
            return Err(invalid("tracker.restart_budget", 0, "must be at least 1"));
        }
        if self.tracker.max_events_per_call < MIN_EVENTS_PER_CALL {
            return Err(invalid(
                "tracker.max_events_per_call",
                self.tracker.max_events_per_call,
                &format!("must be at least {MIN_EVENTS_PER_CALL}"),
            ));
        }
        if self.tracker.max_open_calls == 0 {
            return Err(invalid("tracker.max_open_calls", 0, "must be at least 1"));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(invalid(
                "backoff.max",
                humantime::format_duration(self.backoff.max),
                "backoff.initial must be non-zero and backoff.max at least backoff.initial",
            ));
        }
        if self.cluster.lease_check < Duration::from_millis(100)
            || self.cluster.lease_check > Duration::from_secs(60)
        {
            return Err(invalid(
                "cluster.lease_check",
                humantime::format_duration(self.cluster.lease_check),
                "must be between 100ms and 60s",
            ));
        }
        if self.runtime.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "runtime.worker_threads",
                self.runtime.worker_threads,
                &format!(
                    "must be between 0 (one fewer than the CPUs available) and {MAX_WORKER_THREADS}"
                ),
            ));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "log.level",
                &self.log.level,
                "is not a tracing filter (try \"info\" or \"cdr_service=debug\")",
            ));
        }
        Ok(())
    }
}

/// The error for `key` set to `value`.
/// A secret connection string serialized as `redact` shows it.
fn redacted<S: serde::Serializer>(url: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact(url.expose_secret()))
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    /// One or more certificates.
    Certificates,
    /// One private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Checks at load that a configured PEM file can be read and holds what it must, so that a
/// TLS misconfiguration stops the start with the key and the path rather than failing every
/// connection later. An empty path is not configured.
fn check_pem(key: &'static str, path: &Path, what: Pem) -> Result<(), ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| invalid(key, &shown, &format!("cannot be read: {e}")))?;
    match what {
        Pem::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            match certs {
                Ok(certs) if !certs.is_empty() => Ok(()),
                Ok(_) => Err(invalid(key, &shown, "holds no PEM certificate")),
                Err(e) => Err(invalid(key, &shown, &format!("is not valid PEM: {e}"))),
            }
        }
        Pem::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes)
            .map(|_| ())
            .map_err(|e| invalid(key, &shown, &format!("holds no PEM private key: {e}"))),
    }
}

fn invalid(key: &'static str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The error for the platform's variable `variable` set to `value`.
fn invalid_variable(variable: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidVariable {
        variable,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The platform's own variable names, which deployments already set, as the keys they set.
/// `below` is the configuration they layer over (defaults and file): `CDR_SERVICE_METRICS_PORT`
/// keeps the host of its `http.listen`.
/// The variables holding a secret (a connection string with its password), each of which can
/// also be given as `<NAME>_FILE`: the path of a file holding it, as container secret mounts
/// provide.
pub const SECRET_VARIABLES: [&str; 5] = [
    "POSTGRES_URL",
    "DATABASE_URL",
    "RABBITMQ_URL",
    "CDR__DATABASE__URL",
    "CDR__AMQP__URL",
];

/// `env` with each `<NAME>_FILE` of `SECRET_VARIABLES` replaced by `<NAME>` set to the file's
/// content (a final line break dropped). Setting both is an error, as is a file that cannot be
/// read; neither message holds the secret.
fn with_secret_files(mut env: Vec<(String, String)>) -> Result<Vec<(String, String)>, ConfigError> {
    for name in SECRET_VARIABLES {
        let file_var = format!("{name}_FILE");
        let Some(path) = env
            .iter()
            .find(|(k, v)| *k == file_var && !v.is_empty())
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        if env.iter().any(|(k, v)| k == name && !v.is_empty()) {
            return Err(ConfigError::Load(format!(
                "both {name} and {file_var} are set: set one"
            )));
        }
        let content = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::Load(format!("{file_var}: cannot read {path}: {e}")))?;
        let value = content.strip_suffix('\n').unwrap_or(&content);
        let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
        env.retain(|(k, _)| k != name && *k != file_var);
        env.push((name.to_owned(), value));
    }
    Ok(env)
}

fn platform_overrides(
    env: &[(String, String)],
    below: &Figment,
) -> Result<figment::value::Dict, ConfigError> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let mut database = figment::value::Dict::new();
    if let Some(url) = get("POSTGRES_URL").or_else(|| get("DATABASE_URL")) {
        database.insert("url".into(), url.into());
    }
    let mut amqp = figment::value::Dict::new();
    if let Some(url) = get("RABBITMQ_URL") {
        amqp.insert("url".into(), url.into());
    }
    let mut log = figment::value::Dict::new();
    if let Some(env_name) = get("ENV") {
        let format = if env_name.eq_ignore_ascii_case("production") {
            "json"
        } else {
            "console"
        };
        log.insert("format".into(), format.into());
    }
    // LOG_FORMAT wins over the format ENV implies.
    if let Some(raw) = get("LOG_FORMAT") {
        let format = match raw.trim().to_ascii_lowercase().as_str() {
            "json" => "json",
            "console" => "console",
            _ => {
                return Err(invalid_variable(
                    "LOG_FORMAT",
                    &raw,
                    "must be `json` or `console`",
                ));
            }
        };
        log.insert("format".into(), format.into());
    }
    if let Some(level) = get("LOG_LEVEL") {
        log.insert("level".into(), level.to_ascii_lowercase().into());
    }
    if let Some(name) = get("NODE_HOSTNAME") {
        log.insert("node_hostname".into(), name.into());
    }
    let mut http = figment::value::Dict::new();
    if let Some(raw) = get("CDR_SERVICE_METRICS_PORT") {
        let port = raw
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                invalid_variable(
                    "CDR_SERVICE_METRICS_PORT",
                    &raw,
                    "must be a port number, 1 to 65535",
                )
            })?;
        // A listen address the layers below got wrong is left as it is: its own error, naming
        // `http.listen`, is the one reported.
        if let Ok(mut listen) = below.extract_inner::<SocketAddr>("http.listen") {
            listen.set_port(port);
            http.insert("listen".into(), listen.to_string().into());
        }
    }
    let mut root = figment::value::Dict::new();
    for (name, dict) in [
        ("database", database),
        ("amqp", amqp),
        ("log", log),
        ("http", http),
    ] {
        if !dict.is_empty() {
            root.insert(name.into(), dict.into());
        }
    }
    Ok(root)
}

/// Environment values are strings; numbers and booleans are recognised the way TOML would,
/// and a list of strings written as an array (`["call.#","user.identified.for_call"]`).
fn env_value(raw: &str) -> figment::value::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return b.into();
    }
    if raw.trim_start().starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<String>>(raw)
    {
        return list.into();
    }
    if let Ok(n) = raw.parse::<u64>() {
        return n.into();
    }
    raw.into()
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::from("(top level)")
            } else {
                e.path.join(".")
            };
            format!("key `{key}`: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// humantime durations whose parse errors repeat the offending value.
mod duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_duration(&raw).map_err(|e| {
            serde::de::Error::custom(format!(
                "{raw:?} is not a duration ({e}); write it like \"250ms\", \"2s\" or \"2h\""
            ))
        })
    }
}

/// An optional name: a string, or what the environment reads as a number or a boolean (a node
/// may well be called `42`). Blank is none; the name is trimmed.
fn optional_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Name;

    impl serde::de::Visitor<'_> for Name {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a name (a string)")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    let name = d.deserialize_any(Name)?;
    let name = name.trim();
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// A list of strings, or one string as a list of one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.amqp.exchange, "sentiric_events");
        assert_eq!(s.amqp.queue, "sentiric.cdr_service.events");
        assert_eq!(s.http.listen.port(), 12052);
        assert_eq!(s.tracker.linger, Duration::from_secs(2));
        assert_eq!(s.tracker.rest_after, Duration::from_secs(30));
        assert_eq!(s.ingest.max_body_bytes, 1024 * 1024);
        assert_eq!(s.runtime.worker_threads, 0, "0: sized from the CPUs");
    }

    #[test]
    fn secrets_come_from_files_and_never_into_messages() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, "postgres://cdr:S3cretPW@db:5432/cdr\n").unwrap();
        let mq = dir.path().join("mq");
        std::fs::write(&mq, "amqps://cdr:S3cretPW@mq:5671/%2f").unwrap();
        let s = Settings::load_from(
            None,
            env(&[
                ("POSTGRES_URL_FILE", db.to_str().unwrap()),
                ("CDR__AMQP__URL_FILE", mq.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://cdr:S3cretPW@db:5432/cdr"
        );
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqps://cdr:S3cretPW@mq:5671/%2f"
        );
        let both = Settings::load_from(
            None,
            env(&[
                ("POSTGRES_URL_FILE", db.to_str().unwrap()),
                ("POSTGRES_URL", "postgres://cdr:S3cretPW@db/cdr"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("POSTGRES_URL_FILE") && !both.contains("S3cret"),
            "{both}"
        );
        let missing = Settings::load_from(None, env(&[("RABBITMQ_URL_FILE", "/nowhere/mq")]))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("RABBITMQ_URL_FILE") && missing.contains("/nowhere/mq"),
            "{missing}"
        );
        for (var, url) in [
            ("POSTGRES_URL", "postgress://cdr:S3cretPW@db:5432/cdr"),
            ("POSTGRES_URL", "postgres://cdr:S3cretPW@db:99999/cdr"),
            ("POSTGRES_URL", "postgres://cdr:S3cret/PW@db:5432/cdr"),
            ("POSTGRES_URL", "postgres://db/cdr?password=S3cretPW&port=x"),
            ("RABBITMQ_URL", "ampq://cdr:S3cretPW@mq/%2f"),
            ("RABBITMQ_URL", "amqp://cdr:S3cretPW@mq:notaport/%2f"),
            (
                "RABBITMQ_URL",
                "amqp://cdr:S3cretPW@mq:5672/%2f?heartbeat=x",
            ),
        ] {
            let err = Settings::load_from(None, env(&[(var, url)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("url") && !err.contains("S3cret"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn platform_names_and_prefixed_variables_override() {
        let s = Settings::load_from(
            None,
            env(&[
                ("DATABASE_URL", "postgres://a@h/db1"),
                ("RABBITMQ_URL", "amqp://u:p@h:5672/%2f"),
                ("ENV", "production"),
                ("LOG_LEVEL", "DEBUG"),
                ("CDR__TRACKER__LINGER", "750ms"),
                ("CDR__AMQP__PREFETCH", "9000"),
                ("CDR__AMQP__ACCEPT_EXISTING_EXCHANGE_TYPE", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://a@h/db1");
        assert_eq!(s.amqp.url.expose_secret(), "amqp://u:p@h:5672/%2f");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.log.level, "debug");
        assert_eq!(s.tracker.linger, Duration::from_millis(750));
        assert_eq!(s.amqp.prefetch, 9000);
        assert!(s.amqp.accept_existing_exchange_type);
    }

    /// A `--config` file with `text`, in a directory that lives as long as the returned guard.
    fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn log_format_wins_over_env_and_gives_way_to_the_prefixed_key() {
        let format =
            |pairs: &[(&str, &str)]| Settings::load_from(None, env(pairs)).unwrap().log.format;
        assert_eq!(format(&[("LOG_FORMAT", "json")]), LogFormat::Json);
        assert_eq!(format(&[("LOG_FORMAT", "console")]), LogFormat::Console);
        assert_eq!(
            format(&[("LOG_FORMAT", "JSON")]),
            LogFormat::Json,
            "any case"
        );
        assert_eq!(
            format(&[("ENV", "production"), ("LOG_FORMAT", "console")]),
            LogFormat::Console,
            "LOG_FORMAT wins over ENV=production"
        );
        assert_eq!(
            format(&[("ENV", "development"), ("LOG_FORMAT", "json")]),
            LogFormat::Json,
            "LOG_FORMAT wins over another ENV"
        );
        assert_eq!(
            format(&[("ENV", "production"), ("LOG_FORMAT", "")]),
            LogFormat::Json,
            "an empty LOG_FORMAT is unset"
        );
        assert_eq!(
            format(&[("LOG_FORMAT", "json"), ("CDR__LOG__FORMAT", "console")]),
            LogFormat::Console,
            "CDR__LOG__FORMAT wins over LOG_FORMAT"
        );
        let (_dir, path) = config_file("[log]\nformat = \"console\"\n");
        let s = Settings::load_from(Some(&path), env(&[("LOG_FORMAT", "json")])).unwrap();
        assert_eq!(
            s.log.format,
            LogFormat::Json,
            "LOG_FORMAT wins over the file"
        );
    }

    /// The error is about the platform's variable `name`, and its text names it and `value`.
    fn assert_names_variable(e: &ConfigError, name: &str, value: &str) {
        assert!(
            matches!(e, ConfigError::InvalidVariable { variable, value: v, .. }
                if *variable == name && v == value),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains(&format!("`{name}`")), "{text}");
        assert!(text.contains(&format!("{value:?}")), "{text}");
    }

    #[test]
    fn a_bad_log_format_names_the_variable_and_the_value() {
        for value in ["xml", "text", "jsonl"] {
            let e = Settings::load_from(None, env(&[("ENV", "production"), ("LOG_FORMAT", value)]))
                .unwrap_err();
            assert_names_variable(&e, "LOG_FORMAT", value);
            assert!(e.to_string().contains("`json` or `console`"), "{e}");
        }
    }

    #[test]
    fn node_hostname_is_a_setting_the_platform_name_sets() {
        let host = |file: Option<&Path>, pairs: &[(&str, &str)]| {
            Settings::load_from(file, env(pairs))
                .unwrap()
                .log
                .node_hostname
        };
        assert_eq!(host(None, &[]), None, "none by default");
        assert_eq!(
            host(None, &[("NODE_HOSTNAME", "node-1")]).as_deref(),
            Some("node-1")
        );
        assert_eq!(host(None, &[("NODE_HOSTNAME", "")]), None, "empty is unset");
        assert_eq!(
            host(None, &[("CDR__LOG__NODE_HOSTNAME", "node-2")]).as_deref(),
            Some("node-2")
        );
        assert_eq!(
            host(
                None,
                &[
                    ("NODE_HOSTNAME", "node-1"),
                    ("CDR__LOG__NODE_HOSTNAME", "node-2")
                ]
            )
            .as_deref(),
            Some("node-2"),
            "CDR__LOG__NODE_HOSTNAME wins over NODE_HOSTNAME"
        );
        assert_eq!(
            host(None, &[("CDR__LOG__NODE_HOSTNAME", "42")]).as_deref(),
            Some("42"),
            "digits are a name, not a number"
        );
        assert_eq!(
            host(None, &[("CDR__LOG__NODE_HOSTNAME", "  ")]),
            None,
            "blank is unset"
        );
        let (_dir, path) = config_file("[log]\nnode_hostname = \"from-file\"\n");
        assert_eq!(host(Some(&path), &[]).as_deref(), Some("from-file"));
        assert_eq!(
            host(Some(&path), &[("NODE_HOSTNAME", "node-1")]).as_deref(),
            Some("node-1"),
            "NODE_HOSTNAME wins over the file"
        );
    }

    #[test]
    fn metrics_port_sets_the_port_of_http_listen_and_keeps_its_host() {
        let listen = |file: Option<&Path>, pairs: &[(&str, &str)]| {
            Settings::load_from(file, env(pairs))
                .unwrap()
                .http
                .listen
                .to_string()
        };
        assert_eq!(listen(None, &[]), "0.0.0.0:12052");
        assert_eq!(
            listen(None, &[("CDR_SERVICE_METRICS_PORT", "9100")]),
            "0.0.0.0:9100"
        );
        assert_eq!(
            listen(None, &[("CDR_SERVICE_METRICS_PORT", "")]),
            "0.0.0.0:12052",
            "empty is unset"
        );
        let (_dir, path) = config_file("[http]\nlisten = \"127.0.0.1:8000\"\n");
        assert_eq!(
            listen(Some(&path), &[("CDR_SERVICE_METRICS_PORT", "9100")]),
            "127.0.0.1:9100",
            "the file's host is kept"
        );
        let (_dir6, path6) = config_file("[http]\nlisten = \"[::1]:8000\"\n");
        assert_eq!(
            listen(Some(&path6), &[("CDR_SERVICE_METRICS_PORT", "9100")]),
            "[::1]:9100"
        );
        assert_eq!(
            listen(
                Some(&path),
                &[
                    ("CDR_SERVICE_METRICS_PORT", "9100"),
                    ("CDR__HTTP__LISTEN", "127.0.0.2:7000"),
                ]
            ),
            "127.0.0.2:7000",
            "CDR__HTTP__LISTEN wins over CDR_SERVICE_METRICS_PORT"
        );
    }

    #[test]
    fn a_bad_metrics_port_names_the_variable_and_the_value() {
        for value in ["metrics", "0", "65536", "-1", "9100x", "12.5"] {
            let e =
                Settings::load_from(None, env(&[("CDR_SERVICE_METRICS_PORT", value)])).unwrap_err();
            assert_names_variable(&e, "CDR_SERVICE_METRICS_PORT", value);
            assert!(e.to_string().contains("port number"), "{e}");
        }
        // Even when CDR__HTTP__LISTEN would win: a bad value is not silently ignored.
        let e = Settings::load_from(
            None,
            env(&[
                ("CDR_SERVICE_METRICS_PORT", "metrics"),
                ("CDR__HTTP__LISTEN", "127.0.0.1:7000"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("CDR_SERVICE_METRICS_PORT"), "{e}");
        // A listen address the file got wrong is reported as itself.
        let (_dir, path) = config_file("[http]\nlisten = \"nowhere\"\n");
        let e = Settings::load_from(Some(&path), env(&[("CDR_SERVICE_METRICS_PORT", "9100")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
    }

    #[test]
    fn binding_keys_are_a_list_and_one_key_is_a_list_of_one() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.amqp.binding_keys, ["#"]);
        let s = Settings::load_from(
            None,
            env(&[(
                "CDR__AMQP__BINDING_KEYS",
                r#"["call.#","user.identified.for_call"]"#,
            )]),
        )
        .unwrap();
        assert_eq!(s.amqp.binding_keys, ["call.#", "user.identified.for_call"]);
        let s = Settings::load_from(None, env(&[("CDR__AMQP__BINDING_KEYS", "call.#")])).unwrap();
        assert_eq!(s.amqp.binding_keys, ["call.#"]);
        let e = Settings::load_from(None, env(&[("CDR__AMQP__BINDING_KEYS", "[]")])).unwrap_err();
        assert!(e.to_string().contains("amqp.binding_keys"), "{e}");
        let e = Settings::load_from(
            None,
            env(&[("CDR__AMQP__BINDING_KEYS", "call.#,user.identified.for_call")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without commas"), "{e}");
        // The earlier name still works, and wins over the default list.
        let s = Settings::load_from(None, env(&[("CDR__AMQP__BINDING_KEY", "call.#")])).unwrap();
        assert_eq!(s.amqp.binding_keys, ["call.#"]);
    }

    #[test]
    fn postgres_url_wins_over_database_url() {
        let s = Settings::load_from(
            None,
            env(&[
                ("DATABASE_URL", "postgres://a@h/one"),
                ("POSTGRES_URL", "postgres://a@h/two"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://a@h/two");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let err = Settings::load_from(None, env(&[("CDR__TRACKER__LINGER", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tracker.linger"), "{err}");
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn bad_number_names_key_and_value() {
        let err = Settings::load_from(None, env(&[("CDR__AMQP__PREFETCH", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.prefetch"), "{err}");
        assert!(err.contains("lots"), "{err}");
    }

    #[test]
    fn semantic_errors_name_key_and_value() {
        // (variable, value, the key and the value the error must name)
        for (var, value, key, shown) in [
            ("CDR__AMQP__PREFETCH", "0", "amqp.prefetch", "\"0\""),
            (
                "CDR__AMQP__QUEUE_VERSION",
                "3",
                "amqp.queue_version",
                "\"3\"",
            ),
            ("POSTGRES_URL", "mysql://x", "database.url", "mysql://x"),
            (
                "CDR__TRACKER__IDLE_TIMEOUT",
                "1s",
                "tracker.idle_timeout",
                "1s",
            ),
            (
                "CDR__RUNTIME__WORKER_THREADS",
                "100000",
                "runtime.worker_threads",
                "100000",
            ),
            ("CDR__TRACKER__REST_AFTER", "0s", "tracker.rest_after", "0s"),
        ] {
            let err = Settings::load_from(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(shown), "{err}");
        }
    }

    #[test]
    fn unknown_key_in_file_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.toml");
        std::fs::write(&path, "[tracker]\nlinger = \"1s\"\nlingr = \"2s\"\n").unwrap();
        let err = Settings::load_from(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lingr"), "{err}");
    }

    #[test]
    fn file_layers_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.toml");
        std::fs::write(&path, "[amqp]\nexchange = \"other\"\n").unwrap();
        let s = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(s.amqp.exchange, "other");
        assert_eq!(s.amqp.queue, "sentiric.cdr_service.events");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/cdr.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/cdr.toml"), "{err}");
    }
}
