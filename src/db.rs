//! The PostgreSQL pool and the schema.

use secrecy::ExposeSecret;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::config::DatabaseSettings;
use crate::retry::Transient;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url {url:?} is not a valid connection string: {source}")]
    BadUrl { url: String, source: sqlx::Error },
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Begins a transaction that prefers index lookups to whole-table scans (`Pool::begin_with`).
/// The per-batch statements that pick a batch's keys (`call_id = ANY($1)`) out of `call_events`
/// or `open_calls` run in one. Those tables grow faster than autovacuum analyzes them, and on a
/// table it has no statistics for the planner may scan it whole and test every row against the
/// array one element after the other: 34 ms for one "logged before" query at 34,000 logged
/// events, 53 ms for closing 212 calls out of 2,700 open ones, where the indexes answer in about
/// a millisecond. A plan cached for a prepared statement is made under the setting too. Sent
/// with the `BEGIN`, as one simple query: the setting costs no round trip of its own.
pub const BEGIN_PREFERRING_INDEXES: &str = "BEGIN; SET LOCAL enable_seqscan = off";

/// A lazily connecting pool: the service starts (and reports not-ready) while the database is
/// down, and every user of the pool retries on its own schedule.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options = connect_options(settings)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// How the service connects (the pool, and the lease's connection of its own).
///
/// Its sessions run without parallel workers and without JIT: every statement it makes is a
/// short one over an index or a batch, for which starting workers or compiling costs more than
/// it saves (measured: recovery's chunk loads took three times as long with parallel workers),
/// and on a shared database they would take cores from the other sessions. Settings in the
/// URL's `options` come first; these are added after them.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions =
        settings
            .url
            .expose_secret()
            .parse()
            .map_err(|source| DbError::BadUrl {
                url: redact(settings.url.expose_secret()),
                source,
            })?;
    Ok(tls(options, settings)
        .application_name("cdr-service")
        .options(SESSION_SETTINGS))
}

/// The TLS settings over the URL's own (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`): each one
/// set wins, each one empty leaves the URL's. The files were checked at load.
fn tls(mut options: PgConnectOptions, settings: &DatabaseSettings) -> PgConnectOptions {
    if let Ok(mode) = settings.tls_mode.parse::<PgSslMode>() {
        options = options.ssl_mode(mode);
    }
    let set = |p: &std::path::Path| !p.as_os_str().is_empty();
    if set(&settings.tls_ca_file) {
        options = options.ssl_root_cert(&settings.tls_ca_file);
    }
    if set(&settings.tls_cert_file) {
        options = options
            .ssl_client_cert(&settings.tls_cert_file)
            .ssl_client_key(&settings.tls_key_file);
    }
    options
}

/// The settings of every session of the service (`connect_options`).
pub const SESSION_SETTINGS: [(&str, &str); 2] =
    [("max_parallel_workers_per_gather", "0"), ("jit", "off")];

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// "The database is not reachable right now" rather than "this statement is wrong for this
/// data": the former are retried, the latter isolated.
impl Transient for sqlx::Error {
    fn is_transient(&self) -> bool {
        match self {
            sqlx::Error::Database(db) => {
                // Class 08: connection exception; 53: insufficient resources; 57: operator
                // intervention (admin shutdown, cannot connect now); 40: serialization/deadlock;
                // 58: system error (an I/O error on the server); CD: `cdr_fence` (this instance
                // no longer holds the lease: nothing commits, and the lease watch stands it
                // down within one check).
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                ["08", "53", "57", "40", "58", "CD"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }
            // A TLS failure is a misconfiguration (a certificate that does not verify, a
            // server without TLS under `require`), never retried, unless the network failed
            // under the handshake.
            sqlx::Error::Tls(e) => network_failure(e.as_ref()),
            sqlx::Error::Io(e) => !crate::retry::tls_refused(e),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            _ => false,
        }
    }
}

/// Whether an error, or one it was caused by, is the network failing (not a verification or a
/// protocol refusal: rustls reports those as `InvalidData`).
fn network_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionReset
                    | ConnectionAborted
                    | ConnectionRefused
                    | BrokenPipe
                    | UnexpectedEof
                    | TimedOut
                    | NotConnected
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether PostgreSQL's connection failed on TLS itself (a certificate, a name, a server
/// without TLS), which only the settings can fix.
pub fn tls_refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(e) => !network_failure(e.as_ref()),
        sqlx::Error::Io(e) => crate::retry::tls_refused(e),
        _ => false,
    }
}

/// What to tell the operator a refusal came from: the TLS settings, or `what` failed.
pub fn refusal_context(e: &sqlx::Error, what: &'static str) -> &'static str {
    if tls_refused(e) {
        "TLS to PostgreSQL failed (database.tls_mode, database.tls_ca_file, \
         database.tls_cert_file, database.tls_key_file, or the URL's sslmode)"
    } else {
        what
    }
}

impl DbError {
    /// `refusal_context` for the error under this one.
    pub fn context(&self, what: &'static str) -> &'static str {
        match self {
            DbError::Sqlx(e) | DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                refusal_context(e, what)
            }
            _ => what,
        }
    }
}

/// Migrations are retried while the database is away; any other failure stops the start.
impl Transient for DbError {
    fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlx(e) | DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                e.is_transient()
            }
            _ => false,
        }
    }
}

/// True when the statement was refused because it would put a second row under the unique
/// index `index`.
pub fn violates_unique_index(error: &sqlx::Error, index: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                && db.constraint() == Some(index)
        }
        _ => false,
    }
}

/// A connection string without its password, for logs and error messages (`cdr_core::redact`:
/// whatever the string, parsable or not).
pub use cdr_core::redact::redact;
