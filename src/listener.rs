//! Accept loops: one task per listener accepts TCP connections (bounded by
//! `max_connections`), terminates TLS where configured, and serves HTTP/1.1
//! and HTTP/2 (ALPN over TLS, prior knowledge on plain TCP) with hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::Limits;
use crate::proxy::{self, ConnInfo, State};

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One bound listener and what it needs to serve.
pub struct Listener {
    pub name: Arc<str>,
    pub socket: TcpListener,
    pub tls: bool,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds `addr` with `SO_REUSEADDR` so a restart does not wait on TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// Accepts connections until `stop` flips, handing each to its own task.
/// Connections are registered with `graceful` so shutdown can drain them.
pub async fn serve(
    listener: Listener,
    state: State,
    limits: Limits,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let builder = Arc::new(http_builder(&limits));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, client) = tokio::select! {
            r = listener.socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo {
            client,
            listener: listener.name.clone(),
            https: listener.tls,
        });
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            if conn.https {
                serve_tls(stream, conn, state, &builder, watcher).await;
            } else {
                serve_http(TokioIo::new(stream), conn, state, &builder, watcher).await;
            }
        });
    }
}

async fn serve_tls(
    stream: TcpStream,
    conn: Arc<ConnInfo>,
    state: State,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let Some(config) = state.load().tls.get(&*conn.listener).cloned() else {
        tracing::error!(listener = %conn.listener, "no TLS settings for listener");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(listener = %conn.listener, client = %conn.client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %conn.listener, client = %conn.client, "TLS handshake timed out");
            return;
        }
    };
    serve_http(TokioIo::new(tls), conn, state, builder, watcher).await;
}

async fn serve_http<I>(
    io: I,
    conn: Arc<ConnInfo>,
    state: State,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let client = conn.client;
    let service = service_fn(move |req| proxy::handle(state.clone(), conn.clone(), req));
    let connection = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(client = %client, error = %e, "client connection ended with an error");
    }
}
