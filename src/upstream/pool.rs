//! The upstream connection pool: HTTP/1.1 connections made with `hyper::client::conn::http1`
//! and kept per endpoint (scheme and authority).
//!
//! It replaces `hyper_util::client::legacy::Client`, whose per-request costs showed in profiles
//! of the plain route: a pool key built and hashed twice, a checkout future racing a lazily
//! built connect future, and, for every answer whose body was still arriving when its head was
//! returned, a task spawned only to put the connection back once it was ready again. Here a
//! connection goes back into its endpoint's list as soon as the head arrives; a checkout takes
//! the most recently used one that is ready now (asked with a no-op waker, so nothing waits on
//! a connection that is still streaming its last answer) and skips the rest.
//!
//! What the legacy client did that ficus relies on is kept: requests go out in origin form with
//! a `Host` header; a request that was never written because a reused connection had just been
//! closed is sent again on another connection (the upstream cannot have seen it); connections
//! are driven with upgrades, so `101 Switching Protocols` answers can be tunnelled; idle
//! connections are closed after `pool.idle_timeout`, and at most `pool.max_idle_per_endpoint`
//! are kept per endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use parking_lot::Mutex;
use tower::{BoxError, Service};

use crate::pipeline::body::RequestBody;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(BoxError),
    #[error(transparent)]
    Send(hyper::Error),
    #[error("the request's URI names no upstream endpoint")]
    NoEndpoint,
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

#[derive(Clone)]
struct Key {
    https: bool,
    authority: Authority,
}

// By the authority's exact text: `Authority`'s own `Hash` feeds the hasher one lowercased byte
// at a time (about 285 instructions per lookup, two lookups per request). Its `Eq` ignores
// case, so equality is by the same text as the hash; endpoints that differ only in case then
// get pools of their own, which is harmless.
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.https == other.https && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// Keys come from the config's endpoints, never from a client: a fast hash is safe here
    /// (SipHash was 3% of the plain route's instructions; see `Key`'s `Hash` for the rest).
    idle: Mutex<HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Set once the task that closes expired idle connections runs; it is started by the first
    /// connection put back, because a pool can be built outside a runtime (`ficus check`).
    sweeping: AtomicBool,
}

/// Cloned cheaply; the clones share the connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle: Mutex::new(HashMap::default()),
                max_idle,
                idle_timeout,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends a request whose URI names the endpoint (`http://host:port/path`); resolves with
    /// the response head, the body still streaming.
    pub async fn request(&self, mut req: Request<RequestBody>) -> Result<Response<Incoming>, PoolError> {
        let key = Key {
            https: req.uri().scheme() == Some(&Scheme::HTTPS),
            authority: req.uri().authority().cloned().ok_or(PoolError::NoEndpoint)?,
        };
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, host_header(&key));
        }
        *req.uri_mut() = origin_form(req.uri());
        loop {
            let (mut sender, reused) = match self.checkout(&key) {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its state (the handshake, the stream) would
                // otherwise size every request's future, which is moved into a box per request.
                None => (Box::pin(self.connect(&key)).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a reused connection closed under us. Only a fresh one
                    // failing says something about the upstream.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
    }

    /// The most recently used connection to `key` that can take a request now.
    fn checkout(&self, key: &Key) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.inner.idle.lock();
        let list = idle.get_mut(key)?;
        let mut cx = Context::from_waker(Waker::noop());
        let mut now = None;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            match list[i].sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    let now = *now.get_or_insert_with(Instant::now);
                    let conn = list.swap_remove(i);
                    if now.saturating_duration_since(conn.since) < self.inner.idle_timeout {
                        return Some(conn.sender);
                    }
                }
                Poll::Ready(Err(_)) => {
                    list.swap_remove(i);
                }
                // Still receiving the answer it carried last.
                Poll::Pending => {}
            }
        }
        None
    }

    fn checkin(&self, key: Key, sender: SendRequest<RequestBody>) {
        if sender.is_closed() || self.inner.max_idle == 0 {
            return;
        }
        if !self.inner.sweeping.swap(true, Ordering::Relaxed) {
            spawn_sweeper(Arc::downgrade(&self.inner), self.inner.idle_timeout);
        }
        let mut idle = self.inner.idle.lock();
        let list = idle.entry(key).or_default();
        if list.len() < self.inner.max_idle {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, key: &Key) -> Result<SendRequest<RequestBody>, PoolError> {
        let uri = Uri::builder()
            .scheme(if key.https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| PoolError::Connect(e.into()))?;
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(PoolError::Connect)?;
        // Each kind of stream gets its own connection task: one typed by the connector's enum
        // is sized by its TLS variant (about 9 KiB), which a plain connection does not need.
        let mut sender = match connector.call(uri).await.map_err(PoolError::Connect)? {
            MaybeHttpsStream::Http(tcp) => start_connection(tcp).await?,
            MaybeHttpsStream::Https(tls) => start_connection(tls).await?,
        };
        sender.ready().await.map_err(|e| PoolError::Connect(e.into()))?;
        Ok(sender)
    }
}

/// The HTTP/1 handshake, and a task that drives the connection until it ends.
async fn start_connection<I>(io: I) -> Result<SendRequest<RequestBody>, PoolError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| PoolError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

impl Service<Request<RequestBody>> for Pool {
    type Response = Response<Incoming>;
    type Error = PoolError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, PoolError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PoolError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { pool.request(req).await })
    }
}

/// Closes idle connections older than `timeout`, until the pool is dropped.
fn spawn_sweeper(pool: Weak<Inner>, timeout: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let every = (timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = pool.upgrade() else { return };
            let now = Instant::now();
            let mut idle = inner.idle.lock();
            idle.retain(|_, list| {
                list.retain(|c| !c.sender.is_closed() && now.saturating_duration_since(c.since) < timeout);
                !list.is_empty()
            });
        }
    });
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
        _ => Uri::from(PathAndQuery::from_static("/")),
    }
}

/// `host[:port]`, the port left out where it is the scheme's default.
fn host_header(key: &Key) -> HeaderValue {
    let default_port = if key.https { 443 } else { 80 };
    let value = match key.authority.port_u16() {
        Some(p) if p != default_port => key.authority.as_str(),
        _ => key.authority.host(),
    };
    // An authority is made of characters a header value accepts.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let u: Uri = "http://127.0.0.1:8080/a/b?x=1".parse().unwrap();
        assert_eq!(origin_form(&u), "/a/b?x=1");
        let u: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(origin_form(&u), "/");
    }

    #[test]
    fn host_header_drops_the_default_port_only() {
        let key = |https, a: &str| Key {
            https,
            authority: a.parse().unwrap(),
        };
        assert_eq!(host_header(&key(false, "legacy:80")), "legacy");
        assert_eq!(host_header(&key(false, "legacy:8080")), "legacy:8080");
        assert_eq!(host_header(&key(true, "legacy:443")), "legacy");
        assert_eq!(host_header(&key(true, "legacy:80")), "legacy:80");
        assert_eq!(host_header(&key(false, "[::1]:9000")), "[::1]:9000");
    }
}
