//! Guarded rollout: while the guards hold over a stage (error rate, p99 latency and shadow diff
//! rate of the modern side, over at least `min_requests`), `modern_percent` rises by `step`
//! every `every`; when a guard breaks, it goes back to the last good stage (or to 0) and the
//! rollout pauses, with the broken guard and its measured value logged.
//!
//! Decisions read time from a [`Clock`], so tests drive rollouts with a manual clock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::file::RolloutConfig;
use crate::telemetry::metrics::{Metrics, RolloutMetrics, RolloutStage};

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

#[derive(Default)]
struct Stage {
    started: Duration,
    requests: u64,
    errors: u64,
    /// Latencies in microseconds; a bounded sample (the first `SAMPLES` of the stage).
    latencies: Vec<u32>,
    compared: u64,
    mismatched: u64,
}

const SAMPLES: usize = 20_000;

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

/// The stage in a Redis hash (`percent`, `last_good`, `paused`, `version`); every write is a
/// compare-and-set on `version`, so concurrent decisions by several instances apply once.
pub struct SharedStage {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    key: String,
}

const CAS: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'percent', ARGV[2], 'last_good', ARGV[3], 'paused', ARGV[4], 'version', v + 1)
return 1
"#;

type Remote = (u32, u32, bool, u64);

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
        let v: (Option<u32>, Option<u32>, Option<u8>, Option<u64>) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg("percent")
            .arg("last_good")
            .arg("paused")
            .arg("version")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match v {
            (Some(p), Some(l), Some(z), Some(ver)) => Some((p, l, z == 1, ver)),
            _ => None,
        })
    }

    async fn write(&self, expected: u64, percent: u32, last_good: u32, paused: bool) -> Result<bool, String> {
        let mut c = self.conn().await?;
        let ok: i64 = redis::Script::new(CAS)
            .key(&self.key)
            .arg(expected)
            .arg(percent)
            .arg(last_good)
            .arg(u8::from(paused))
            .invoke_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ok == 1)
    }
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
}

impl Rollout {
    pub fn new(
        route: &str,
        cfg: RolloutConfig,
        start_percent: f64,
        clock: Arc<dyn Clock>,
        shared: Option<SharedStage>,
    ) -> Self {
        let bp = (start_percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
        let now = clock.now();
        Self {
            cfg,
            percent_bp: AtomicU32::new(bp),
            last_good_bp: AtomicU32::new(bp),
            paused: AtomicBool::new(false),
            stage: Mutex::new(Stage {
                started: now,
                ..Stage::default()
            }),
            last_event: Mutex::new(None),
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
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let Some(m) = self.metrics.get() else { return };
        let (percent, last_good, paused) = self.local();
        let stage = match (paused, self.rolled_back.load(Ordering::Relaxed)) {
            (true, true) => RolloutStage::RolledBack,
            (true, false) => RolloutStage::Paused,
            (false, _) if percent >= 10_000 => RolloutStage::Complete,
            (false, _) => RolloutStage::Advancing,
        };
        m.set(percent, last_good, stage);
    }

    fn event(&self, reason: &str) {
        if let Some(m) = self.metrics.get() {
            m.event(reason);
        }
        self.publish_gauges();
    }

    fn local(&self) -> (u32, u32, bool) {
        (
            self.percent_bp.load(Ordering::Relaxed),
            self.last_good_bp.load(Ordering::Relaxed),
            self.paused.load(Ordering::Relaxed),
        )
    }

    /// Adopts the shared stage if another instance moved it; publishes ours if there is none.
    async fn sync(&self) {
        let Some(shared) = &self.shared else { return };
        match shared.read().await {
            Ok(Some((p, l, z, ver))) if ver != self.version.load(Ordering::Relaxed) => {
                self.percent_bp.store(p, Ordering::Relaxed);
                self.last_good_bp.store(l, Ordering::Relaxed);
                self.paused.store(z, Ordering::Relaxed);
                self.version.store(ver, Ordering::Relaxed);
                *self.stage.lock() = Stage {
                    started: self.clock.now(),
                    ..Stage::default()
                };
                self.publish_gauges();
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                // Losing this race is fine: the next sync adopts the winner's stage.
                let _ = self.publish((u32::MAX, 0, false)).await;
            }
            Err(e) => tracing::debug!(route = %self.route, error = %e, "rollout stage not synced"),
        }
    }

    /// Writes the local stage to Redis if it differs from `before`. `false` when another
    /// instance wrote first (the caller syncs and decides again).
    async fn publish(&self, before: (u32, u32, bool)) -> bool {
        let Some(shared) = &self.shared else { return true };
        let (p, l, z) = self.local();
        if (p, l, z) == before {
            return true;
        }
        let expected = self.version.load(Ordering::Relaxed);
        match shared.write(expected, p, l, z).await {
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
        self.tick();
        self.publish(before).await;
    }

    /// Applies an admin action and shares it; if another instance wrote first, adopts its
    /// stage and applies the action again on top.
    pub async fn act(&self, f: impl Fn(&Self)) {
        let _one = self.sync_lock.lock().await;
        for _ in 0..3 {
            self.sync().await;
            let before = self.local();
            f(self);
            if self.publish(before).await {
                return;
            }
        }
        tracing::warn!(route = %self.route, "rollout action not shared after three tries");
    }

    pub fn percent_bp(&self) -> u32 {
        self.percent_bp.load(Ordering::Relaxed)
    }

    /// One request served by modern.
    pub fn record(&self, server_error: bool, latency: Duration) {
        let mut s = self.stage.lock();
        s.requests += 1;
        s.errors += u64::from(server_error);
        if s.latencies.len() < SAMPLES {
            s.latencies
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// One shadow comparison.
    pub fn record_comparison(&self, mismatch: bool) {
        let mut s = self.stage.lock();
        s.compared += 1;
        s.mismatched += u64::from(mismatch);
    }

    fn measures(s: &Stage) -> (f64, f64, f64) {
        let error_rate = if s.requests == 0 {
            0.0
        } else {
            s.errors as f64 / s.requests as f64
        };
        let diff_rate = if s.compared == 0 {
            0.0
        } else {
            s.mismatched as f64 / s.compared as f64
        };
        let p99 = if s.latencies.is_empty() {
            0.0
        } else {
            let mut l = s.latencies.clone();
            l.sort_unstable();
            let i = ((l.len() as f64 * 0.99).ceil() as usize).clamp(1, l.len()) - 1;
            f64::from(l[i]) / 1000.0
        };
        (error_rate, p99, diff_rate)
    }

    /// Takes the decision due now, if any: roll back as soon as a guard is broken over at least
    /// `min_requests`; advance once a stage has lasted `every` with the guards holding.
    pub fn tick(&self) {
        if self.paused.load(Ordering::Relaxed) {
            return;
        }
        let now = self.clock.now();
        let mut s = self.stage.lock();
        if s.requests < self.cfg.min_requests {
            return;
        }
        let (error_rate, p99_ms, diff_rate) = Self::measures(&s);
        let max_p99_ms = self.cfg.max_p99.as_secs_f64() * 1000.0;
        let broken = if error_rate > self.cfg.max_error_rate {
            Some((
                "rollback_error_rate",
                format!("error rate {error_rate:.4} > {}", self.cfg.max_error_rate),
            ))
        } else if p99_ms > max_p99_ms {
            Some(("rollback_p99", format!("p99 {p99_ms:.1} ms > {max_p99_ms:.1} ms")))
        } else if diff_rate > self.cfg.max_diff_rate {
            Some((
                "rollback_diff_rate",
                format!("diff rate {diff_rate:.4} > {}", self.cfg.max_diff_rate),
            ))
        } else {
            None
        };
        let current = self.percent_bp.load(Ordering::Relaxed);
        if let Some((reason, guard)) = broken {
            let back = if self.cfg.rollback_to_zero {
                0
            } else {
                self.last_good_bp.load(Ordering::Relaxed)
            };
            self.percent_bp.store(back, Ordering::Relaxed);
            self.rolled_back.store(true, Ordering::Relaxed);
            self.paused.store(true, Ordering::Relaxed);
            *s = Stage {
                started: now,
                ..Stage::default()
            };
            let msg = format!(
                "rolled back from {}% to {}% and paused: {guard}",
                f64::from(current) / 100.0,
                f64::from(back) / 100.0
            );
            tracing::warn!(route = %self.route, "{msg}");
            *self.last_event.lock() = Some(msg);
            drop(s);
            self.event(reason);
            return;
        }
        if now.saturating_sub(s.started) >= self.cfg.every && current < 10_000 {
            let next = (current + (self.cfg.step * 100.0).round() as u32).min(10_000);
            self.last_good_bp.store(current, Ordering::Relaxed);
            self.percent_bp.store(next, Ordering::Relaxed);
            *s = Stage {
                started: now,
                ..Stage::default()
            };
            let msg = format!(
                "advanced from {}% to {}% (error rate {error_rate:.4}, p99 {p99_ms:.1} ms, diff rate {diff_rate:.4})",
                f64::from(current) / 100.0,
                f64::from(next) / 100.0
            );
            tracing::info!(route = %self.route, "{msg}");
            *self.last_event.lock() = Some(msg);
            drop(s);
            self.event("advanced");
        }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        self.rolled_back.store(false, Ordering::Relaxed);
        self.event("paused");
    }

    pub fn resume(&self) {
        let mut s = self.stage.lock();
        *s = Stage {
            started: self.clock.now(),
            ..Stage::default()
        };
        self.paused.store(false, Ordering::Relaxed);
        self.rolled_back.store(false, Ordering::Relaxed);
        drop(s);
        self.event("resumed");
    }

    /// Sets the stage by hand; it becomes the last good one too.
    pub fn set_percent(&self, percent: f64) {
        let bp = (percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
        self.percent_bp.store(bp, Ordering::Relaxed);
        self.last_good_bp.store(bp, Ordering::Relaxed);
        let mut s = self.stage.lock();
        *s = Stage {
            started: self.clock.now(),
            ..Stage::default()
        };
        *self.last_event.lock() = Some(format!("set to {percent}% by the admin API"));
        drop(s);
        self.event("set");
    }

    pub fn status(&self) -> RolloutStatus {
        let s = self.stage.lock();
        let (error_rate, p99, diff_rate) = Self::measures(&s);
        RolloutStatus {
            percent: f64::from(self.percent_bp.load(Ordering::Relaxed)) / 100.0,
            last_good: f64::from(self.last_good_bp.load(Ordering::Relaxed)) / 100.0,
            paused: self.paused.load(Ordering::Relaxed),
            stage_requests: s.requests,
            stage_error_rate: error_rate,
            stage_p99_ms: p99,
            stage_diff_rate: diff_rate,
            last_event: self.last_event.lock().clone(),
        }
    }
}

/// Ticks every rollout of the snapshot that has no ticker yet, until its state is dropped.
pub fn start(rollouts: &[Arc<Rollout>]) {
    for ro in rollouts {
        if ro.ticker_started.swap(true, Ordering::AcqRel) {
            continue;
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
        assert!(r.status().last_event.unwrap().contains("p99 500.0 ms > 200.0 ms"));

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
