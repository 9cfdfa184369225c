//! The Redis store: one Lua script per decision (one round trip: EVALSHA), time from Redis
//! itself so instances with skewed clocks agree, and keys that expire once they carry no state.
//!
//! The connection is made in the background and never on the request path: until it exists, and
//! whenever a call fails or exceeds the timeout, the caller gets a [`StoreError`] and applies the
//! policy's fallback. The connection manager (or the cluster connection) reconnects by itself.
//! A [`StoreBreaker`] stops asking a Redis that keeps failing, so that an outage costs each
//! decision nothing instead of the timeout; its probes run in the background.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use metrics::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use super::algorithm::{Decision, Limit};
use super::breaker::{Admit, StoreBreaker};
use crate::config::file::RateLimitStoreConfig;
use crate::telemetry::metrics::{Metrics, RATELIMIT_REDIS_DURATION};

const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local capacity = interval * burst
local new_tat = tat + interval * cost
local ahead = new_tat - now
if ahead <= capacity then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {1, math.floor((capacity - ahead) / interval), ahead, 0}
end
local left = capacity - (tat - now)
if left < 0 then left = 0 end
return {0, math.floor(left / interval), tat - now, ahead - capacity}
"#;

const SLIDING: &str = r#"
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local index = math.floor(now / window)
local s = redis.call('HMGET', KEYS[1], 'i', 'p', 'c')
local i = tonumber(s[1])
local p = tonumber(s[2]) or 0
local c = tonumber(s[3]) or 0
if i ~= index then
  if i ~= nil and i + 1 == index then p = c else p = 0 end
  c = 0
end
local elapsed = now - index * window
local used = math.floor(p * (window - elapsed) / window) + c
if used + cost <= limit then
  c = c + cost
  redis.call('HSET', KEYS[1], 'i', string.format('%d', index), 'p', p, 'c', c)
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * window / 1000))
  return {1, limit - used - cost, window - elapsed, 0}
end
local wait = window - elapsed
if c + cost <= limit and p > 0 then
  wait = window - math.floor((limit - c - cost) * window / p) - elapsed
  if wait < 1 then wait = 1 end
end
local left = limit - used
if left < 0 then left = 0 end
return {0, left, window - elapsed, wait}
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to Redis")]
    Unavailable,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered with an unexpected reply")]
    Reply,
    #[error("Redis keeps failing; not asked until the breaker's probe succeeds")]
    CircuitOpen,
}

impl StoreError {
    /// The `reason` label values of `ficus_ratelimit_store_errors_total`.
    pub const REASONS: [&'static str; 4] = ["unavailable", "timeout", "error", "circuit_open"];

    /// This error's index in [`Self::REASONS`].
    pub fn reason(&self) -> usize {
        match self {
            Self::Unavailable => 0,
            Self::Timeout(_) => 1,
            Self::Redis(_) | Self::Reply => 2,
            Self::CircuitOpen => 3,
        }
    }

    /// The connection itself is gone: the next call would only wait for a reconnect.
    fn connection_down(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

pub struct RedisStore {
    target: Target,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    timeout: Duration,
    gcra: redis::Script,
    sliding: redis::Script,
    latency: Histogram,
    breaker: StoreBreaker,
}

impl RedisStore {
    /// Checks the URLs; connecting happens in the background.
    pub fn new(cfg: &RateLimitStoreConfig, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let target = match cfg.redis_urls.as_slice() {
            [] => return Err("no Redis URL".into()),
            [one] => Target::Single(redis::Client::open(one.as_str()).map_err(|e| e.to_string())?),
            many => Target::Cluster(
                redis::cluster::ClusterClient::builder(many.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(1))
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        };
        let store = Arc::new(Self {
            target,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            timeout: cfg.timeout,
            gcra: redis::Script::new(GCRA),
            sliding: redis::Script::new(SLIDING),
            latency: metrics.histogram(RATELIMIT_REDIS_DURATION, &[]),
            breaker: StoreBreaker::new(cfg.breaker, "redis", metrics),
        });
        store.ensure_connecting();
        Ok(store)
    }

    fn ensure_connecting(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(store) = weak.upgrade() else { return };
                match store.connect().await {
                    Ok(c) => {
                        store.conn.store(Some(Arc::new(c)));
                        tracing::info!("rate limits: connected to Redis");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limits: cannot connect to Redis; fallback applies")
                    }
                }
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), cfg).await?,
                ))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }

    /// One decision: exactly one EVALSHA (after the script is first loaded).
    pub async fn decide(
        self: &Arc<Self>,
        key: &str,
        limit: Limit,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let Some(conn) = self.conn.load_full() else {
            self.ensure_connecting();
            return Err(StoreError::Unavailable);
        };
        match self.breaker.admit() {
            Admit::Call => {}
            Admit::Skip => return Err(StoreError::CircuitOpen),
            Admit::Probe => {
                self.probe(conn);
                return Err(StoreError::CircuitOpen);
            }
        }
        let result = self.call(&conn, key, limit, cost).await;
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => self.breaker.failure(e.connection_down()),
        }
        result
    }

    /// One PING in the background, within the store timeout: the decision that drew the probe
    /// takes the fallback like the others, so no request waits on a Redis known to be down.
    fn probe(self: &Arc<Self>, conn: Arc<Conn>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.breaker.probe_done(false);
            return;
        };
        let store = self.clone();
        rt.spawn(async move {
            let mut conn = (*conn).clone();
            let ping = redis::cmd("PING");
            let answer = tokio::time::timeout(store.timeout, async {
                match &mut conn {
                    Conn::Single(c) => ping.query_async::<String>(c).await,
                    Conn::Cluster(c) => ping.query_async::<String>(c).await,
                }
            })
            .await;
            let ok = matches!(answer, Ok(Ok(_)));
            if !ok {
                tracing::debug!("rate limits: Redis probe failed; the breaker stays open");
            } else {
                tracing::info!("rate limits: Redis answers again; the breaker closes");
            }
            store.breaker.probe_done(ok);
        });
    }

    async fn call(&self, conn: &Conn, key: &str, limit: Limit, cost: u64) -> Result<Decision, StoreError> {
        let (unit_len, amount) = limit.in_micros();
        let script = match limit {
            Limit::Gcra { .. } => &self.gcra,
            Limit::Sliding { .. } => &self.sliding,
        };
        let mut call = script.key(key);
        call.arg(unit_len).arg(amount).arg(cost);
        let started = Instant::now();
        let mut conn = conn.clone();
        let call = tokio::time::timeout(self.timeout, async {
            match &mut conn {
                Conn::Single(c) => call.invoke_async::<Vec<i64>>(c).await,
                Conn::Cluster(c) => call.invoke_async::<Vec<i64>>(c).await,
            }
        });
        let kind = opentelemetry::trace::SpanKind::Client;
        let reply = crate::telemetry::traces::in_current("redis EVALSHA", kind, call, |r| match r {
            Err(_) => Some("timeout".into()),
            Ok(Err(_)) => Some("redis-error".into()),
            Ok(Ok(_)) => None,
        })
        .await;
        self.latency.record(started.elapsed());
        let reply = reply.map_err(|_| StoreError::Timeout(self.timeout))??;
        let [allowed, remaining, reset, retry] = reply[..] else {
            return Err(StoreError::Reply);
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: us(reset),
            retry_after: us(retry),
        })
    }
}
