//! Guarded rollout with analysis against a baseline: over each stage both sides' traffic is
//! measured (5xx rate and an HDR latency histogram per side, plus the shadow diff rate), and a
//! check compares modern with legacy (`max_error_rate_increase`, `max_p99_ratio`) besides the
//! absolute guards (`max_error_rate`, `max_p99`, `max_diff_rate`). `failure_threshold` failed
//! checks in a row roll back to the last good stage (or 0) and pause; a passing stage that has
//! lasted `every` steps up by `step`, unless the step reaches an `approval_before` percent, where
//! the rollout waits for `POST /admin/rollouts/NAME/approve`. Every decision goes to a bounded
//! history with its reason and figures, to the log, and to the configured webhooks.
//!
//! Decisions read time from a [`Clock`], so tests drive rollouts with a manual clock.

pub mod webhook;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::file::{RolloutConfig, RolloutEventKind};
use crate::telemetry::metrics::{Metrics, RolloutMetrics, RolloutStage};
use webhook::Notifier;

/// Where rollout decisions get the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// A rollout's live state; kept across reloads that leave the route's migration unchanged.
pub struct Rollout {
    cfg: RolloutConfig,
    clock: Arc<dyn Clock>,
    /// Out of 10 000: what the split reads on every request.
    percent_bp: AtomicU32,
    last_good_bp: AtomicU32,
    paused: AtomicBool,
    stage: Mutex<Stage>,
    last_event: Mutex<Option<String>>,
    /// Where the analysis window's traffic is counted: one short lock per side, so legacy and
    /// modern requests never contend with each other.
    legacy: Mutex<SideWindow>,
    modern: Mutex<SideWindow>,
    /// Out of 10 000: the step that waits for an approval; `NONE` when none does.
    awaiting_bp: AtomicU32,
    history: Mutex<VecDeque<HistoryEntry>>,
    notifier: Option<Arc<Notifier>>,
    pub(crate) ticker_started: AtomicBool,
    route: String,
    /// Shared with the other instances through Redis, when configured.
    shared: Option<SharedStage>,
    /// The shared stage's version this instance last saw or wrote.
    version: AtomicU64,
    /// One sync-decide-publish at a time per instance (the ticker and the admin API race
    /// otherwise, and a decision could be lost).
    sync_lock: tokio::sync::Mutex<()>,
    /// The pause was a rollback's (a guard broke), not an operator's.
    rolled_back: AtomicBool,
    /// Attached by the first snapshot that uses this rollout (the gateway's recorder).
    metrics: OnceLock<RolloutMetrics>,
}

/// The stage in a Redis hash (`percent`, `last_good`, `paused`, `awaiting`, `version`); every
/// write is a compare-and-set on `version`, so concurrent decisions by several instances apply
/// once.
pub struct SharedStage {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    key: String,
}

const CAS: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'percent', ARGV[2], 'last_good', ARGV[3], 'paused', ARGV[4], 'awaiting', ARGV[5], 'version', v + 1)
return 1
"#;

/// percent, last good, paused, awaiting approval (bp or `NONE`), version.
type Remote = (u32, u32, bool, u32, u64);
type Local = (u32, u32, bool, u32);
/// The hash's fields as HMGET returns them, any of them possibly missing.
type RawHash = (Option<u32>, Option<u32>, Option<u8>, Option<u32>, Option<u64>);

/// No step awaits approval.
const NONE: u32 = u32::MAX;

impl SharedStage {
    pub fn new(url: &str, key: String) -> Result<Self, String> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            conn: Default::default(),
            key,
        })
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, String> {
        self.conn
            .get_or_try_init(|| async {
                tokio::time::timeout(Duration::from_secs(2), self.client.get_connection_manager())
                    .await
                    .map_err(|_| "connecting to Redis timed out".to_string())?
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    async fn read(&self) -> Result<Option<Remote>, String> {
        let mut c = self.conn().await?;
        let v: RawHash = redis::cmd("HMGET")
            .arg(&self.key)
            .arg("percent")
            .arg("last_good")
            .arg("paused")
            .arg("awaiting")
            .arg("version")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match v {
            // A hash written before approvals existed has no `awaiting`: nothing awaits.
            (Some(p), Some(l), Some(z), a, Some(ver)) => Some((p, l, z == 1, a.unwrap_or(NONE), ver)),
            _ => None,
        })
    }

    async fn write(
        &self,
        expected: u64,
        (percent, last_good, paused, awaiting): Local,
    ) -> Result<bool, String> {
        let mut c = self.conn().await?;
        let ok: i64 = redis::Script::new(CAS)
            .key(&self.key)
            .arg(expected)
            .arg(percent)
            .arg(last_good)
            .arg(u8::from(paused))
            .arg(awaiting)
            .invoke_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ok == 1)
    }
}

/// Latencies above this are counted as this (an hour-long answer is no less slow at one minute).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Decisions kept per route for `GET /admin/rollouts`.
const HISTORY: usize = 200;

/// One side's traffic over the analysis window. Recording is a counter bump and an HDR
/// histogram increment (a few dozen nanoseconds) under the side's own lock; the histogram
/// (2 significant digits, 1 µs to 60 s) is about 20 KB and never grows, however long the stage.
struct SideWindow {
    requests: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl SideWindow {
    fn new() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn record(&mut self, server_error: bool, latency: Duration) {
        self.requests += 1;
        self.errors += u64::from(server_error);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        // In range by the clamp above.
        let _ = self.latency_us.record(us);
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.latency_us.reset();
    }

    fn figures(&self) -> SideFigures {
        SideFigures {
            requests: self.requests,
            error_rate: if self.requests == 0 {
                0.0
            } else {
                self.errors as f64 / self.requests as f64
            },
            p99_ms: if self.latency_us.is_empty() {
                0.0
            } else {
                self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
            },
        }
    }
}

struct Stage {
    started: Duration,
    started_at: SystemTime,
    /// Counts the stages since this rollout began (steps, rollbacks, resumes, sets).
    index: u64,
    failed_in_a_row: u32,
    compared: u64,
    mismatched: u64,
}

impl Stage {
    fn new(started: Duration, index: u64) -> Self {
        Self {
            started,
            started_at: SystemTime::now(),
            index,
            failed_in_a_row: 0,
            compared: 0,
            mismatched: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SideFigures {
    pub requests: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

/// What a check sees: both sides over the analysis window, and how modern compares.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub legacy: SideFigures,
    pub modern: SideFigures,
    pub diff_rate: f64,
    pub comparisons: u64,
    /// Modern's 5xx rate minus legacy's.
    pub error_rate_increase: f64,
    /// Modern's p99 over legacy's; null while legacy has no latency to compare with.
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub at: String,
    pub event: RolloutEventKind,
    pub reason: String,
    pub from_percent: f64,
    pub to_percent: f64,
    pub figures: Analysis,
}

/// A decision taken but not yet published: it enters the history and goes to the webhooks only
/// once the shared stage accepted it (a decision that lost the race to another instance never
/// happened).
pub struct Decision {
    kind: RolloutEventKind,
    /// `ficus_rollout_events_total{reason}`.
    metric: &'static str,
    reason: String,
    from_bp: u32,
    to_bp: u32,
    figures: Analysis,
    /// Sent to the webhooks (an adopted stage was announced by the instance that decided it).
    notify: bool,
}

/// An operator's order (`POST /admin/rollouts/NAME/...` or `/admin/routes/NAME/rollout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Pause,
    Resume,
    Rollback,
    Approve,
    Set(f64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("no step of this rollout is waiting for an approval")]
    NothingToApprove,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub percent: f64,
    pub last_good: f64,
    pub paused: bool,
    pub stage_requests: u64,
    pub stage_error_rate: f64,
    pub stage_p99_ms: f64,
    pub stage_diff_rate: f64,
    pub last_event: Option<String>,
    pub state: &'static str,
    pub awaiting_approval_percent: Option<f64>,
    pub legacy_stage_requests: u64,
    pub legacy_stage_error_rate: f64,
    pub legacy_stage_p99_ms: f64,
}

/// `GET /admin/rollouts` for one route.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub route: String,
    pub state: &'static str,
    pub percent: f64,
    pub last_good_percent: f64,
    pub awaiting_approval_percent: Option<f64>,
    pub stage: StageView,
    pub analysis: Analysis,
    pub checks: ChecksView,
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    pub index: u64,
    pub started: String,
    pub failed_checks_in_a_row: u32,
}

/// The configured checks, so a reader can tell a figure from its limit.
#[derive(Debug, Clone, Serialize)]
pub struct ChecksView {
    pub min_requests: u64,
    pub failure_threshold: u32,
    pub max_error_rate: f64,
    pub max_p99_ms: f64,
    pub max_diff_rate: f64,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub approval_before: Vec<f64>,
}

fn pct(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Rollout {
    pub fn new(
        route: &str,
        cfg: RolloutConfig,
        start_percent: f64,
        clock: Arc<dyn Clock>,
        shared: Option<SharedStage>,
    ) -> Self {
        Self::with_notifier(route, cfg, start_percent, clock, shared, None)
    }

    pub fn with_notifier(
        route: &str,
        cfg: RolloutConfig,
        start_percent: f64,
        clock: Arc<dyn Clock>,
        shared: Option<SharedStage>,
        notifier: Option<Arc<Notifier>>,
    ) -> Self {
        let bp = (start_percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
        let now = clock.now();
        Self {
            cfg,
            percent_bp: AtomicU32::new(bp),
            last_good_bp: AtomicU32::new(bp),
            paused: AtomicBool::new(false),
            stage: Mutex::new(Stage::new(now, 0)),
            last_event: Mutex::new(None),
            legacy: Mutex::new(SideWindow::new()),
            modern: Mutex::new(SideWindow::new()),
            awaiting_bp: AtomicU32::new(NONE),
            history: Mutex::new(VecDeque::new()),
            notifier,
            ticker_started: AtomicBool::new(false),
            route: route.to_string(),
            clock,
            shared,
            version: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
            rolled_back: AtomicBool::new(false),
            metrics: OnceLock::new(),
        }
    }

    /// Registers the route's split, stage and event series; kept across reloads with the rollout.
    pub fn attach_metrics(&self, metrics: &Metrics) {
        self.metrics
            .get_or_init(|| RolloutMetrics::new(metrics, &self.route));
        if let Some(n) = &self.notifier {
            n.attach_metrics(metrics, &self.route);
        }
        self.publish_gauges();
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    /// `progressing`, `paused`, `awaiting_approval`, `promoted` or `rolled_back`.
    pub fn state(&self) -> &'static str {
        let (percent, _, paused, awaiting) = self.local();
        match (paused, self.rolled_back.load(Ordering::Relaxed)) {
            (true, true) => "rolled_back",
            (true, false) => "paused",
            _ if awaiting != NONE => "awaiting_approval",
            _ if percent >= 10_000 => "promoted",
            _ => "progressing",
        }
    }

    fn publish_gauges(&self) {
        let Some(m) = self.metrics.get() else { return };
        let (percent, last_good, _, _) = self.local();
        let stage = match self.state() {
            "rolled_back" => RolloutStage::RolledBack,
            "paused" => RolloutStage::Paused,
            "awaiting_approval" => RolloutStage::AwaitingApproval,
            "promoted" => RolloutStage::Complete,
            _ => RolloutStage::Advancing,
        };
        m.set(percent, last_good, stage);
    }

    fn local(&self) -> Local {
        (
            self.percent_bp.load(Ordering::Relaxed),
            self.last_good_bp.load(Ordering::Relaxed),
            self.paused.load(Ordering::Relaxed),
            self.awaiting_bp.load(Ordering::Relaxed),
        )
    }

    /// A new stage: fresh windows on both sides, the stage clock restarted.
    fn restart_stage(&self, s: &mut Stage) {
        *s = Stage::new(self.clock.now(), s.index + 1);
        self.legacy.lock().reset();
        self.modern.lock().reset();
    }

    /// Adopts the shared stage if another instance moved it; publishes ours if there is none.
    async fn sync(&self) {
        let Some(shared) = &self.shared else { return };
        match shared.read().await {
            Ok(Some((p, l, z, a, ver))) if ver != self.version.load(Ordering::Relaxed) => {
                // Instances that start together race to publish the same configured stage;
                // the loser's window of traffic is as good as the winner's, so it is kept.
                let same = self.percent_bp.load(Ordering::Relaxed) == p
                    && self.last_good_bp.load(Ordering::Relaxed) == l
                    && self.paused.load(Ordering::Relaxed) == z
                    && self.awaiting_bp.load(Ordering::Relaxed) == a;
                self.version.store(ver, Ordering::Relaxed);
                if same {
                    return;
                }
                let from = self.percent_bp.swap(p, Ordering::Relaxed);
                self.last_good_bp.store(l, Ordering::Relaxed);
                self.paused.store(z, Ordering::Relaxed);
                self.awaiting_bp.store(a, Ordering::Relaxed);
                self.version.store(ver, Ordering::Relaxed);
                let figures = self.analysis(&self.stage.lock());
                self.restart_stage(&mut self.stage.lock());
                self.commit(vec![Decision {
                    kind: RolloutEventKind::Set,
                    metric: "",
                    reason: format!(
                        "adopted the shared stage: {}%{}{}",
                        pct(p),
                        if z { ", paused" } else { "" },
                        if a == NONE { "" } else { ", awaiting approval" }
                    ),
                    from_bp: from,
                    to_bp: p,
                    figures,
                    notify: false,
                }]);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                // Losing this race is fine: the next sync adopts the winner's stage.
                let _ = self.publish((u32::MAX, 0, false, NONE)).await;
            }
            Err(e) => tracing::debug!(route = %self.route, error = %e, "rollout stage not synced"),
        }
    }

    /// Writes the local stage to Redis if it differs from `before`. `false` when another
    /// instance wrote first (the caller syncs and decides again).
    async fn publish(&self, before: Local) -> bool {
        let Some(shared) = &self.shared else { return true };
        let now = self.local();
        if now == before {
            return true;
        }
        let expected = self.version.load(Ordering::Relaxed);
        match shared.write(expected, now).await {
            Ok(true) => {
                self.version.store(expected + 1, Ordering::Relaxed);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(route = %self.route, error = %e, "rollout stage not shared");
                true
            }
        }
    }

    /// One ticker round: sync with the other instances, decide, publish the decision. A
    /// decision that loses the race is dropped: the next round adopts the winner's stage.
    pub async fn round(&self) {
        let _one = self.sync_lock.lock().await;
        self.sync().await;
        let before = self.local();
        let mut out = Vec::new();
        self.decide(&mut out);
        if self.publish(before).await {
            self.commit(out);
        }
    }

    /// Applies an admin action and shares it; if another instance wrote first, adopts its
    /// stage and applies the action again on top.
    pub async fn act(&self, action: Action) -> Result<(), RolloutError> {
        let _one = self.sync_lock.lock().await;
        for attempt in 0..3 {
            self.sync().await;
            let before = self.local();
            let mut out = Vec::new();
            self.apply_into(action, &mut out)?;
            if self.publish(before).await || attempt == 2 {
                self.commit(out);
                if attempt == 2 {
                    tracing::warn!(route = %self.route, "rollout action not shared after three tries");
                }
                return Ok(());
            }
        }
        Ok(())
    }

    pub fn percent_bp(&self) -> u32 {
        self.percent_bp.load(Ordering::Relaxed)
    }

    /// One request served by modern.
    pub fn record(&self, server_error: bool, latency: Duration) {
        self.modern.lock().record(server_error, latency);
    }

    /// One request served by legacy: the baseline.
    pub fn record_legacy(&self, server_error: bool, latency: Duration) {
        self.legacy.lock().record(server_error, latency);
    }

    /// One shadow comparison.
    pub fn record_comparison(&self, mismatch: bool) {
        let mut s = self.stage.lock();
        s.compared += 1;
        s.mismatched += u64::from(mismatch);
    }

    fn analysis(&self, s: &Stage) -> Analysis {
        let legacy = self.legacy.lock().figures();
        let modern = self.modern.lock().figures();
        Analysis {
            diff_rate: if s.compared == 0 {
                0.0
            } else {
                s.mismatched as f64 / s.compared as f64
            },
            comparisons: s.compared,
            error_rate_increase: modern.error_rate - legacy.error_rate,
            p99_ratio: (legacy.p99_ms > 0.0).then(|| modern.p99_ms / legacy.p99_ms),
            legacy,
            modern,
        }
    }

    /// The broken checks, each with its metric reason and its figures in words. `None` when a
    /// configured baseline check cannot be judged yet (legacy has too few requests).
    fn failures(&self, a: &Analysis) -> Option<Vec<(&'static str, String)>> {
        let c = &self.cfg;
        let mut broken = Vec::new();
        if a.modern.error_rate > c.max_error_rate {
            broken.push((
                "rollback_error_rate",
                format!("error rate {:.4} > {}", a.modern.error_rate, c.max_error_rate),
            ));
        }
        let max_p99_ms = c.max_p99.as_secs_f64() * 1000.0;
        if a.modern.p99_ms > max_p99_ms {
            broken.push((
                "rollback_p99",
                format!("p99 {:.1} ms > {max_p99_ms:.1} ms", a.modern.p99_ms),
            ));
        }
        if a.diff_rate > c.max_diff_rate {
            broken.push((
                "rollback_diff_rate",
                format!("diff rate {:.4} > {}", a.diff_rate, c.max_diff_rate),
            ));
        }
        let baseline = c.max_error_rate_increase.is_some() || c.max_p99_ratio.is_some();
        if baseline && a.legacy.requests < c.min_requests.max(1) {
            // The absolute checks still judge; the baseline ones wait for enough legacy traffic.
            return if broken.is_empty() { None } else { Some(broken) };
        }
        if let Some(max) = c.max_error_rate_increase {
            if a.error_rate_increase > max {
                broken.push((
                    "rollback_error_rate_increase",
                    format!(
                        "error rate increase {:.4} > {max} (modern {:.4}, legacy {:.4})",
                        a.error_rate_increase, a.modern.error_rate, a.legacy.error_rate
                    ),
                ));
            }
        }
        if let (Some(max), Some(ratio)) = (c.max_p99_ratio, a.p99_ratio) {
            if ratio > max {
                broken.push((
                    "rollback_p99_ratio",
                    format!(
                        "p99 ratio {ratio:.2} > {max} (modern {:.1} ms, legacy {:.1} ms)",
                        a.modern.p99_ms, a.legacy.p99_ms
                    ),
                ));
            }
        }
        Some(broken)
    }

    /// Takes the decision due now, if any, and applies it locally.
    fn decide(&self, out: &mut Vec<Decision>) {
        if self.paused.load(Ordering::Relaxed) {
            return;
        }
        let now = self.clock.now();
        let mut s = self.stage.lock();
        let a = self.analysis(&s);
        if a.modern.requests < self.cfg.min_requests {
            return;
        }
        let current = self.percent_bp.load(Ordering::Relaxed);
        let Some(broken) = self.failures(&a) else {
            // A baseline check waits for enough legacy traffic: no verdict either way.
            return;
        };
        if !broken.is_empty() {
            s.failed_in_a_row += 1;
            let threshold = self.cfg.failure_threshold.max(1);
            let what = broken
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            if s.failed_in_a_row < threshold {
                out.push(Decision {
                    kind: RolloutEventKind::CheckFailed,
                    metric: "check_failed",
                    reason: format!(
                        "check failed ({} of {threshold} in a row) at {}%: {what}",
                        s.failed_in_a_row,
                        pct(current)
                    ),
                    from_bp: current,
                    to_bp: current,
                    figures: a,
                    notify: true,
                });
                // The next check judges fresh traffic only; the stage's clock keeps running.
                let failed = s.failed_in_a_row;
                s.compared = 0;
                s.mismatched = 0;
                self.legacy.lock().reset();
                self.modern.lock().reset();
                s.failed_in_a_row = failed;
                return;
            }
            let back = self.rollback_locally(&mut s);
            out.push(Decision {
                kind: RolloutEventKind::Rollback,
                metric: broken[0].0,
                reason: format!(
                    "rolled back from {}% to {}% and paused: {what}",
                    pct(current),
                    pct(back)
                ),
                from_bp: current,
                to_bp: back,
                figures: a,
                notify: true,
            });
            return;
        }
        s.failed_in_a_row = 0;
        if now.saturating_sub(s.started) < self.cfg.every || current >= 10_000 {
            return;
        }
        let next = (current + (self.cfg.step * 100.0).round() as u32).min(10_000);
        if self.needs_approval(current, next) {
            if self.awaiting_bp.swap(next, Ordering::Relaxed) != next {
                out.push(Decision {
                    kind: RolloutEventKind::ApprovalNeeded,
                    metric: "approval_needed",
                    reason: format!(
                        "the step from {}% to {}% waits for an approval",
                        pct(current),
                        pct(next)
                    ),
                    from_bp: current,
                    to_bp: next,
                    figures: a,
                    notify: true,
                });
            }
            return;
        }
        self.advance(&mut s, current, next, a, "", out);
    }

    /// A step from `current` to `next` reaches or passes one of `approval_before`.
    fn needs_approval(&self, current: u32, next: u32) -> bool {
        self.cfg.approval_before.iter().any(|p| {
            let bp = (p * 100.0).round() as u32;
            current < bp && bp <= next
        })
    }

    fn advance(
        &self,
        s: &mut Stage,
        current: u32,
        next: u32,
        a: Analysis,
        why: &str,
        out: &mut Vec<Decision>,
    ) {
        self.last_good_bp.store(current, Ordering::Relaxed);
        self.percent_bp.store(next, Ordering::Relaxed);
        self.awaiting_bp.store(NONE, Ordering::Relaxed);
        self.restart_stage(s);
        let figures = format!(
            "modern error rate {:.4}, p99 {:.1} ms; legacy error rate {:.4}, p99 {:.1} ms; diff rate {:.4}",
            a.modern.error_rate, a.modern.p99_ms, a.legacy.error_rate, a.legacy.p99_ms, a.diff_rate
        );
        out.push(Decision {
            kind: if next >= 10_000 {
                RolloutEventKind::Promote
            } else {
                RolloutEventKind::Step
            },
            metric: "advanced",
            reason: format!(
                "advanced from {}% to {}%{why} ({figures})",
                pct(current),
                pct(next)
            ),
            from_bp: current,
            to_bp: next,
            figures: a,
            notify: true,
        });
    }

    /// Back to the last good stage (or 0), paused; returns where it went.
    fn rollback_locally(&self, s: &mut Stage) -> u32 {
        let back = if self.cfg.rollback_to_zero {
            0
        } else {
            self.last_good_bp.load(Ordering::Relaxed)
        };
        self.percent_bp.store(back, Ordering::Relaxed);
        self.rolled_back.store(true, Ordering::Relaxed);
        self.paused.store(true, Ordering::Relaxed);
        self.awaiting_bp.store(NONE, Ordering::Relaxed);
        self.restart_stage(s);
        back
    }

    /// Applies an operator's order locally.
    fn apply_into(&self, action: Action, out: &mut Vec<Decision>) -> Result<(), RolloutError> {
        let mut s = self.stage.lock();
        let a = self.analysis(&s);
        let current = self.percent_bp.load(Ordering::Relaxed);
        let decision = |kind, metric, reason: String, to_bp| Decision {
            kind,
            metric,
            reason,
            from_bp: current,
            to_bp,
            figures: a.clone(),
            notify: true,
        };
        match action {
            Action::Pause => {
                self.paused.store(true, Ordering::Relaxed);
                self.rolled_back.store(false, Ordering::Relaxed);
                self.awaiting_bp.store(NONE, Ordering::Relaxed);
                out.push(decision(
                    RolloutEventKind::Pause,
                    "paused",
                    format!("paused at {}% by the admin API", pct(current)),
                    current,
                ));
            }
            Action::Resume => {
                self.restart_stage(&mut s);
                self.paused.store(false, Ordering::Relaxed);
                self.rolled_back.store(false, Ordering::Relaxed);
                self.awaiting_bp.store(NONE, Ordering::Relaxed);
                out.push(decision(
                    RolloutEventKind::Resume,
                    "resumed",
                    format!("resumed at {}% by the admin API", pct(current)),
                    current,
                ));
            }
            Action::Rollback => {
                let back = self.rollback_locally(&mut s);
                out.push(decision(
                    RolloutEventKind::Rollback,
                    "rollback_admin",
                    format!(
                        "rolled back from {}% to {}% and paused by the admin API",
                        pct(current),
                        pct(back)
                    ),
                    back,
                ));
            }
            Action::Approve => {
                let next = self.awaiting_bp.load(Ordering::Relaxed);
                if next == NONE || self.paused.load(Ordering::Relaxed) {
                    return Err(RolloutError::NothingToApprove);
                }
                out.push(decision(
                    RolloutEventKind::Approve,
                    "approved",
                    format!(
                        "the step from {}% to {}% was approved by the admin API",
                        pct(current),
                        pct(next)
                    ),
                    next,
                ));
                self.advance(&mut s, current, next, a.clone(), " on approval", out);
            }
            Action::Set(percent) => {
                let bp = (percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
                self.percent_bp.store(bp, Ordering::Relaxed);
                self.last_good_bp.store(bp, Ordering::Relaxed);
                self.awaiting_bp.store(NONE, Ordering::Relaxed);
                self.restart_stage(&mut s);
                out.push(decision(
                    RolloutEventKind::Set,
                    "set",
                    format!("set to {percent}% by the admin API"),
                    bp,
                ));
            }
        }
        Ok(())
    }

    /// Records decisions that took effect: log, metrics, history, webhooks.
    fn commit(&self, decisions: Vec<Decision>) {
        for d in decisions {
            match d.kind {
                RolloutEventKind::Rollback | RolloutEventKind::CheckFailed => {
                    tracing::warn!(route = %self.route, event = ?d.kind, "{}", d.reason)
                }
                _ => tracing::info!(route = %self.route, event = ?d.kind, "{}", d.reason),
            }
            if let Some(m) = self.metrics.get() {
                m.event(d.metric);
            }
            *self.last_event.lock() = Some(d.reason.clone());
            let entry = HistoryEntry {
                at: rfc3339(SystemTime::now()),
                event: d.kind,
                reason: d.reason,
                from_percent: pct(d.from_bp),
                to_percent: pct(d.to_bp),
                figures: d.figures,
            };
            if d.notify {
                if let Some(n) = &self.notifier {
                    n.send(&self.route, self.state(), &entry);
                }
            }
            let mut h = self.history.lock();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(entry);
        }
        self.publish_gauges();
    }

    /// Takes the decision due now, if any, on this instance alone (the ticker uses [`round`]).
    pub fn tick(&self) {
        let mut out = Vec::new();
        self.decide(&mut out);
        self.commit(out);
    }

    /// Applies an order on this instance alone (the admin API uses [`act`]).
    pub fn apply(&self, action: Action) -> Result<(), RolloutError> {
        let mut out = Vec::new();
        self.apply_into(action, &mut out)?;
        self.commit(out);
        Ok(())
    }

    pub fn pause(&self) {
        let _ = self.apply(Action::Pause);
    }

    pub fn resume(&self) {
        let _ = self.apply(Action::Resume);
    }

    /// Sets the stage by hand; it becomes the last good one too.
    pub fn set_percent(&self, percent: f64) {
        let _ = self.apply(Action::Set(percent));
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        self.history.lock().iter().cloned().collect()
    }

    pub fn status(&self) -> RolloutStatus {
        let a = self.analysis(&self.stage.lock());
        let (percent, last_good, paused, awaiting) = self.local();
        RolloutStatus {
            percent: pct(percent),
            last_good: pct(last_good),
            paused,
            stage_requests: a.modern.requests,
            stage_error_rate: a.modern.error_rate,
            stage_p99_ms: a.modern.p99_ms,
            stage_diff_rate: a.diff_rate,
            last_event: self.last_event.lock().clone(),
            state: self.state(),
            awaiting_approval_percent: (awaiting != NONE).then(|| pct(awaiting)),
            legacy_stage_requests: a.legacy.requests,
            legacy_stage_error_rate: a.legacy.error_rate,
            legacy_stage_p99_ms: a.legacy.p99_ms,
        }
    }

    pub fn view(&self) -> RolloutView {
        let (analysis, stage) = {
            let s = self.stage.lock();
            (
                self.analysis(&s),
                StageView {
                    index: s.index,
                    started: rfc3339(s.started_at),
                    failed_checks_in_a_row: s.failed_in_a_row,
                },
            )
        };
        let (percent, last_good, _, awaiting) = self.local();
        let c = &self.cfg;
        RolloutView {
            route: self.route.clone(),
            state: self.state(),
            percent: pct(percent),
            last_good_percent: pct(last_good),
            awaiting_approval_percent: (awaiting != NONE).then(|| pct(awaiting)),
            stage,
            analysis,
            checks: ChecksView {
                min_requests: c.min_requests,
                failure_threshold: c.failure_threshold.max(1),
                max_error_rate: c.max_error_rate,
                max_p99_ms: c.max_p99.as_secs_f64() * 1000.0,
                max_diff_rate: c.max_diff_rate,
                max_error_rate_increase: c.max_error_rate_increase,
                max_p99_ratio: c.max_p99_ratio,
                approval_before: c.approval_before.clone(),
            },
            history: self.history(),
        }
    }
}

/// Ticks every rollout of the snapshot that has no ticker yet, until its state is dropped.
pub fn start(rollouts: &[Arc<Rollout>]) {
    for ro in rollouts {
        if ro.ticker_started.swap(true, Ordering::AcqRel) {
            continue;
        }
        if let Some(n) = &ro.notifier {
            n.start();
        }
        let weak = Arc::downgrade(ro);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Some(ro) = weak.upgrade() else { return };
                ro.round().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            step: 10.0,
            every: Duration::from_secs(60),
            min_requests: 10,
            max_error_rate: 0.05,
            max_p99: Duration::from_millis(200),
            max_diff_rate: 0.1,
            rollback_to_zero: false,
            max_error_rate_increase: None,
            max_p99_ratio: None,
            failure_threshold: 1,
            approval_before: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    #[test]
    fn advances_on_healthy_stages_and_rolls_back_on_errors() {
        let clock = Arc::new(ManualClock::default());
        let r = Rollout::new("t", cfg(), 10.0, clock.clone(), None);
        for _ in 0..20 {
            r.record(false, Duration::from_millis(5));
        }
        r.tick();
        assert_eq!(r.percent_bp(), 1000, "not before `every`");
        clock.advance(Duration::from_secs(60));
        r.tick();
        assert_eq!(r.percent_bp(), 2000);
        // Next stage: errors break the guard, back to the last good stage and paused.
        for i in 0..20 {
            r.record(i % 2 == 0, Duration::from_millis(5));
        }
        r.tick();
        assert_eq!(r.percent_bp(), 1000);
        assert!(r.status().paused);
        assert!(r
            .status()
            .last_event
            .unwrap()
            .contains("error rate 0.5000 > 0.05"));
    }

    #[test]
    fn latency_and_diff_guards() {
        let clock = Arc::new(ManualClock::default());
        let r = Rollout::new("t", cfg(), 30.0, clock.clone(), None);
        for _ in 0..20 {
            r.record(false, Duration::from_millis(500));
        }
        r.tick();
        assert_eq!(r.percent_bp(), 3000, "stays: last good is the start");
        let event = r.status().last_event.unwrap();
        // The HDR histogram keeps 2 significant digits: 500 ms reads within 1 %.
        assert!(
            event.contains("p99 50") && event.contains(" ms > 200.0 ms"),
            "{event}"
        );

        let r = Rollout::new(
            "t",
            RolloutConfig {
                rollback_to_zero: true,
                ..cfg()
            },
            30.0,
            clock,
            None,
        );
        for _ in 0..20 {
            r.record(false, Duration::from_millis(1));
            r.record_comparison(true);
        }
        r.tick();
        assert_eq!(r.percent_bp(), 0);
        assert!(r.status().last_event.unwrap().contains("diff rate"));
    }

    #[test]
    fn percentiles_cover_the_whole_stage_not_its_first_samples() {
        let clock = Arc::new(ManualClock::default());
        let r = Rollout::new("t", cfg(), 10.0, clock, None);
        // The old sample kept the first 20 000 latencies only: a stage that slows down late
        // looked healthy for ever.
        for _ in 0..20_000 {
            r.record(false, Duration::from_millis(5));
        }
        for _ in 0..5_000 {
            r.record(false, Duration::from_millis(300));
        }
        let p99 = r.status().stage_p99_ms;
        assert!((297.0..=303.0).contains(&p99), "p99 {p99} ms");
        r.tick();
        assert!(r.status().paused, "the late slowdown breaks the p99 guard");
    }

    #[test]
    fn baseline_checks_wait_for_legacy_traffic_then_compare() {
        let clock = Arc::new(ManualClock::default());
        let c = RolloutConfig {
            max_p99_ratio: Some(2.0),
            max_p99: Duration::from_secs(10),
            ..cfg()
        };
        let r = Rollout::new("t", c, 10.0, clock.clone(), None);
        for _ in 0..20 {
            r.record(false, Duration::from_millis(90));
        }
        clock.advance(Duration::from_secs(60));
        r.tick();
        assert_eq!(r.percent_bp(), 1000, "no verdict without a baseline");
        assert!(!r.status().paused);
        for _ in 0..20 {
            r.record_legacy(false, Duration::from_millis(30));
        }
        r.tick();
        assert!(r.status().paused, "3x legacy's p99");
        let h = r.history();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].event, RolloutEventKind::Rollback);
        assert!(h[0].figures.p99_ratio.is_some_and(|x| x > 2.5), "{:?}", h[0]);
    }

    #[test]
    fn the_history_keeps_the_last_decisions_only() {
        let r = Rollout::new("t", cfg(), 10.0, Arc::new(ManualClock::default()), None);
        for _ in 0..150 {
            r.pause();
            r.resume();
        }
        let h = r.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h.last().map(|e| e.event), Some(RolloutEventKind::Resume));
    }

    #[test]
    fn rollout_gauges_follow_advances_rollbacks_and_the_admin() {
        let metrics = Metrics::new();
        let clock = Arc::new(ManualClock::default());
        let r = Rollout::new("orders", cfg(), 10.0, clock.clone(), None);
        r.attach_metrics(&metrics);
        let read = |series: &str| {
            let text = metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
        };
        assert_eq!(read(r#"ficus_migration_modern_percent{route="orders"}"#), 10.0);
        assert_eq!(read(r#"ficus_rollout_stage{route="orders"}"#), 0.0);
        for _ in 0..20 {
            r.record(false, Duration::from_millis(5));
        }
        clock.advance(Duration::from_secs(60));
        r.tick();
        assert_eq!(read(r#"ficus_migration_modern_percent{route="orders"}"#), 20.0);
        assert_eq!(
            read(r#"ficus_rollout_events_total{route="orders",reason="advanced"}"#),
            1.0
        );
        for _ in 0..20 {
            r.record(true, Duration::from_millis(5));
        }
        r.tick();
        assert_eq!(read(r#"ficus_migration_modern_percent{route="orders"}"#), 10.0);
        assert_eq!(read(r#"ficus_rollout_last_good_percent{route="orders"}"#), 10.0);
        assert_eq!(read(r#"ficus_rollout_stage{route="orders"}"#), 2.0, "rolled back");
        assert_eq!(
            read(r#"ficus_rollout_events_total{route="orders",reason="rollback_error_rate"}"#),
            1.0
        );
        r.resume();
        assert_eq!(read(r#"ficus_rollout_stage{route="orders"}"#), 0.0);
        r.pause();
        assert_eq!(
            read(r#"ficus_rollout_stage{route="orders"}"#),
            1.0,
            "paused by hand"
        );
        r.set_percent(100.0);
        assert_eq!(read(r#"ficus_migration_modern_percent{route="orders"}"#), 100.0);
        assert_eq!(
            read(r#"ficus_rollout_events_total{route="orders",reason="set"}"#),
            1.0
        );
    }
}
