//! TLS for the tests: a certificate authority made for the test ([`TestCa`]), and a proxy that
//! terminates TLS with one of its certificates in front of a plain listener ([`TlsProxy`]),
//! speaking PostgreSQL's `SSLRequest` first where the protocol needs it. The machine's own
//! PostgreSQL and RabbitMQ stay as they are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A CA of the test's own, whose certificates and keys are written as PEM files in a
/// directory that lives as long as it does.
pub struct TestCa {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("a directory for the certificates");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write the CA");
        TestCa { dir, cert, key }
    }

    /// The CA's certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate the CA signs, for the DNS names or IP addresses `names` (a server's) or
    /// with `names[0]` as its common name (a client's), written as `<file>.pem` and
    /// `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> CertFiles {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("certificate params");
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *name);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The host and port of a URL as a socket address (`localhost` as 127.0.0.1), for a proxy's
/// upstream.
pub fn socket_address(url: &str, default_port: u16) -> SocketAddr {
    let url = url::Url::parse(url).expect("a URL");
    let host = match url.host_str() {
        None | Some("localhost") => "127.0.0.1",
        Some(host) => host,
    };
    format!("{host}:{}", url.port().unwrap_or(default_port))
        .parse()
        .expect("an address")
}

/// What the proxy's clients speak before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS from the first byte (AMQPS, HTTPS).
    Tls,
    /// PostgreSQL: an `SSLRequest`, answered `S`, then TLS; the upstream gets the plain
    /// protocol that follows.
    Postgres,
}

/// Terminates TLS with `server` (its certificate, and the client CA it asks for, if any) and
/// forwards the plain bytes to `upstream`.
pub struct TlsProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsProxy {
    /// `client_ca`: require a client certificate signed by it (mutual TLS).
    pub async fn start(
        upstream: SocketAddr,
        protocol: Protocol,
        server: &CertFiles,
        client_ca: Option<&TestCa>,
    ) -> TlsProxy {
        // ring, as the service's TLS (sqlx, lapin) is built with: the other provider, aws-lc,
        // needs a C toolchain with cmake. rustls deprecates ring's for lacking post-quantum key
        // exchange, which a test's loopback does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(ca.ca_file()).expect("the client CA"))
                    .expect("add the client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let certs = CertificateDer::pem_file_iter(&server.cert)
            .expect("the server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM");
        let key = PrivateKeyDer::from_pem_file(&server.key).expect("the server key");
        let config = builder.with_single_cert(certs, key).expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = forward(socket, upstream, protocol, acceptor).await;
                });
            }
        });
        TlsProxy { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// PostgreSQL's request codes, after the length (8).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

async fn forward(
    mut socket: TcpStream,
    upstream: SocketAddr,
    protocol: Protocol,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    if protocol == Protocol::Postgres {
        loop {
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await?;
            let code = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
            match code {
                SSL_REQUEST => {
                    socket.write_all(b"S").await?;
                    break;
                }
                GSSENC_REQUEST => socket.write_all(b"N").await?,
                // A client that does not ask for TLS: this proxy speaks nothing else.
                _ => return Ok(()),
            }
        }
    }
    let mut tls = acceptor.accept(socket).await?;
    let mut plain = TcpStream::connect(upstream).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut plain).await?;
    Ok(())
}

/// GET `path` over HTTPS from `addr`, verifying the server as `server_name` with the CA in
/// `ca`, presenting `client` if given; the status code and the body. An error when the
/// handshake or the exchange fails (a refused client certificate, an unknown CA).
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    path: &str,
    ca: &Path,
    client: Option<&CertFiles>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(Error::other)? {
        roots
            .add(cert.map_err(Error::other)?)
            .map_err(Error::other)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::other)?
        .with_root_certificates(roots);
    let config = match client {
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)
                .map_err(Error::other)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::other)?;
            let key = PrivateKeyDer::from_pem_file(&files.key).map_err(Error::other)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(Error::other)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let socket = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(name, socket).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // A server that closes without close_notify ends the read with an error after the body.
    if let Err(e) = tls.read_to_end(&mut answer).await
        && answer.is_empty()
    {
        return Err(e);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("no HTTP answer: {answer:?}"),
            )
        })?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
