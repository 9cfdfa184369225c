//! The per-request context (Pingora's `CTX`): every fact about one request that more than one
//! stage needs, resolved once by the stage that owns it and read from here by the later ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use http::header::HeaderName;
use http::HeaderValue;

use super::context::Side;
use super::route::Route;
use crate::identity::client_cert::PeerCert;
use crate::server::runtime::ListenerRuntime;

/// What the pipeline knows about the connection a request arrived on. The listener settings are
/// those in force when the connection was accepted; routing uses the newest snapshot per request.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerRuntime>,
    /// Requests still being answered; the idle timeout never closes a connection that has some.
    pub in_flight: AtomicUsize,
    /// The verified TLS client certificate, set once right after the handshake.
    pub client_cert: OnceLock<Arc<PeerCert>>,
    /// The peer's address as a header value (`X-Forwarded-For` from a client that is not a
    /// trusted proxy): written once per connection, not once per request.
    pub peer_value: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, listener: Arc<ListenerRuntime>) -> Self {
        Self {
            peer,
            listener,
            in_flight: AtomicUsize::new(0),
            client_cert: OnceLock::new(),
            peer_value: super::context::ip_value(peer.ip()),
        }
    }
}

/// Per-request state shared by the stages (Pingora's context struct). Each fact is resolved
/// once, by the stage that owns it, and read from here by every later one.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    /// The client's address: the peer, or behind a trusted proxy the address it vouches for.
    /// Resolved once, at the trust boundary, for every stage (rate limits, sticky splits, hashing,
    /// logs).
    pub client: IpAddr,
    /// The validated request host (`Host` or the HTTP/2 authority).
    pub host: Option<HeaderValue>,
    /// The normalised path, when it differs from the request's own.
    pub path: Option<String>,
    /// An allowed protocol upgrade (WebSocket), decided once at the trust boundary.
    pub upgrade: bool,
    /// Values of migration override headers, taken out of the request with the other owned
    /// headers and read by the migration stage only.
    pub overrides: Vec<(HeaderName, HeaderValue)>,
    pub route: Option<Arc<Route>>,
    /// The side of a migration route that served (legacy for routes without one).
    pub side: Side,
    /// The caller's verified claims, when the route checks identity and a token was sent.
    pub claims: Option<Arc<crate::identity::jwt::Claims>>,
    /// The connection's verified TLS client certificate, if it presented one.
    pub client_cert: Option<Arc<PeerCert>>,
    /// The request's server span, when tracing is on; the stages hang their child spans on it.
    pub trace: Option<crate::telemetry::traces::RequestTrace>,
}

impl RequestCtx {
    pub fn new(request_id: HeaderValue, conn: &ConnInfo) -> Self {
        Self {
            request_id,
            client: conn.peer.ip(),
            host: None,
            path: None,
            upgrade: false,
            overrides: Vec::new(),
            route: None,
            side: Side::Legacy,
            claims: None,
            client_cert: conn.client_cert.get().cloned(),
            trace: None,
        }
    }

    /// The client certificate's principal (first SAN, else subject), for logs and rate-limit keys.
    pub fn client_cert_identity(&self) -> Option<&str> {
        self.client_cert.as_deref().map(|c| &*c.principal)
    }

    /// The upstream of the side serving the request, once it is routed.
    pub fn upstream(&self) -> Option<&Arc<crate::upstream::Upstream>> {
        Some(self.route.as_ref()?.upstream_for(self.side))
    }

    /// The path the upstream gets: the normalised one.
    pub fn path<'a>(&'a self, uri: &'a http::Uri) -> &'a str {
        self.path.as_deref().unwrap_or(uri.path())
    }
}
