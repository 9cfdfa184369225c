//! The Redis side of write buffering: the connection (one Redis, or a Cluster), the key layout,
//! and the records kept there. Every call is bounded by `queue_store.timeout`.
//!
//! Keys (the route in a hash tag, so a route's streams and leases share a Cluster slot):
//! - `{prefix}{route}:q:{n}`: partition `n`'s stream of queued writes (field `w`: a [`Stored`]),
//!   read by the consumer group `ficus`;
//! - `{prefix}{route}:lease:{n}`: which instance replays partition `n` now (a token, with a TTL);
//! - `{prefix}{route}:dlq`: the dead-letter stream (fields `id` and `w`);
//! - `{prefix}{route}:k:{digest}`: the write id an (principal, Idempotency-Key) pair was queued as;
//! - `{prefix}w:{id}`: a write's [`Status`] (JSON), read by the status resource.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::FromRedisValue;
use serde::{Deserialize, Serialize};

use crate::config::writes::QueueStoreConfig;

pub const GROUP: &str = "ficus";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a stored record is unreadable: {0}")]
    Record(String),
    #[error("Redis could not be connected to")]
    NotConnected,
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

pub struct Store {
    target: Target,
    conn: parking_lot::Mutex<Option<Conn>>,
    /// Held by the one caller that connects; the others wait for its outcome, so a black-holed
    /// Redis costs each request at most one `timeout`, not one per caller queued before it.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    prefix: String,
}

impl Store {
    pub fn new(cfg: &QueueStoreConfig) -> Result<Self, String> {
        let target = match cfg.redis_urls.as_slice() {
            [] => return Err("no Redis URL".into()),
            [one] => Target::Single(redis::Client::open(one.as_str()).map_err(|e| e.to_string())?),
            many => Target::Cluster(
                redis::cluster::ClusterClient::builder(many.iter().map(String::as_str))
                    .connection_timeout(cfg.timeout)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        };
        Ok(Self {
            target,
            conn: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timeout: cfg.timeout,
            prefix: cfg.key_prefix.clone(),
        })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = &*self.conn.lock() {
            return Ok(c.clone());
        }
        let Ok(_connecting) = self.connecting.try_lock() else {
            // Another caller is connecting: its outcome is this caller's too, rather than a
            // connect attempt of its own after it (and after every other one waiting).
            let _after = tokio::time::timeout(self.timeout, self.connecting.lock())
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))?;
            return self.conn.lock().clone().ok_or(StoreError::NotConnected);
        };
        let made = tokio::time::timeout(self.timeout, async {
            match &self.target {
                Target::Single(client) => {
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(self.timeout)
                        .set_response_timeout(self.timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(500);
                    ConnectionManager::new_with_config(client.clone(), cfg)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        })
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        *self.conn.lock() = Some(made.clone());
        Ok(made)
    }

    /// One command, within the timeout.
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let call = async {
            match &mut conn {
                Conn::Single(c) => cmd.query_async::<T>(c).await,
                Conn::Cluster(c) => cmd.query_async::<T>(c).await,
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    /// A script on one key, within the timeout.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let mut inv = script.key(key);
        for a in args {
            inv.arg(*a);
        }
        let call = async {
            match &mut conn {
                Conn::Single(c) => inv.invoke_async::<T>(c).await,
                Conn::Cluster(c) => inv.invoke_async::<T>(c).await,
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    /// Appends a write to the end of its partition's queue; returns the stream entry's id.
    pub async fn enqueue(&self, w: &Stored) -> Result<String, StoreError> {
        let json = serde_json::to_string(w).map_err(|e| StoreError::Record(e.to_string()))?;
        self.run(
            redis::cmd("XADD")
                .arg(self.queue_key(&w.route, w.partition))
                .arg("*")
                .arg("w")
                .arg(json),
        )
        .await
    }

    pub fn queue_key(&self, route: &str, partition: u32) -> String {
        format!("{}{{{route}}}:q:{partition}", self.prefix)
    }

    pub fn lease_key(&self, route: &str, partition: u32) -> String {
        format!("{}{{{route}}}:lease:{partition}", self.prefix)
    }

    pub fn dlq_key(&self, route: &str) -> String {
        format!("{}{{{route}}}:dlq", self.prefix)
    }

    pub fn dedupe_key(&self, route: &str, digest: &str) -> String {
        format!("{}{{{route}}}:k:{digest}", self.prefix)
    }

    pub fn status_key(&self, id: &str) -> String {
        format!("{}w:{id}", self.prefix)
    }

    pub async fn status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        let raw: Option<String> = self.run(redis::cmd("GET").arg(self.status_key(id))).await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Record(e.to_string())))
            .transpose()
    }

    pub async fn put_status(&self, id: &str, s: &Status, ttl: Duration) -> Result<(), StoreError> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Record(e.to_string()))?;
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.status_key(id))
                .arg(json)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
    }
}

/// A queued write as the stream entry holds it: what the upstream is sent on replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub id: String,
    pub route: String,
    /// `legacy` or `modern`: the side whose upstream was down.
    pub side: String,
    pub method: String,
    /// The normalised path and the query, as the upstream would have got them.
    pub path: String,
    pub headers: Vec<StoredHeader>,
    /// Base64.
    pub body: String,
    pub idempotency_key: Option<String>,
    pub principal: Option<String>,
    /// Unix milliseconds.
    pub queued_at: u64,
    pub partition: u32,
    /// The request was translated by the side's `transform` before it was queued, so the
    /// answer is translated back at replay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub translated: bool,
}

/// A header value as text when it is visible ASCII, else as base64 (`b`): nothing is lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredHeader {
    pub n: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Replaying,
    Done,
    DeadLettered,
    Dropped,
}

impl State {
    /// Nothing more will be sent for a write in this state.
    pub fn finished(self) -> bool {
        matches!(self, Self::Done | Self::DeadLettered | Self::Dropped)
    }
}

/// A write's progress, shown by the status resource and the DLQ listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub route: String,
    pub principal: Option<String>,
    pub queued_at: u64,
    /// Attempts the upstream answered (or timed out on); they count toward `max_attempts`.
    pub attempts: u32,
    /// The last attempts' failures, oldest first (at most [`Status::HISTORY`]).
    #[serde(default)]
    pub errors: Vec<AttemptError>,
    #[serde(default)]
    pub result: Option<FinalAnswer>,
    /// The dead-letter stream entry, while the write is dead-lettered.
    #[serde(default)]
    pub dlq_entry: Option<String>,
    #[serde(default)]
    pub dead_letter_reason: Option<String>,
    pub updated_at: u64,
}

impl Status {
    pub const HISTORY: usize = 20;

    pub fn queued(s: &Stored) -> Self {
        Self {
            state: State::Queued,
            route: s.route.clone(),
            principal: s.principal.clone(),
            queued_at: s.queued_at,
            attempts: 0,
            errors: Vec::new(),
            result: None,
            dlq_entry: None,
            dead_letter_reason: None,
            updated_at: now_ms(),
        }
    }

    pub fn push_error(&mut self, error: String, status: Option<u16>) {
        self.errors.push(AttemptError {
            at: now_ms(),
            attempt: self.attempts,
            status,
            error,
        });
        if self.errors.len() > Self::HISTORY {
            let extra = self.errors.len() - Self::HISTORY;
            self.errors.drain(..extra);
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptError {
    /// Unix milliseconds.
    pub at: u64,
    pub attempt: u32,
    #[serde(default)]
    pub status: Option<u16>,
    pub error: String,
}

/// The upstream's answer that made the write done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalAnswer {
    pub status: u16,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Base64 of the body (its first [`super::MAX_KEPT_ANSWER`] bytes).
    pub body: String,
    #[serde(default)]
    pub truncated: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A stream entry: its id and its fields.
pub type Entry = (String, Vec<(String, String)>);

/// Reads `XRANGE`/`XAUTOCLAIM`-style entries; an entry whose fields are nil (deleted) is skipped.
pub fn entries(v: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else {
                return None;
            };
            let id = String::from_redis_value(pair.first()?).ok()?;
            let redis::Value::Array(fv) = pair.get(1)? else {
                return None;
            };
            let fields = fv
                .chunks(2)
                .filter_map(|c| {
                    Some((
                        String::from_redis_value(c.first()?).ok()?,
                        String::from_redis_value(c.get(1)?).ok()?,
                    ))
                })
                .collect();
            Some((id, fields))
        })
        .collect()
}

pub fn field<'a>(e: &'a Entry, name: &str) -> Option<&'a str> {
    e.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The unix milliseconds of a stream id (`1700000000000-0`).
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_fail_fast_while_another_connects_to_a_black_holed_redis() {
        // Accepts connections and never answers: every connect attempt lasts the timeout.
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hole.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = hole.accept().await {
                conns.push(c);
            }
        });
        let timeout = Duration::from_millis(400);
        let cfg = QueueStoreConfig {
            redis_urls: vec![format!("redis://{addr}")],
            key_prefix: "t:".into(),
            timeout,
            partitions: 1,
            claim_idle: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            status_prefix: "/w".into(),
            status_ttl: Duration::from_secs(60),
        };
        let store = std::sync::Arc::new(Store::new(&cfg).unwrap());
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move {
                    let t = std::time::Instant::now();
                    let r = s.run::<String>(&redis::cmd("PING")).await;
                    (r.is_err(), t.elapsed())
                })
            })
            .collect();
        for c in calls {
            let (failed, took) = c.await.unwrap();
            assert!(failed);
            assert!(took < timeout * 3, "a caller waited {took:?}");
        }
        assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
        held.abort();
    }
}
