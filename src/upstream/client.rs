//! The pools of upstream connections, shared by upstreams with equal settings, and what a failed
//! call means.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::pool::{Pool, PoolError};
use super::tls::UpstreamTls;
use crate::config::file::PoolConfig;

pub type HttpClient = Pool;

/// Settings that shape a connection pool. Upstreams that share them share one pool (the pool is
/// keyed by authority inside), and a reload that keeps them keeps its warm connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
    /// [`UpstreamTls::fingerprint`] for upstreams with `https://` endpoints.
    pub tls: Option<[u8; 32]>,
}

#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<PoolKey, HttpClient>>,
}

impl ClientCache {
    /// `tls` is the upstream's, whose fingerprint is in `key`: a kept pool has equal settings.
    pub fn get(&self, key: &PoolKey, tls: Option<&UpstreamTls>) -> HttpClient {
        self.clients
            .lock()
            .entry(key.clone())
            .or_insert_with(|| build_client(key, tls))
            .clone()
    }

    /// Drops pools no snapshot uses any more, so many reloads don't accumulate sockets.
    pub fn retain(&self, live: &[PoolKey]) {
        self.clients.lock().retain(|k, _| live.contains(k));
    }
}

fn build_client(key: &PoolKey, tls: Option<&UpstreamTls>) -> HttpClient {
    let connector = super::tls::connector(tls, key.connect_timeout);
    Pool::new(connector, key.pool.max_idle_per_endpoint, key.pool.idle_timeout)
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamCallError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    /// The failure came from the client's own request body (too large, stalled).
    #[error("request body: {0}")]
    Body(String),
    /// The upstream's concurrency limit shed the request: it was never sent.
    #[error("over the upstream's concurrency limit ({})", .0.label())]
    Overloaded(Shed),
}

/// Why a request was refused without being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `max_concurrent` requests in flight and `max_queue` waiting.
    QueueFull,
    /// It waited `queue_timeout` in the queue without getting a place.
    QueueTimeout,
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue-full",
            Self::QueueTimeout => "queue-timeout",
        }
    }
}

/// What a failed hyper call means for the proxy.
pub(super) fn classify(e: &PoolError) -> UpstreamCallError {
    if e.is_connect() {
        return UpstreamCallError::Connect(error_chain(e));
    }
    let chain = error_chain(e);
    if has_source::<crate::pipeline::body::BodyError>(e) {
        UpstreamCallError::Body(chain)
    } else {
        UpstreamCallError::Request(chain)
    }
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// hyper's top-level messages are terse ("client error (Connect)"); the causes say what happened.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
