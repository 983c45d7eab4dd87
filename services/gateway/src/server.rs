//! Serving the gateway: one single-threaded tokio runtime per serving thread, each with its own
//! `SO_REUSEPORT` listener on the gateway's address and its own upstream connection pools, as
//! nginx and Envoy run their workers. The kernel spreads connections over the listeners; a call
//! then never leaves the thread that accepted it, so nothing on its way wakes another thread.
//! Work that is not a call (key lookups on a cache miss, quota renewals, JWKS fetches, writing
//! events) runs on the runtime that created the [`Gateway`] (its background runtime).
//!
//! Edge limits, per connection: the request head must arrive within `header_read_timeout` of
//! its first byte (of the connection's start, for the first request), a keep-alive connection
//! with no request in flight is closed after `idle_timeout`, and the whole gateway holds at
//! most `max_connections` (further connections wait in the listen backlog, as nginx does when
//! `worker_connections` is reached).
//!
//! With `tls` configured, each connection is a TLS handshake first (counted in the head's
//! time: a client that stalls the handshake is cut at `header_read_timeout`), then HTTP/2 or
//! HTTP/1.1 as ALPN agreed. Without it, plain HTTP/1.1 or h2c by prior knowledge.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::worker::Worker;
use crate::Gateway;

/// Limits that protect the gateway from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Time allowed for a request head (request line and headers) from its first byte, or from
    /// the connection's start for the first request. Past it the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (and, for HTTP/1, no request head begun) is
    /// closed after this long.
    pub idle_timeout: Duration,
    /// Connections open at once, over all serving threads.
    pub max_connections: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
        }
    }
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Times the accept loop waited because `max_connections` were open.
    pub at_limit: AtomicU64,
    /// TLS handshakes that failed (a client that does not trust the certificate, speaks plain
    /// HTTP to the TLS port, or goes away).
    pub tls_handshake_failures: AtomicU64,
}

/// A running gateway: its serving threads, until [`GatewayServer::run_until`] stops them.
pub struct GatewayServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl GatewayServer {
    /// Binds one listener per serving thread on `addr` (`gateway.config.threads`; 0: one per
    /// core) and starts serving on them.
    pub fn bind(gateway: Arc<Gateway>, addr: SocketAddr) -> io::Result<GatewayServer> {
        let threads = gateway.serving_threads();
        let listeners = reuseport_listeners(addr, threads)?;
        let addr = listeners[0].local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let tls = match &gateway.config.tls {
            None => None,
            Some(files) => {
                let certs =
                    crate::tls::Certificates::load(files.clone()).map_err(io::Error::other)?;
                certs.watch(Duration::from_secs(1), stop_rx.clone());
                let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
                let _ = gateway.tls.set(certs);
                Some(acceptor)
            }
        };
        let connections = Arc::new(Semaphore::new(gateway.config.edge.max_connections.max(1)));
        let mut done = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            done.push(done_rx);
            let gateway = Arc::clone(&gateway);
            let stop = stop_rx.clone();
            let connections = Arc::clone(&connections);
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("peage-gw-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(rt) => {
                            rt.block_on(serve_thread(gateway, listener, connections, tls, stop))
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "gateway: cannot start a serving thread")
                        }
                    }
                    let _ = done_tx.send(());
                })?;
        }
        Ok(GatewayServer { addr, stop, done })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets calls in flight finish
    /// (idle keep-alive connections are closed at once) and returns when every thread is done.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }

    /// Stops serving as [`GatewayServer::run_until`] does.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for d in self.done {
            let _ = d.await;
        }
    }
}

/// `threads` listeners on one address with `SO_REUSEPORT`. The address is first bound once
/// without it, so a port another process (or another Péage) already serves is refused instead
/// of silently shared.
fn reuseport_listeners(addr: SocketAddr, threads: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = |reuse_port: bool| -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let probe = socket(false)?;
    probe.bind(&addr.into())?;
    let bound = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    drop(probe);
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads {
        let s = socket(true)?;
        s.bind(&bound.into())?;
        s.listen(4096)?;
        out.push(s.into());
    }
    Ok(out)
}

async fn serve_thread(
    gateway: Arc<Gateway>,
    listener: std::net::TcpListener,
    connections: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "gateway: cannot serve a listener");
            return;
        }
    };
    let worker = Arc::new(Worker::new(Arc::clone(&gateway)));
    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c: gRPC), told apart by the client's first
    // bytes. The header-read and idle timeouts are this module's (hyper's header timeout
    // would also cut idle keep-alive connections).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(None);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
    let graceful = GracefulShutdown::new();
    let limits = gateway.config.edge;
    let stats = &gateway.connection_stats;
    loop {
        if *stop.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // At the limit, this thread serves the connection it holds once another closes, and
        // accepts nothing more meanwhile: the rest wait in the listen backlog.
        let permit = match Arc::clone(&connections).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stats.at_limit.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    p = Arc::clone(&connections).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let edge = Arc::new(Edge::new());
        // The client's address, as upstreams get it in `X-Forwarded-For`, made once.
        let peer_info = crate::call::Peer {
            ip: http::HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            addr: peer.ip().to_canonical(),
            trusted: gateway
                .config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip().to_canonical())),
            https: tls.is_some(),
        };
        let svc = {
            let (worker, edge) = (Arc::clone(&worker), Arc::clone(&edge));
            hyper::service::service_fn(move |req| {
                let mark = InFlight::begin(&edge);
                let worker = Arc::clone(&worker);
                let peer = peer_info.clone();
                async move {
                    let mut response = crate::call::handle(&worker, &peer, req).await;
                    response.body_mut().hold(mark);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let gateway = Arc::clone(&gateway);
        let watcher = graceful.watcher();
        let (http1, http2) = (Arc::clone(&http1), Arc::clone(&http2));
        let tls = tls.clone();
        tokio::spawn(async move {
            // The same serving code over a plain or a TLS stream.
            macro_rules! serve_on {
                ($stream:expr, $h2:expr) => {{
                    let h2: bool = $h2;
                    edge.http2.store(h2, Ordering::Relaxed);
                    let io = TokioIo::new(EdgeIo {
                        inner: $stream,
                        edge: Arc::clone(&edge),
                    });
                    if h2 {
                        let _ = watcher.watch(http2.serve_connection(io, svc)).await;
                    } else {
                        let _ = watcher.watch(http1.serve_connection(io, svc)).await;
                    }
                }};
            }
            let serve = async {
                match tls {
                    None => {
                        let Ok(h2) = sniff_http2(&stream).await else {
                            return;
                        };
                        serve_on!(stream, h2)
                    }
                    Some(acceptor) => {
                        let stream = match acceptor.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                gateway
                                    .connection_stats
                                    .tls_handshake_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(%peer, error = %e, "gateway: TLS handshake failed");
                                return;
                            }
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                        serve_on!(stream, h2)
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                why = watchdog(&edge, limits) => {
                    let stats = &gateway.connection_stats;
                    match why {
                        Closed::HeaderTimeout => {
                            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "gateway: request head not received in time; connection closed");
                        }
                        Closed::Idle => {
                            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            gateway
                .connection_stats
                .open
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

const NONE: u64 = u64::MAX;

/// What a connection is doing, shared by its I/O, its service and its watchdog.
pub(crate) struct Edge {
    born: Instant,
    in_flight: AtomicU32,
    /// Microseconds after `born` when the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// Microseconds after `born` when the head of the next request began; `NONE` until bytes
    /// arrive. The first request's head is timed from the connection's start.
    head_since: AtomicU64,
    /// HTTP/2 (the client's first bytes were the connection preface): streams, not heads.
    http2: AtomicBool,
}

impl Edge {
    fn new() -> Edge {
        Edge {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        self.born.elapsed().as_micros() as u64
    }
}

/// Marks a request in flight on its connection, from its head until its response body is done
/// (or dropped).
pub(crate) struct InFlight(Arc<Edge>);

impl InFlight {
    fn begin(edge: &Arc<Edge>) -> InFlight {
        edge.in_flight.fetch_add(1, Ordering::Relaxed);
        edge.head_since.store(NONE, Ordering::Relaxed);
        InFlight(Arc::clone(edge))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let e = &self.0;
        if e.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            e.idle_since.store(e.now_us(), Ordering::Relaxed);
        }
    }
}

enum Closed {
    HeaderTimeout,
    Idle,
}

/// Resolves when the connection has broken a limit. It sleeps until the next deadline that
/// could apply, so a busy connection costs one timer now and then, not one per request.
async fn watchdog(edge: &Edge, limits: EdgeLimits) -> Closed {
    let header = limits.header_read_timeout.as_micros() as u64;
    let idle = limits.idle_timeout.as_micros() as u64;
    loop {
        let now = edge.now_us();
        let (deadline, why) = if edge.in_flight.load(Ordering::Relaxed) > 0 {
            (now + header.min(idle), None)
        } else {
            let head = edge.head_since.load(Ordering::Relaxed);
            if head != NONE && !edge.http2.load(Ordering::Relaxed) {
                (head.saturating_add(header), Some(Closed::HeaderTimeout))
            } else {
                let since = edge.idle_since.load(Ordering::Relaxed);
                (since.saturating_add(idle), Some(Closed::Idle))
            }
        };
        if deadline <= now {
            if let Some(why) = why {
                return why;
            }
        }
        tokio::time::sleep(Duration::from_micros(
            deadline.saturating_sub(now).max(1_000),
        ))
        .await;
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client's stream (TCP, or TLS over it), noting when a request head begins.
struct EdgeIo<S> {
    inner: S,
    edge: Arc<Edge>,
}

/// Whether a plain client opens with the HTTP/2 connection preface, looked at without
/// consuming it. False at once for anything else (an HTTP/1 request line).
async fn sniff_http2(stream: &TcpStream) -> io::Result<bool> {
    {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 || buf[..n] != H2_PREFACE[..n] {
                return Ok(false);
            }
            if n == H2_PREFACE.len() {
                return Ok(true);
            }
            // Part of the preface so far (it nearly always comes in one piece): wait a little
            // for the rest rather than spin on `peek`.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EdgeIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            let e = &self.edge;
            if e.in_flight.load(Ordering::Relaxed) == 0
                && e.head_since.load(Ordering::Relaxed) == NONE
            {
                e.head_since.store(e.now_us(), Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EdgeIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
