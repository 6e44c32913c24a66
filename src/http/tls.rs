//! TLS on the HTTP listener: the certificate and key of `http.tls_cert_file` and
//! `http.tls_key_file`, client certificates required when `http.tls_client_ca_file` is set
//! (mutual TLS), and the files read again when they change, so that a renewed certificate is
//! served without a restart.
//!
//! [`TlsListener`] is an axum listener: a task accepts TCP connections and completes each
//! handshake in a task of its own (bounded by `HANDSHAKE_TIMEOUT`), so that a slow or hostile
//! client holds up only itself; the listener hands over the connections whose handshake
//! succeeded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use metrics::counter;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::HttpSettings;
use crate::telemetry::metric;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes done, waiting for the server to take their connections.
const ACCEPTED_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("the HTTP listener's TLS settings: {0}")]
    Config(#[from] rustls::Error),
}

/// The files the listener's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of `http.tls_*`; None when the listener is plain HTTP.
    pub fn of(settings: &HttpSettings) -> Option<TlsFiles> {
        let set = |p: &Path| !p.as_os_str().is_empty();
        set(&settings.tls_cert_file).then(|| TlsFiles {
            cert: settings.tls_cert_file.clone(),
            key: settings.tls_key_file.clone(),
            client_ca: set(&settings.tls_client_ca_file)
                .then(|| settings.tls_client_ca_file.clone()),
        })
    }

    /// The server's configuration, read from the files now.
    fn load(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = crypto_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("http.tls_client_ca_file", ca)? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::File {
                            key: "http.tls_client_ca_file",
                            path: ca.display().to_string(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = certificates("http.tls_cert_file", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            key: "http.tls_key_file",
            path: self.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// When the files last changed (the latest of their modification times).
    fn modified(&self) -> Option<SystemTime> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
    }
}

/// ring, the provider every TLS stack of the service is built with (aws-lc would need cmake).
/// rustls deprecates ring's provider for lacking post-quantum key exchange, which the
/// service's peers do not offer either.
#[allow(deprecated)]
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(file("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Serves TLS on `listener` with the configuration read from `files` now (an error if it
    /// cannot be made), read again every `reload_check` once the files change. Stops when
    /// `shutdown` fires.
    pub fn start(
        listener: TcpListener,
        files: TlsFiles,
        reload_check: Duration,
        shutdown: CancellationToken,
    ) -> Result<TlsListener, TlsError> {
        let local = listener.local_addr().map_err(|e| TlsError::File {
            key: "http.listen",
            path: String::new(),
            reason: e.to_string(),
        })?;
        let current = Arc::new(RwLock::new(Arc::new(files.load()?)));
        tokio::spawn(reload(
            files,
            current.clone(),
            reload_check,
            shutdown.clone(),
        ));
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept(listener, current, tx, shutdown));
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept task ended (shutdown): nothing more comes; the server stops on the
            // same token.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts connections and completes their handshakes, each in a task of its own.
async fn accept(
    listener: TcpListener,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    accepted: mpsc::Sender<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    shutdown: CancellationToken,
) {
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(connection) => connection,
                Err(e) => {
                    warn!(error = %e, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let config = current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let handshake = TlsAcceptor::from(config).accept(socket);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => {
                    let _ = accepted.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    counter!(metric::HTTP_TLS_HANDSHAKES_FAILED.name).increment(1);
                    debug!(%peer, error = %e, "HTTP listener: TLS handshake refused");
                }
                Err(_) => {
                    counter!(metric::HTTP_TLS_HANDSHAKES_FAILED.name).increment(1);
                    debug!(%peer, "HTTP listener: TLS handshake timed out");
                }
            }
        });
    }
}

/// Reads the files again whenever they changed; a set that does not make a configuration (a
/// certificate without its new key, mid-rotation) keeps the one in use, and is tried again at
/// the next check.
async fn reload(
    files: TlsFiles,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut loaded = files.modified();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let modified = files.modified();
        if modified == loaded {
            continue;
        }
        match files.load() {
            Ok(config) => {
                *current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                loaded = modified;
                counter!(metric::HTTP_TLS_RELOADS.name, "outcome" => "loaded").increment(1);
                info!(cert = %files.cert.display(), "HTTP listener: certificate reloaded");
            }
            Err(e) => {
                counter!(metric::HTTP_TLS_RELOADS.name, "outcome" => "failed").increment(1);
                warn!(error = %e, "HTTP listener: the changed certificate files do not load; serving the previous ones");
            }
        }
    }
}
