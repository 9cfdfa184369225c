//! Everything on the far side of the proxy: the pooled client and the endpoint choice.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod health;
pub mod limit;
pub mod retry;
pub mod tls;

pub use client::{ClientCache, Upstream, UpstreamCallError};

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::file::UpstreamConfig;

/// State that outlives snapshots: a reload that leaves an upstream's config unchanged keeps it
/// (breaker state, endpoint health); any change to the upstream starts afresh.
pub struct KeptAcrossReloads<T, C = UpstreamConfig> {
    live: Mutex<HashMap<String, (C, Arc<T>)>>,
}

impl<T, C> Default for KeptAcrossReloads<T, C> {
    fn default() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl<T, C: PartialEq + Clone> KeptAcrossReloads<T, C> {
    pub fn get_or_make(&self, name: &str, cfg: &C, make: impl FnOnce() -> T) -> Arc<T> {
        let mut live = self.live.lock();
        if let Some((old, v)) = live.get(name) {
            if old == cfg {
                return v.clone();
            }
        }
        let v = Arc::new(make());
        live.insert(name.to_string(), (cfg.clone(), v.clone()));
        v
    }

    /// What is live under `name`, whatever its config.
    pub fn current(&self, name: &str) -> Option<Arc<T>> {
        self.live.lock().get(name).map(|(_, v)| v.clone())
    }

    /// Like [`get_or_make`](Self::get_or_make), for a value already shared.
    pub fn get_or_make_arc(&self, name: &str, cfg: &C, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut live = self.live.lock();
        if let Some((old, v)) = live.get(name) {
            if old == cfg {
                return v.clone();
            }
        }
        let v = make();
        live.insert(name.to_string(), (cfg.clone(), v.clone()));
        v
    }

    /// Forgets what the new snapshot no longer uses.
    pub fn retain(&self, in_use: &[Arc<T>]) {
        self.live
            .lock()
            .retain(|_, (_, v)| in_use.iter().any(|u| Arc::ptr_eq(u, v)));
    }
}

/// Everything kept across reloads: per upstream, per migration route (rollout stage), and the
/// idempotency store (whose in-flight locks must outlive a reload).
pub struct KeptState {
    pub rollouts: KeptAcrossReloads<crate::pipeline::rollout::Rollout, crate::config::file::MigrationConfig>,
    /// JWT providers keep their keys and verified-token cache while their config is unchanged.
    pub jwt: KeptAcrossReloads<crate::identity::jwt::JwtProvider, crate::config::file::JwtProviderConfig>,
    /// Introspection endpoints keep their answer cache while their config is unchanged.
    pub introspection: KeptAcrossReloads<
        crate::identity::introspection::Introspector,
        crate::config::file::IntrospectionConfig,
    >,
    /// The rollout clock: the system's, or a manual one in tests.
    pub clock: Arc<dyn crate::pipeline::rollout::Clock>,
    pub breakers: KeptAcrossReloads<breaker::Breakers>,
    pub endpoints: KeptAcrossReloads<balance::EndpointSet>,
    /// In-process rate-limit state per policy, kept while the policy's limit is unchanged.
    pub rate_limits: KeptAcrossReloads<
        crate::pipeline::ratelimit::local::LocalStore,
        crate::pipeline::ratelimit::algorithm::Limit,
    >,
    /// The Redis rate-limit store (its connection), kept while `rate_limits.store` is unchanged.
    #[allow(clippy::type_complexity)]
    pub ratelimit_redis: Mutex<
        Option<(
            crate::config::file::RateLimitStoreConfig,
            Arc<crate::pipeline::ratelimit::redis::RedisStore>,
        )>,
    >,
    #[allow(clippy::type_complexity)]
    pub idempotency: Mutex<
        Option<(
            crate::config::file::IdempotencyStoreConfig,
            Arc<crate::pipeline::idempotency::IdempotencyStore>,
        )>,
    >,
}

impl Default for KeptState {
    fn default() -> Self {
        Self::with_clock(Arc::new(crate::pipeline::rollout::SystemClock::default()))
    }
}

impl KeptState {
    pub fn with_clock(clock: Arc<dyn crate::pipeline::rollout::Clock>) -> Self {
        Self {
            rollouts: KeptAcrossReloads::default(),
            jwt: KeptAcrossReloads::default(),
            introspection: KeptAcrossReloads::default(),
            clock,
            breakers: KeptAcrossReloads::default(),
            endpoints: KeptAcrossReloads::default(),
            idempotency: Mutex::new(None),
            rate_limits: KeptAcrossReloads::default(),
            ratelimit_redis: Mutex::new(None),
        }
    }
}
