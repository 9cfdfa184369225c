//! The state every connection, the admin API and the reload machinery share.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use serde::Serialize;

use crate::config::compile::{Compiler, Snapshot};
use crate::config::{ConfigProblem, ConfigSource};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// State shared by every connection, the admin API and the reload machinery.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Builds every snapshot, at start and on each reload.
    pub compiler: Compiler,
    pub access_log: Option<AccessLog>,
    /// Built at start from `telemetry.tracing`; `None` (the default) means no spans at all.
    pub traces: Option<crate::telemetry::traces::Tracing>,
    pub source: ConfigSource,
    pub status: parking_lot::Mutex<ReloadStatus>,
    pub reload_lock: tokio::sync::Mutex<()>,
    pub reload_metrics: ReloadMetrics,
    /// Listener names and configured addresses, as bound at start; reloads may not change them.
    pub bound_listeners: Vec<(String, SocketAddr)>,
    pub admin_bind: SocketAddr,
    /// The bearer token for state-changing admin calls; `None` disables them.
    pub admin_token: Option<String>,
    pub ready: AtomicBool,
}

pub struct ReloadMetrics {
    pub ok: Counter,
    pub failed: Counter,
    pub last_success: Gauge,
}

impl Shared {
    pub fn metrics(&self) -> &Metrics {
        &self.compiler.metrics
    }
}

/// What `GET /admin/config` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub version: u64,
    pub hash: String,
    pub source: String,
    #[serde(with = "rfc3339")]
    pub loaded_at: SystemTime,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub trigger: String,
    pub problems: Vec<ConfigProblem>,
    /// The same problems as `ficus check` prints them.
    pub text: Vec<String>,
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
    }
}

impl ReloadStatus {
    pub fn initial(snap: &Snapshot) -> Self {
        Self {
            version: snap.version,
            hash: snap.hash.clone(),
            source: snap.source.clone(),
            loaded_at: snap.loaded_at,
            reloads_ok: 0,
            reloads_failed: 0,
            last_error: None,
        }
    }
}
