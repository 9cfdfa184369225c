//! Outbound webhooks on rollout decisions: a JSON POST per decision and webhook, signed with
//! HMAC-SHA256, retried with exponential backoff and jitter.
//!
//! Neither the request path nor the rollout ticker ever waits for a receiver: a decision is put
//! on a bounded queue with `try_send` (dropped and counted when the queue is full), and one
//! background task per rollout takes it from there, with at most `IN_FLIGHT` deliveries at once.
//!
//! Signature scheme: `X-Ficus-Timestamp: <unix seconds>` and
//! `X-Ficus-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the body being
//! the exact bytes sent. Receivers recompute it over the raw body, compare in constant time,
//! and refuse timestamps older than a few minutes, so a captured delivery cannot be replayed.
//! Each attempt is signed afresh, so a late retry carries a current timestamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use metrics::Counter;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};

use super::HistoryEntry;
use crate::config::file::{RolloutEventKind, RolloutWebhookConfig};
use crate::telemetry::metrics::{Metrics, ROLLOUT_WEBHOOKS};

/// Deliveries waiting per rollout; beyond it new ones are dropped (and counted).
const QUEUE: usize = 256;
/// Deliveries (with their retries) running at once per rollout.
const IN_FLIGHT: usize = 4;
/// First retry after about this long, doubling each time, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub const SIGNATURE_HEADER: &str = "x-ficus-signature";
pub const TIMESTAMP_HEADER: &str = "x-ficus-timestamp";
pub const EVENT_HEADER: &str = "x-ficus-event";
pub const DELIVERY_HEADER: &str = "x-ficus-delivery";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("url: {0}")]
    Url(String),
    #[error("environment variable {0} is not set or empty")]
    Secret(String),
    #[error("max_attempts and timeout must be greater than zero")]
    Bounds,
}

/// One configured receiver, ready to sign.
pub struct Webhook {
    url: Uri,
    /// The receiver as logs show it: scheme and host only, since hooks (Slack's, for one)
    /// carry their secret in the path, and a URL may hold `user:password@`.
    shown: String,
    key: hmac::Key,
    events: Vec<RolloutEventKind>,
    max_attempts: u32,
    timeout: Duration,
}

impl Webhook {
    pub fn new(cfg: &RolloutWebhookConfig) -> Result<Self, WebhookError> {
        let url: Uri = cfg
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| WebhookError::Url(e.to_string()))?;
        match (url.scheme_str(), url.authority()) {
            (Some("http" | "https"), Some(_)) => {}
            _ => {
                return Err(WebhookError::Url(
                    "must be an absolute http:// or https:// URL".into(),
                ))
            }
        }
        let secret = std::env::var(&cfg.secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WebhookError::Secret(cfg.secret_env.clone()))?;
        if cfg.max_attempts == 0 || cfg.timeout.is_zero() {
            return Err(WebhookError::Bounds);
        }
        let host = url.host().unwrap_or_default();
        let shown = match url.port_u16() {
            Some(p) => format!("{}://{host}:{p}", url.scheme_str().unwrap_or_default()),
            None => format!("{}://{host}", url.scheme_str().unwrap_or_default()),
        };
        Ok(Self {
            url,
            shown,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            events: cfg.events.clone(),
            max_attempts: cfg.max_attempts,
            timeout: cfg.timeout,
        })
    }

    fn wants(&self, kind: RolloutEventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn sign(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

struct Job {
    hook: Arc<Webhook>,
    event: RolloutEventKind,
    delivery: String,
    body: Bytes,
}

#[derive(Default)]
struct Counters {
    delivered: OnceLock<Counter>,
    failed: OnceLock<Counter>,
    dropped: OnceLock<Counter>,
}

impl Counters {
    fn bump(c: &OnceLock<Counter>) {
        if let Some(c) = c.get() {
            c.increment(1);
        }
    }
}

/// A rollout's webhooks: the queue and, once started, the task that drains it.
pub struct Notifier {
    hooks: Vec<Arc<Webhook>>,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    counters: Arc<Counters>,
    sequence: AtomicU64,
}

impl Notifier {
    pub fn new(hooks: Vec<Webhook>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            hooks: hooks.into_iter().map(Arc::new).collect(),
            tx,
            rx: Mutex::new(Some(rx)),
            counters: Arc::default(),
            sequence: AtomicU64::new(0),
        }
    }

    /// `ficus_rollout_webhooks_total{route, outcome="delivered|failed|dropped"}`.
    pub fn attach_metrics(&self, metrics: &Metrics, route: &str) {
        let c = |outcome| metrics.counter(ROLLOUT_WEBHOOKS, &[("route", route), ("outcome", outcome)]);
        self.counters.delivered.get_or_init(|| c("delivered"));
        self.counters.failed.get_or_init(|| c("failed"));
        self.counters.dropped.get_or_init(|| c("dropped"));
    }

    /// Queues the decision for every webhook that wants it; never waits.
    pub fn send(&self, route: &str, state: &str, entry: &HistoryEntry) {
        for hook in self.hooks.iter().filter(|h| h.wants(entry.event)) {
            let delivery = format!(
                "{route}-{}-{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
                self.sequence.fetch_add(1, Ordering::Relaxed)
            );
            let payload = serde_json::json!({
                "delivery": delivery,
                "route": route,
                "state": state,
                "event": entry.event,
                "at": entry.at,
                "reason": entry.reason,
                "from_percent": entry.from_percent,
                "to_percent": entry.to_percent,
                "figures": entry.figures,
            });
            let body = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
            let job = Job {
                hook: hook.clone(),
                event: entry.event,
                delivery,
                body,
            };
            if self.tx.try_send(job).is_err() {
                Counters::bump(&self.counters.dropped);
                tracing::warn!(route, receiver = %hook.shown, "rollout webhook queue full: delivery dropped");
            }
        }
    }

    /// Starts the delivery task (once; later calls do nothing). It ends when the notifier is
    /// dropped with its rollout and the queue is drained.
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        if self.hooks.is_empty() {
            return;
        }
        let connector = match crate::upstream::tls::idp_connector(
            None,
            std::path::Path::new("."),
            Duration::from_secs(2),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "rollout webhooks disabled: no HTTP client");
                return;
            }
        };
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build::<_, Full<Bytes>>(connector);
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, counters) = (client.clone(), counters.clone());
                tokio::spawn(async move {
                    let ok = deliver(&client, &job).await;
                    Counters::bump(if ok { &counters.delivered } else { &counters.failed });
                    drop(permit);
                });
            }
        });
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// Up to `max_attempts` POSTs until one gets a 2xx.
async fn deliver(client: &Client, job: &Job) -> bool {
    let hook = &job.hook;
    let event = serde_json::to_value(job.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    for attempt in 0..hook.max_attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let req = Request::post(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "ficus-rollout-webhook")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, sign(&hook.key, timestamp, &job.body))
            .header(EVENT_HEADER, &event)
            .header(DELIVERY_HEADER, &job.delivery)
            .body(Full::new(job.body.clone()));
        let Ok(req) = req else { return false };
        let outcome = match tokio::time::timeout(hook.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return true,
            Ok(Ok(resp)) => format!("answered {}", resp.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", hook.timeout),
        };
        tracing::debug!(receiver = %hook.shown, attempt = attempt + 1, %outcome, "rollout webhook attempt failed");
    }
    tracing::warn!(receiver = %hook.shown, attempts = hook.max_attempts, delivery = %job.delivery, "rollout webhook not delivered");
    false
}

/// Exponential with "equal jitter": between half and all of `base * 2^(attempt-1)`, capped, so
/// retries of many deliveries spread out instead of arriving together.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let a = sign(&key, 1_700_000_000, br#"{"a":1}"#);
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(
            a,
            sign(&key, 1_700_000_001, br#"{"a":1}"#),
            "a replayed body with a new time"
        );
        assert_ne!(a, sign(&key, 1_700_000_000, br#"{"a":2}"#));
        // The scheme as documented: HMAC over "<timestamp>.<body>".
        let whole = hmac::sign(&key, br#"1700000000.{"a":1}"#);
        let hex: String = whole.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a, format!("sha256={hex}"));
    }

    #[test]
    fn logs_name_the_receiver_without_its_path_or_credentials() {
        std::env::set_var("FICUS_TEST_WEBHOOK_SHOWN", "k");
        let cfg = RolloutWebhookConfig {
            url: "https://user:pw@hooks.example.com:8443/services/T000/B000/SECRETPATH".into(),
            secret_env: "FICUS_TEST_WEBHOOK_SHOWN".into(),
            events: Vec::new(),
            max_attempts: 1,
            timeout: Duration::from_secs(1),
        };
        let Ok(hook) = Webhook::new(&cfg) else {
            panic!("a valid webhook was refused")
        };
        assert_eq!(hook.shown, "https://hooks.example.com:8443");
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            let full = BACKOFF_BASE
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
