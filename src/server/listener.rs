//! The accept loop: connection limits, TLS, HTTP/1.1 + HTTP/2 via hyper-util's auto builder, and
//! graceful draining.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    let graceful = GracefulShutdown::new();
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
        let conn = Arc::new(ConnInfo {
            peer,
            listener: rt.clone(),
            in_flight: AtomicUsize::new(0),
            client_cert: OnceLock::new(),
        });
        let io = IdleIo::new(tcp, rt.limits.idle_timeout, conn.clone());
        let watcher = graceful.watcher();
        let shared = shared.clone();
        // Each branch's future is boxed: the task is sized by its largest branch and lives as
        // long as the connection, so inline branches made every idle connection pay for the
        // TLS handshake's state and the biggest connection type.
        tokio::spawn(async move {
            let _guard = guard;
            match &rt.tls {
                None => Box::pin(serve_connection(io, &rt, conn, shared, watcher)).await,
                Some(acceptor) => {
                    match tokio::time::timeout(rt.limits.header_read_timeout, Box::pin(acceptor.accept(io)))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            // Read once per connection; rustls has verified the chain already.
                            if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                                match PeerCert::from_der(leaf) {
                                    Some(cert) => {
                                        let _ = conn.client_cert.set(Arc::new(cert));
                                    }
                                    None => tracing::debug!(%peer, "client certificate could not be parsed"),
                                }
                            }
                            Box::pin(serve_connection(tls, &rt, conn, shared, watcher)).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let drain = shared.snapshot.load().shutdown.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = %name, "drain deadline passed; closing the remaining connections");
    }
}

async fn serve_connection<I>(
    io: I,
    rt: &ListenerRuntime,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper keeps the allocation that holds a request's future for the connection's whole life
    // and reuses it for the next request. The pipeline's future is tens of KiB, so held inline it
    // made every idle keep-alive connection cost that much; boxed, it is freed as each answer
    // starts, and an idle connection holds only hyper's buffers.
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move {
            let answer = Box::pin(async { super::contain::handle(&shared, &conn, req).await });
            Ok::<_, Infallible>(answer.await)
        }
    });
    let connection = rt
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
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
