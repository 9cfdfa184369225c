//! The accept loop: connection limits, TLS, the protocol (HTTP/2 by ALPN or by its preface,
//! HTTP/1.1 otherwise), and graceful draining.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::io::IdleIo;
use super::runtime::ListenerRuntime;
use crate::gateway::shared::Shared;
use crate::identity::client_cert::PeerCert;
use crate::pipeline::request::ConnInfo;
use crate::telemetry::metrics::{CONNECTIONS_REJECTED, OPEN_CONNECTIONS};

/// Accepts until `shutdown` fires, then drains: connections finish their in-flight requests (up to
/// the configured deadline) and are closed.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection holds a receiver: a value sent asks them to finish, and the sender's
    // `closed()` is every connection gone (hyper-util's `GracefulShutdown` does the same, but
    // cannot watch an HTTP/1 connection with upgrades).
    let (drain_tx, drain_rx) = watch::channel(());
    let open = Arc::new(AtomicUsize::new(0));
    let open_gauge = shared.metrics().gauge(OPEN_CONNECTIONS, &[("listener", &name)]);
    let rejected = shared
        .metrics()
        .counter(CONNECTIONS_REJECTED, &[("listener", &name)]);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning on the error.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(rt) = shared.snapshot.load().listeners.get(&*name).cloned() else {
            continue;
        };
        if open.load(Ordering::Acquire) >= rt.limits.max_connections {
            rejected.increment(1);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let guard = ConnGuard::new(open.clone(), open_gauge.clone());
        let conn = Arc::new(ConnInfo::new(peer, rt.clone()));
        let mut watcher = drain_rx.clone();
        let shared = shared.clone();
        // Each branch's future is boxed: the task is sized by its largest branch and lives as
        // long as the connection, so inline branches made every idle connection pay for the
        // TLS handshake's state and the biggest connection type.
        tokio::spawn(async move {
            let _guard = guard;
            // The set-up phases are boxed too: they end, and their state (timers, a TLS
            // handshake) is freed instead of sizing the task for the connection's whole life.
            // The idle timeout watches the bytes HTTP sees: over TLS, above the TLS layer, so
            // that a client trickling a TLS record a byte at a time (no plaintext, so no head
            // for the header-read timeout to time) is not "active" and meets the idle timeout.
            match &rt.tls {
                None => {
                    let sniffed = unless_draining(&mut watcher, sniff(&tcp, rt.limits.header_read_timeout));
                    let Some(Some(proto)) = Box::pin(sniffed).await else {
                        return;
                    };
                    let io = IdleIo::new(tcp, rt.limits.idle_timeout, Some(conn.clone()));
                    Box::pin(serve_connection(io, proto, &rt, conn, shared, watcher)).await
                }
                Some(acceptor) => {
                    let handshake = accept_tls(acceptor, tcp, &conn, rt.limits.header_read_timeout);
                    let Some(Some((tls, proto))) = Box::pin(unless_draining(&mut watcher, handshake)).await
                    else {
                        return;
                    };
                    let io = IdleIo::new(tls, rt.limits.idle_timeout, Some(conn.clone()));
                    Box::pin(serve_connection(io, proto, &rt, conn, shared, watcher)).await
                }
            }
        });
    }
    drop(listener);
    drop(drain_rx);
    let _ = drain_tx.send(());
    let drain = shared.snapshot.load().shutdown.drain_timeout;
    if tokio::time::timeout(drain, drain_tx.closed()).await.is_err() {
        tracing::warn!(listener = %name, "drain deadline passed; closing the remaining connections");
    }
}

/// The TLS handshake, bounded by the header-read timeout, and what it tells: the client
/// certificate (kept on the connection) and the protocol.
async fn accept_tls(
    acceptor: &TlsAcceptor,
    io: TcpStream,
    conn: &ConnInfo,
    within: Duration,
) -> Option<(TlsStream<TcpStream>, Proto)> {
    let tls = match tokio::time::timeout(within, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return None;
        }
    };
    let session = tls.get_ref().1;
    // Read once per connection; rustls has verified the chain already.
    if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
        match PeerCert::from_der(leaf) {
            Some(cert) => {
                let _ = conn.client_cert.set(Arc::new(cert));
            }
            None => tracing::debug!(peer = %conn.peer, "client certificate could not be parsed"),
        }
    }
    // RFC 9113 §3.3: HTTP/2 over TLS is negotiated with ALPN, never assumed.
    let proto = match session.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    Some((tls, proto))
}

/// `None` when a drain starts first. A connection that has not yet sent a request (a client's
/// spare connection, a handshake in progress) has nothing in flight, so the drain closes it
/// rather than waiting out its header-read timeout.
async fn unless_draining<F: Future>(drain: &mut watch::Receiver<()>, f: F) -> Option<F::Output> {
    tokio::select! {
        out = f => Some(out),
        _ = drain.changed() => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A cleartext connection is HTTP/2 with prior knowledge when it opens with the preface, and
/// HTTP/1 otherwise; the first byte that differs decides. It peeks, so the bytes stay in the
/// socket for hyper. `None`: the client closed, or sent nothing within `within`.
async fn sniff(tcp: &TcpStream, within: Duration) -> Option<Proto> {
    let look = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Proto::H1);
            }
            if n == H2_PREFACE.len() {
                return Some(Proto::H2);
            }
            // Part of the preface so far. A peek would return the same bytes at once, so wait
            // a little for the rest rather than spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(within, look).await.ok().flatten()
}

async fn serve_connection<I>(
    io: I,
    proto: Proto,
    rt: &ListenerRuntime,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    watcher: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper keeps the allocation that holds a request's future for the connection's whole life
    // and reuses it for the next request. The pipeline's future is tens of KiB, so held inline it
    // made every idle keep-alive connection cost that much; boxed, it is freed as each answer
    // starts, and an idle connection holds only hyper's buffers.
    let service = hyper::service::service_fn(move |req| {
        // The future hyper keeps is this box alone (16 bytes); an async block around it held
        // the request and both handles too, about 1 KiB per idle connection. Mapped rather than
        // wrapped in an async block, which would hold a second copy of the request.
        Box::pin(super::contain::handle(shared.clone(), conn.clone(), req).map(Ok::<_, Infallible>))
    });
    let io = TokioIo::new(io);
    // Each protocol's connection boxed apart: an idle HTTP/1 connection does not carry the size
    // of an HTTP/2 one. Boxed before `until_drained` takes it: an async fn keeps its argument
    // and the pinned local it moves it into as two slots, so a connection passed by value was
    // stored twice for its whole life (1,480 bytes instead of 640 for HTTP/1).
    let ended = match proto {
        Proto::H1 => {
            let c = Box::pin(rt.http1.serve_connection(io, service).with_upgrades());
            until_drained(c, watcher, |c| c.graceful_shutdown()).await
        }
        Proto::H2 => {
            let c = Box::pin(rt.http2.serve_connection(io, service));
            until_drained(c, watcher, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Runs a connection; once a drain is asked for (or its sender is gone), asks the connection to
/// finish what is in flight and close, and waits for that.
async fn until_drained<C>(
    mut conn: Pin<Box<C>>,
    mut drain: watch::Receiver<()>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::select! {
        ended = conn.as_mut() => return ended,
        _ = drain.changed() => {}
    }
    shutdown(conn.as_mut());
    conn.await
}

struct ConnGuard {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl ConnGuard {
    fn new(open: Arc<AtomicUsize>, gauge: Gauge) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.increment(1.0);
        Self { open, gauge }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
    }
}
