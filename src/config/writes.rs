//! The config of write buffering (`pipeline::writes`): the top-level `queue_store` and each
//! route's `buffer_writes`. Plain serde structs; `pipeline::writes::compile` validates them.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::HumanDuration;
use super::values::ByteSize;

/// Where buffered writes live: Redis Streams, shared by every ficus instance.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueStoreConfig {
    /// One URL: a single Redis. Several: seed nodes of a Redis Cluster.
    pub redis_urls: Vec<String>,
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// A Redis call that takes longer fails: a write that cannot be queued gets 503.
    #[serde(default = "default_timeout", with = "HumanDuration")]
    pub timeout: Duration,
    /// Streams per route; writes are spread over them by their partition key, and each is
    /// replayed in order by one instance at a time.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How long an instance's hold on a partition lasts without renewal, and how long a write
    /// taken by an instance must sit idle before another instance claims it (`XAUTOCLAIM`).
    #[serde(default = "default_claim_idle", with = "HumanDuration")]
    pub claim_idle: Duration,
    /// How often an idle partition is looked at.
    #[serde(default = "default_poll", with = "HumanDuration")]
    pub poll_interval: Duration,
    /// The path prefix of the status resource on the public listeners (`{prefix}/{id}`).
    #[serde(default = "default_status_prefix")]
    pub status_prefix: String,
    /// How long a write's status stays readable after it was queued (and beyond `max_age`).
    #[serde(default = "default_status_ttl", with = "HumanDuration")]
    pub status_ttl: Duration,
}

/// Keep accepting writes while the upstream is down: queued (202), replayed later.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BufferWritesConfig {
    /// Where the queue lives: `redis` (the top-level `queue_store`).
    #[serde(default)]
    pub store: QueueStoreKind,
    /// Answered attempts (5xx, timeouts) before the write goes to the dead-letter stream.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// A write not done within this time after it was queued goes to the dead-letter stream.
    #[serde(default = "default_max_age", with = "HumanDuration")]
    pub max_age: Duration,
    /// The methods buffered; others are never queued.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Buffered methods without an `Idempotency-Key` get 400, healthy upstream or not.
    #[serde(default = "default_true")]
    pub require_idempotency_key: bool,
    /// Writes with the same value are replayed in arrival order (a request key: `header:<name>`,
    /// `jwt.sub`...). Unset: the migration's `sticky` key; without one, the whole route.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// Larger bodies (or of unknown length) are sent as usual and never queued. The listener's
    /// `max_body_bytes` bounds it too.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The first retry's wait; each retry doubles it (with full jitter), up to `backoff_max`.
    #[serde(default = "default_backoff_base", with = "HumanDuration")]
    pub backoff_base: Duration,
    #[serde(default = "default_backoff_max", with = "HumanDuration")]
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueStoreKind {
    #[default]
    Redis,
}

fn default_prefix() -> String {
    "ficus:writes:".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_partitions() -> u32 {
    16
}
fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_poll() -> Duration {
    Duration::from_millis(200)
}
fn default_status_prefix() -> String {
    "/ficus/writes".into()
}
fn default_status_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_attempts() -> u32 {
    10
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_methods() -> Vec<String> {
    ["POST", "PUT", "PATCH", "DELETE"].map(String::from).to_vec()
}
fn default_true() -> bool {
    true
}
fn default_max_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
