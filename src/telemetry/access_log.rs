//! One JSON line per request, written by a background task so the request path never blocks on
//! stdout. When the writer falls behind, lines are dropped and counted rather than queued forever.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method, StatusCode};
use metrics::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

const QUEUE: usize = 8192;

pub struct AccessRecord {
    pub time: SystemTime,
    pub request_id: Option<HeaderValue>,
    pub client: IpAddr,
    pub method: Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: StatusCode,
    pub duration_us: u64,
    pub error: Option<&'static str>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    kind: &'static str,
    request_id: Option<&'a str>,
    client: String,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    status: u16,
    duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessRecord>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer task; it ends when every `AccessLog` clone is gone.
    pub fn spawn(dropped: Counter) -> Self {
        let (tx, mut rx) = mpsc::channel::<AccessRecord>(QUEUE);
        tokio::task::spawn_blocking(move || {
            // Not `stdout().lock()`: holding the lock for the task's lifetime would block every
            // other writer to stdout (the demo's banner, for one).
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
            while let Some(first) = rx.blocking_recv() {
                write_line(&mut out, &first);
                // Batch whatever else is queued before paying for a flush.
                while let Ok(rec) = rx.try_recv() {
                    write_line(&mut out, &rec);
                }
                let _ = out.flush();
            }
        });
        Self { tx, dropped }
    }

    pub fn log(&self, rec: AccessRecord) {
        if self.tx.try_send(rec).is_err() {
            self.dropped.increment(1);
        }
    }
}

fn write_line(out: &mut impl Write, r: &AccessRecord) {
    let line = Line {
        ts: humantime::format_rfc3339_micros(r.time).to_string(),
        kind: "access",
        request_id: r.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client: r.client.to_string(),
        method: r.method.as_str(),
        path: &r.path,
        route: r.route.as_deref(),
        upstream: r.upstream.as_deref(),
        status: r.status.as_u16(),
        duration_us: r.duration_us,
        error: r.error,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
