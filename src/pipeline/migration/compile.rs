//! Builds a route's `migration` section: both sides, the sticky key and cohorts, the override,
//! the shadow copy and the progressive rollout.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{parse_sticky, Migration};
use crate::config::carry::Carry;
use crate::config::file::{MigrationConfig, RolloutConfig, RouteConfig, ShadowConfig, StateStoreConfig};
use crate::config::problems::Section;
use crate::pipeline::key::RequestKey;
use crate::pipeline::rollout::{Clock, Rollout, SharedStage};
use crate::pipeline::shadow::{Learning, Shadow};
use crate::telemetry::metrics::Metrics;
use crate::upstream::compile::find;
use crate::upstream::Upstream;

pub struct Env<'a> {
    pub upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    pub metrics: &'a Metrics,
    pub clock: &'a Arc<dyn Clock>,
    pub state_store: &'a StateStoreConfig,
    pub prev: &'a Carry<RolloutKey, Arc<Rollout>>,
    /// What stored shadow diffs redact.
    pub redact: &'a Arc<crate::telemetry::redact::Redactor>,
    /// Each shadowed route's learned noise and drift window: the running snapshot's, and the
    /// new one's (filled here, as routes compile).
    pub learning_prev: &'a Carry<LearningKey, Arc<Learning>>,
    pub learning_next: &'a std::cell::RefCell<Carry<LearningKey, Arc<Learning>>>,
}

/// What learned noise and the drift window depend on: the shadow section (its `ignore` rules,
/// headers and tolerances shape every difference) and the upstreams behind both sides.
#[derive(Clone, PartialEq)]
pub struct LearningKey {
    shadow: ShadowConfig,
    legacy: String,
    modern: String,
}

/// What defines a progressive rollout. A reload that changes anything else about the migration
/// (the shadow percent, the sticky key, a fallback switch) keeps the rollout's stage and clock.
#[derive(Clone, PartialEq)]
pub struct RolloutKey {
    rollout: RolloutConfig,
    start_percent: f64,
    legacy: String,
    modern: String,
    state_store: StateStoreConfig,
}

/// The legacy upstream and the migration, or `None` when a side is missing (reported).
pub fn compile(
    r: &RouteConfig,
    m: &MigrationConfig,
    sec: &mut Section<'_, '_>,
    env: &Env<'_>,
    next: &mut Carry<RolloutKey, Arc<Rollout>>,
) -> Option<(Arc<Upstream>, Migration)> {
    let legacy = find(env.upstreams, &m.legacy.upstream, sec, "legacy.upstream");
    let modern = find(env.upstreams, &m.modern.upstream, sec, "modern.upstream");
    if !(0.0..=100.0).contains(&m.modern_percent) {
        sec.error("modern_percent", "must be between 0 and 100");
    }
    let sticky = match m.sticky.as_deref().map(parse_sticky) {
        Some(Ok(p)) => {
            for (key, reason) in p.old_spellings("sticky") {
                sec.warn(&key, reason);
            }
            Some(p.key)
        }
        Some(Err(reason)) => {
            sec.error("sticky", reason);
            None
        }
        None => None,
    };
    check_options(r, m, sticky.as_ref(), sec);
    let shadow = m.shadow.as_ref().and_then(|sc| {
        let made = shadow(&r.name, sc, &mut sec.at("shadow"), env.metrics, env.redact)?;
        let key = LearningKey {
            shadow: sc.clone(),
            legacy: m.legacy.upstream.clone(),
            modern: m.modern.upstream.clone(),
        };
        let learning = env
            .learning_next
            .borrow_mut()
            .carry_or(env.learning_prev, &r.name, &key, || Arc::new(Learning::default()));
        Some(made.with_learning(learning))
    });
    if let Some(rc) = &m.rollout {
        check_rollout(rc, &mut sec.at("rollout"));
    }
    let (legacy, modern) = (legacy?, modern?);
    let rollout = m.rollout.as_ref().and_then(|rc| {
        let key = RolloutKey {
            rollout: rc.clone(),
            start_percent: m.modern_percent,
            legacy: m.legacy.upstream.clone(),
            modern: m.modern.upstream.clone(),
            state_store: env.state_store.clone(),
        };
        if let Some(kept) = env.prev.get(&r.name, &key) {
            next.keep(&r.name, &key, kept.clone());
            return Some(kept);
        }
        let shared = match &env.state_store.redis_url {
            None => None,
            Some(url) => {
                let prefix = env.state_store.key_prefix.as_deref().unwrap_or("ficus:");
                match SharedStage::new(url, format!("{prefix}rollout:{}", r.name)) {
                    Ok(s) => Some(s),
                    Err(reason) => {
                        sec.error("", format!("state_store.redis_url: {reason}"));
                        return None;
                    }
                }
            }
        };
        let notifier = webhooks(rc, &mut sec.at("rollout"))?;
        let made = Arc::new(Rollout::with_notifier(
            &r.name,
            rc.clone(),
            m.modern_percent,
            env.clock.clone(),
            shared,
            notifier,
        ));
        next.keep(&r.name, &key, made.clone());
        Some(made)
    });
    let migration = Migration::new(&r.name, m, modern, sticky, shadow, rollout, env.metrics);
    Some((legacy, migration))
}

fn check_options(
    r: &RouteConfig,
    m: &MigrationConfig,
    sticky: Option<&RequestKey>,
    sec: &mut Section<'_, '_>,
) {
    let needs_identity = sticky.is_some_and(|k| k.needs_identity()) || m.override_header.is_some();
    if needs_identity && r.identity.is_none() {
        sec.error(
            "",
            "a `jwt.` or `api_key` sticky key or an `override` needs the route's `identity`",
        );
    }
    if let Some(o) = &m.override_header {
        if o.require_scope.is_none() && o.require_claim.is_none() {
            sec.error(
                "override",
                "set `require_scope` or `require_claim`: an override open to everyone is a bypass",
            );
        }
    }
    if m.fallback_non_idempotent && !m.fallback_to_legacy {
        sec.error("fallback_non_idempotent", "needs `fallback_to_legacy: true`");
    }
    if !m.cohorts.is_empty() && m.sticky.is_none() {
        sec.error("cohorts", "cohorts are sticky-key values: set `sticky`");
    }
}

fn shadow(
    route: &str,
    sc: &ShadowConfig,
    sec: &mut Section<'_, '_>,
    metrics: &Metrics,
    redact: &Arc<crate::telemetry::redact::Redactor>,
) -> Option<Shadow> {
    for (key, reason) in crate::pipeline::diff::ignore_warnings(&sc.ignore) {
        sec.warn(&key, reason);
    }
    if !(0.0..=100.0).contains(&sc.percent) {
        sec.error("percent", "must be between 0 and 100");
    }
    if let Some(n) = &sc.noise {
        if !(0.0..=100.0).contains(&n.sample) {
            sec.error("noise.sample", "must be between 0% and 100%");
        }
    }
    if sc.max_concurrent == 0 || sc.timeout.is_zero() {
        sec.error(
            "max_concurrent",
            "max_concurrent and timeout must be greater than zero",
        );
    }
    Shadow::new(route, sc, metrics, redact.clone())
        .map_err(|reason| sec.error("", reason))
        .ok()
}

fn check_rollout(rc: &RolloutConfig, sec: &mut Section<'_, '_>) {
    if !(rc.step > 0.0 && rc.step <= 100.0) {
        sec.error("step", "must be above 0 and at most 100");
    }
    if rc.every.is_zero() {
        sec.error("every", "must be greater than zero");
    }
    if rc.failure_threshold == 0 {
        sec.error("failure_threshold", "must be at least 1");
    }
    if rc
        .max_error_rate_increase
        .is_some_and(|v| !(0.0..=1.0).contains(&v))
    {
        sec.error(
            "max_error_rate_increase",
            "must be between 0 and 1 (a share of requests)",
        );
    }
    if rc.max_p99_ratio.is_some_and(|v| !(v.is_finite() && v >= 1.0)) {
        sec.error("max_p99_ratio", "must be at least 1 (modern's p99 over legacy's)");
    }
    for (i, p) in rc.approval_before.iter().enumerate() {
        if !(*p > 0.0 && *p <= 100.0) {
            sec.error(
                &format!("approval_before[{i}]"),
                "must be a percent above 0 and at most 100",
            );
        }
    }
}

/// The rollout's webhooks, each checked (URL, secret present); `None` when one is refused.
fn webhooks(
    rc: &RolloutConfig,
    sec: &mut Section<'_, '_>,
) -> Option<Option<Arc<crate::pipeline::rollout::webhook::Notifier>>> {
    use crate::pipeline::rollout::webhook::{Notifier, Webhook};
    if rc.webhooks.is_empty() {
        return Some(None);
    }
    let mut hooks = Vec::new();
    let mut ok = true;
    for (i, w) in rc.webhooks.iter().enumerate() {
        match Webhook::new(w) {
            Ok(h) => hooks.push(h),
            Err(e) => {
                sec.error(&format!("webhooks[{i}]"), e.to_string());
                ok = false;
            }
        }
    }
    ok.then(|| Some(Arc::new(Notifier::new(hooks))))
}
