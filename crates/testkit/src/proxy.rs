//! A TCP proxy for outage tests: put it between the service and PostgreSQL or RabbitMQ, then
//! `cut()` it to sever every live connection and refuse new ones, and `restore()` it.
//!
//! Each accepted connection copies bytes both ways until the cancellation token of the
//! "generation" it was accepted in fires. `cut()` cancels the current generation (the copy tasks
//! end and drop both sockets, so both peers see the connection close) and leaves none, so
//! connections accepted while cut are closed at once. `restore()` starts a new generation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    /// The live generation's token; `None` while cut.
    live: Arc<Mutex<Option<CancellationToken>>>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let live = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let accept_task = tokio::spawn(accept_loop(listener, upstream, live.clone()));
        Proxy {
            addr,
            live,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection now; connections made while cut are closed on accept.
    pub fn cut(&self) {
        if let Some(token) = self.live.lock().unwrap().take() {
            token.cancel();
        }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        let mut live = self.live.lock().unwrap();
        if live.is_none() {
            *live = Some(CancellationToken::new());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    live: Arc<Mutex<Option<CancellationToken>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // The generation's own token (not a copy of its state): a `cut()` that comes after
        // this line still cancels this connection.
        let token = live.lock().unwrap().clone();
        match token {
            Some(token) => {
                tokio::spawn(forward(client, upstream, token));
            }
            None => drop(client),
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, token: CancellationToken) {
    let _ = client.set_nodelay(true);
    tokio::select! {
        _ = token.cancelled() => {}
        server = TcpStream::connect(upstream) => {
            let Ok(mut server) = server else { return };
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        }
    }
    // Both sockets are dropped here: each peer sees its connection closed.
}

/// A proxy in front of the server of `url`, and `url` rewritten to go through it.
pub async fn proxied(url: &str) -> (Proxy, String) {
    let mut u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_owned();
    let port = u.port().unwrap_or(match u.scheme() {
        "amqp" => 5672,
        _ => 5432,
    });
    let upstream: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve upstream")
        .next()
        .expect("an upstream address");
    let proxy = Proxy::start(upstream).await;
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(proxy.addr().port())).unwrap();
    (proxy, u.to_string())
}
