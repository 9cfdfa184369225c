//! Validation and compilation of a [`FileConfig`] into the immutable [`Snapshot`] the hot path
//! reads. Everything that can be worked out ahead of a request (routes, endpoints, TLS acceptors,
//! metric handles) is worked out here, once per config version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::uri::{Scheme, Uri};
use http::Method;

use super::file::{FileConfig, ShutdownConfig};
use super::{ConfigErrors, ConfigProblem, SourceText};
use crate::identity::jwt::JwtProvider;
use crate::pipeline::idempotency::{IdempotencyStore, RouteIdempotency};
use crate::pipeline::migration::{Migration, StickyKey};
use crate::pipeline::normalize::normalize_path;
use crate::pipeline::ratelimit::local::LocalStore;
use crate::pipeline::ratelimit::redis::RedisStore;
use crate::pipeline::ratelimit::{Policy, RouteRateLimits};
use crate::pipeline::rollout::{Rollout, SharedStage};
use crate::pipeline::route::{Condition, HostMatch, PathMatch, Route, Router, ValueMatch};
use crate::pipeline::shadow::Shadow;
use crate::server::listener::ListenerRuntime;
use crate::telemetry::metrics::{Metrics, RouteMetrics, UPSTREAM_REQUEST_DURATION};
use crate::upstream::balance::Endpoint;
use crate::upstream::balance::{EndpointSet, HashOn};
use crate::upstream::breaker::Breakers;
use crate::upstream::client::PoolKey;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::tls::UpstreamTls;
use crate::upstream::KeptState;
use crate::upstream::{ClientCache, Upstream};

pub struct Snapshot {
    pub version: u64,
    pub hash: String,
    pub loaded_at: SystemTime,
    pub source: String,
    pub config: FileConfig,
    pub router: Router,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// Counts requests that matched no route.
    pub unmatched: RouteMetrics,
    pub shutdown: ShutdownConfig,
    /// Files whose change should trigger a reload: the config itself and every certificate and key.
    pub watch_files: Vec<PathBuf>,
    /// Kept across reloads (in-flight locks must survive one) while its config is unchanged.
    pub idempotency_store: Arc<IdempotencyStore>,
    /// Not errors: the config is valid, but probably not what was meant (unreachable routes).
    pub warnings: Vec<ConfigProblem>,
    pub jwt_providers: Vec<Arc<JwtProvider>>,
    /// In-process rate-limit state, kept across reloads per unchanged policy.
    pub rate_limit_stores: Vec<Arc<LocalStore>>,
    /// Every header some route sets for its upstream (claims, client-certificate headers, legacy
    /// credentials, migration overrides, `X-Ficus-*`): removed from every request before the
    /// first stage, so no caller can send them through a route that does not set them.
    pub owned_headers: crate::pipeline::trust::OwnedHeaders,
    pub introspectors: Vec<Arc<crate::identity::introspection::Introspector>>,
}

impl Snapshot {
    pub fn pool_keys(&self) -> Vec<PoolKey> {
        self.upstreams.values().map(|u| u.pool_key.clone()).collect()
    }

    pub fn breakers(&self) -> Vec<Arc<Breakers>> {
        self.upstreams
            .values()
            .filter_map(|u| u.breaker.clone())
            .collect()
    }

    pub fn rollouts(&self) -> Vec<Arc<Rollout>> {
        self.router
            .routes()
            .iter()
            .filter_map(|r| r.migration.as_ref()?.rollout.clone())
            .collect()
    }

    pub fn endpoint_sets(&self) -> Vec<Arc<EndpointSet>> {
        self.upstreams.values().map(|u| u.endpoints.clone()).collect()
    }
}

pub struct Deps<'a> {
    pub metrics: &'a Metrics,
    pub clients: &'a ClientCache,
    pub states: &'a KeptState,
}

pub fn compile(src: &SourceText, version: u64, deps: &Deps<'_>) -> Result<Snapshot, ConfigErrors> {
    let cfg = src.parse()?;
    let mut problems: Vec<ConfigProblem> = Vec::new();
    let mut bad = |path: String, reason: String| problems.push(src.problem(&path, reason));

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        bad("log.level".into(), format!("not a valid log filter: {e}"));
    }
    if cfg.listeners.is_empty() {
        bad("listeners".into(), "configure at least one listener".into());
    }
    for (i, h) in cfg.admin.allowed_hosts.iter().enumerate() {
        if !crate::admin::valid_host_name(h) {
            bad(
                format!("admin.allowed_hosts[{i}]"),
                format!("`{h}` is not a host name (write it without scheme or port)"),
            );
        }
    }
    // Not errors: valid, but probably not what was meant (or not for production).
    let mut warnings = Vec::new();
    let mut listeners = HashMap::new();
    let mut binds = HashSet::new();
    let mut watch_files = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.name.is_empty() {
            bad(format!("listeners[{i}].name"), "must not be empty".into());
        }
        if listeners.contains_key(&l.name) {
            bad(
                format!("listeners[{i}].name"),
                format!("`{}` is used by an earlier listener", l.name),
            );
        }
        if l.bind.port() != 0 && !binds.insert(l.bind) {
            bad(
                format!("listeners[{i}].bind"),
                format!("{} is bound by an earlier listener", l.bind),
            );
        }
        if let Some(tls) = &l.tls {
            for c in &tls.certs {
                watch_files.push(src.base_dir.join(&c.cert));
                watch_files.push(src.base_dir.join(&c.key));
            }
            if let Some(ca) = &tls.client_auth {
                watch_files.push(src.base_dir.join(&ca.ca_file));
            }
        }
        match ListenerRuntime::compile(l, &src.base_dir, deps.metrics) {
            Ok(rt) => {
                listeners.insert(l.name.clone(), Arc::new(rt));
            }
            Err(errs) => {
                for (path, reason) in errs {
                    bad(format!("listeners[{i}].{path}"), reason);
                }
            }
        }
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in &cfg.upstreams {
        let at = format!("upstreams.{name}");
        if u.endpoints.is_empty() {
            bad(format!("{at}.endpoints"), "list at least one endpoint".into());
        }
        let mut endpoints = Vec::new();
        for (i, e) in u.endpoints.iter().enumerate() {
            match parse_endpoint(e) {
                Ok(ep) => endpoints.push(ep),
                Err(reason) => bad(format!("{at}.endpoints[{i}]"), reason),
            }
        }
        if u.timeouts.connect.is_zero() {
            bad(
                format!("{at}.timeouts.connect"),
                "must be greater than zero".into(),
            );
        }
        if u.timeouts.request.is_zero() {
            bad(
                format!("{at}.timeouts.request"),
                "must be greater than zero".into(),
            );
        }
        if let Some(b) = &u.circuit_breaker {
            let cb = format!("{at}.circuit_breaker");
            for (key, rate) in [
                ("failure_rate", b.failure_rate),
                ("slow_call_rate", b.slow_call_rate),
            ] {
                if !(rate > 0.0 && rate <= 1.0) {
                    bad(format!("{cb}.{key}"), "must be above 0 and at most 1".into());
                }
            }
            if b.window < std::time::Duration::from_secs(1) {
                bad(format!("{cb}.window"), "must be at least 1s".into());
            }
            if b.min_requests == 0 {
                bad(format!("{cb}.min_requests"), "must be at least 1".into());
            }
            if b.half_open_probes == 0 {
                bad(format!("{cb}.half_open_probes"), "must be at least 1".into());
            }
            if b.open_for.is_zero() {
                bad(format!("{cb}.open_for"), "must be greater than zero".into());
            }
            if b.max_open_for < b.open_for {
                bad(format!("{cb}.max_open_for"), "must be at least open_for".into());
            }
            for (j, st) in b.failure_statuses.iter().enumerate() {
                if !(100..=599).contains(st) {
                    bad(
                        format!("{cb}.failure_statuses[{j}]"),
                        format!("{st} is not an HTTP status"),
                    );
                }
            }
        }
        if let Some(r) = &u.retry {
            let rt = format!("{at}.retry");
            if r.attempts > 10 {
                bad(format!("{rt}.attempts"), "at most 10".into());
            }
            if !(0.0..=1.0).contains(&r.budget) {
                bad(format!("{rt}.budget"), "must be between 0 and 1".into());
            }
            if r.per_try_timeout.is_some_and(|t| t.is_zero()) {
                bad(
                    format!("{rt}.per_try_timeout"),
                    "must be greater than zero".into(),
                );
            }
            if r.max_backoff < r.backoff {
                bad(format!("{rt}.max_backoff"), "must be at least backoff".into());
            }
            if r.budget_window < std::time::Duration::from_secs(1) {
                bad(format!("{rt}.budget_window"), "must be at least 1s".into());
            }
            for (j, c) in r.on.iter().enumerate() {
                match c {
                    crate::config::file::RetryCondition::Status(st) if !(100..=599).contains(st) => {
                        bad(format!("{rt}.on[{j}]"), format!("{st} is not an HTTP status"));
                    }
                    crate::config::file::RetryCondition::Named(n)
                        if !matches!(n.as_str(), "connect-error" | "reset" | "timeout") =>
                    {
                        bad(
                            format!("{rt}.on[{j}]"),
                            format!("`{n}` is not a retry condition: use connect-error, reset, timeout or a status"),
                        );
                    }
                    _ => {}
                }
            }
        }
        let hashing = u.balance == crate::config::file::BalancePolicy::ConsistentHash;
        let hash_on = match (&u.hash_on, hashing) {
            (Some(h), true) => match HashOn::parse(h) {
                Ok(h) => Some(h),
                Err(reason) => {
                    bad(format!("{at}.hash_on"), reason);
                    None
                }
            },
            (None, true) => {
                bad(
                    format!("{at}.hash_on"),
                    "consistent-hash needs hash_on (client-ip, path or header:<name>)".into(),
                );
                None
            }
            (Some(_), false) => {
                bad(
                    format!("{at}.hash_on"),
                    "only used with balance: consistent-hash".into(),
                );
                None
            }
            (None, false) => None,
        };
        if let Some(o) = &u.outlier {
            if o.consecutive_failures == 0 {
                bad(
                    format!("{at}.outlier.consecutive_failures"),
                    "must be at least 1".into(),
                );
            }
            if o.base_ejection.is_zero() || o.max_ejection < o.base_ejection {
                bad(
                    format!("{at}.outlier.max_ejection"),
                    "must be at least base_ejection (> 0)".into(),
                );
            }
            if o.max_ejected_percent > 100 {
                bad(format!("{at}.outlier.max_ejected_percent"), "at most 100".into());
            }
        }
        if let Some(h) = &u.health_check {
            if !h.path.starts_with('/') {
                bad(format!("{at}.health_check.path"), "must start with '/'".into());
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                bad(
                    format!("{at}.health_check.interval"),
                    "interval and timeout must be greater than zero".into(),
                );
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                bad(
                    format!("{at}.health_check.healthy_threshold"),
                    "thresholds must be at least 1".into(),
                );
            }
            if h.expected_statuses.is_empty() {
                bad(
                    format!("{at}.health_check.expected_statuses"),
                    "list at least one status".into(),
                );
            }
        }
        let https = endpoints.iter().any(|e| e.scheme == Scheme::HTTPS);
        let set = deps.states.endpoints.get_or_make(name, u, || {
            EndpointSet::new(
                name,
                endpoints,
                u.balance.clone(),
                u.outlier.clone(),
                deps.metrics,
            )
        });
        if let Some(t) = &u.tls {
            if !https {
                bad(
                    format!("{at}.tls"),
                    "applies to https:// endpoints only, and none is listed".into(),
                );
            }
            if t.insecure_skip_verify {
                warnings.push(
                    src.problem(
                        &format!("{at}.tls.insecure_skip_verify"),
                        "the upstream's certificate is not verified: anyone on the path can impersonate it"
                            .to_string(),
                    ),
                );
            }
            for f in [&t.ca_file, &t.client_cert, &t.client_key].into_iter().flatten() {
                watch_files.push(src.base_dir.join(f));
            }
        }
        let tls = if https {
            match UpstreamTls::build(&u.tls.clone().unwrap_or_default(), &src.base_dir) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    bad(format!("{at}.tls"), e.to_string());
                    None
                }
            }
        } else {
            None
        };
        let pool_key = PoolKey {
            connect_timeout: u.timeouts.connect,
            pool: u.pool.clone(),
            tls: tls.as_ref().map(|t| t.fingerprint),
        };
        let client = deps.clients.get(&pool_key, tls.as_deref());
        let duration = deps
            .metrics
            .histogram(UPSTREAM_REQUEST_DURATION, &[("upstream", name)]);
        upstreams.insert(
            name.clone(),
            Arc::new(
                Upstream::new(name, set, u.timeouts.request, pool_key, client, duration)
                    .with_hash_on(hash_on)
                    .with_tls(tls)
                    .with_breaker(u.circuit_breaker.as_ref().map(|b| {
                        deps.states
                            .breakers
                            .get_or_make(name, u, || Breakers::new(b, name, &u.endpoints, deps.metrics))
                    }))
                    .with_health_check(u.health_check.clone())
                    .with_retry(u.retry.as_ref().map(|r| RetryPolicy::new(r, name, deps.metrics))),
            ),
        );
    }

    let mut providers: BTreeMap<String, Arc<JwtProvider>> = BTreeMap::new();
    for (name, p) in &cfg.identity.jwt {
        if p.issuer.is_empty() || p.audiences.is_empty() {
            bad(
                format!("identity.jwt.{name}"),
                "set `issuer` and at least one audience".into(),
            );
        }
        let min = crate::identity::jwt::MIN_JWKS_REFRESH;
        if p.jwks_refresh < min {
            bad(
                format!("identity.jwt.{name}.jwks_refresh"),
                format!("must be at least {min:?}: a shorter interval hammers the identity provider"),
            );
        }
        if p.jwks_timeout.is_zero() {
            bad(
                format!("identity.jwt.{name}.jwks_timeout"),
                "must be greater than zero".into(),
            );
        }
        // Built fresh to validate; the kept one (same config) carries the keys and cache over.
        for file in p.pem_file.iter().chain(p.jwk_file.iter()) {
            watch_files.push(src.base_dir.join(file));
        }
        match JwtProvider::new(name, p, &src.base_dir, deps.metrics) {
            Ok(fresh) => {
                if let Some(old) = deps.states.jwt.current(name) {
                    fresh.inherit_jwks(&old);
                }
                let fresh = Arc::new(fresh);
                let kept = deps.states.jwt.get_or_make_arc(name, p, || fresh.clone());
                // Same config, but a key file may have changed.
                kept.adopt_static_keys(&fresh);
                providers.insert(name.clone(), kept);
            }
            Err(reason) => bad(format!("identity.jwt.{name}"), reason),
        }
    }
    let mut key_sets: BTreeMap<String, Arc<crate::identity::api_keys::ApiKeySet>> = BTreeMap::new();
    for (name, k) in &cfg.identity.api_keys {
        watch_files.push(src.base_dir.join(&k.keys_file));
        match crate::identity::api_keys::ApiKeySet::load(name, k, &src.base_dir) {
            Ok(set) => {
                key_sets.insert(name.clone(), Arc::new(set));
            }
            Err(reason) => bad(format!("identity.api_keys.{name}"), reason),
        }
    }
    let rate_policies = compile_rate_limits(&cfg.rate_limits, deps, &mut bad);
    let asks_client_certs = cfg
        .listeners
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()));
    let mut introspectors: BTreeMap<String, Arc<crate::identity::introspection::Introspector>> =
        BTreeMap::new();
    for (name, ic) in &cfg.identity.introspection {
        let at = format!("identity.introspection.{name}");
        // "Active" only says the IdP issued the token, possibly for another resource server
        // or client: the answer must be tied to this gateway, unless the operator says not.
        if ic.allow_any_audience && !ic.audiences.is_empty() {
            bad(
                format!("{at}.allow_any_audience"),
                "contradicts `audiences`: keep one of them".into(),
            );
        } else if !ic.allow_any_audience && ic.audiences.is_empty() && ic.allowed_client_ids.is_empty() {
            bad(
                at.clone(),
                "set `audiences` or `allowed_client_ids` (which tokens are meant for this gateway), \
                 or `allow_any_audience: true` to accept any active token of the IdP"
                    .into(),
            );
        }
        for (key, list) in [
            ("audiences", &ic.audiences),
            ("allowed_client_ids", &ic.allowed_client_ids),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() {
                    bad(format!("{at}.{key}[{i}]"), "must not be empty".into());
                }
            }
        }
        if ic.issuer.as_deref() == Some("") {
            bad(format!("{at}.issuer"), "must not be empty".into());
        }
        match crate::identity::introspection::Introspector::new(name, ic, &src.base_dir, deps.metrics) {
            Ok(fresh) => {
                let kept = deps.states.introspection.get_or_make(name, ic, || fresh);
                introspectors.insert(name.clone(), kept);
            }
            Err(reason) => bad(format!("identity.introspection.{name}"), reason),
        }
    }
    let mut transforms: BTreeMap<String, Arc<crate::translate::Transform>> = BTreeMap::new();
    for (name, t) in &cfg.transforms {
        match crate::translate::Transform::compile(name, t, deps.metrics) {
            Ok(t) => {
                transforms.insert(name.clone(), Arc::new(t));
            }
            Err(errs) => {
                for (path, reason) in errs {
                    bad(format!("transforms.{name}.{path}"), reason);
                }
            }
        }
    }
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name.is_empty() {
            bad(format!("{at}.name"), "must not be empty".into());
        } else if !route_names.insert(r.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("`{}` is used by an earlier route", r.name),
            );
        }
        let m = &r.matcher;
        let set = [
            m.path.is_some(),
            m.path_prefix.is_some(),
            m.path_template.is_some(),
            m.path_regex.is_some(),
        ];
        let path = if set.iter().filter(|s| **s).count() > 1 {
            bad(
                format!("{at}.match"),
                "set one of `path`, `path_prefix`, `path_template`, `path_regex`".into(),
            );
            PathMatch::Any
        } else if let Some(t) = &m.path_template {
            match check_route_path(t).and_then(|()| PathMatch::template(t)) {
                Ok(pm) => pm,
                Err(reason) => {
                    bad(format!("{at}.match.path_template"), reason);
                    PathMatch::Any
                }
            }
        } else if let Some(re) = &m.path_regex {
            match regex::Regex::new(&format!("^(?:{re})$")) {
                Ok(r) => PathMatch::Regex(r),
                Err(e) => {
                    bad(format!("{at}.match.path_regex"), e.to_string());
                    PathMatch::Any
                }
            }
        } else {
            match (&m.path, &m.path_prefix) {
                (Some(p), _) => match check_route_path(p) {
                    Ok(()) => PathMatch::Exact(p.clone()),
                    Err(reason) => {
                        bad(format!("{at}.match.path"), reason);
                        PathMatch::Any
                    }
                },
                (None, Some(p)) => match check_route_path(p) {
                    Ok(()) if p == "/" => PathMatch::Any,
                    Ok(()) => PathMatch::Prefix(p.clone()),
                    Err(reason) => {
                        bad(format!("{at}.match.path_prefix"), reason);
                        PathMatch::Any
                    }
                },
                (None, None) => PathMatch::Any,
            }
        };
        let mut conditions = |kind: &str, list: &[crate::config::file::ConditionConfig], lower: bool| {
            let mut out = Vec::new();
            for (j, c) in list.iter().enumerate() {
                let key = format!("{at}.match.{kind}[{j}]");
                let name = if lower {
                    c.name.to_ascii_lowercase()
                } else {
                    c.name.clone()
                };
                if name.is_empty()
                    || (lower && http::header::HeaderName::from_bytes(name.as_bytes()).is_err())
                {
                    bad(format!("{key}.name"), format!("`{}` is not a valid name", c.name));
                    continue;
                }
                let value = match (c.present, &c.equals, &c.regex) {
                    (Some(p), None, None) => ValueMatch::Present(p),
                    (None, Some(e), None) => ValueMatch::Equals(e.clone()),
                    (None, None, Some(re)) => match regex::Regex::new(re) {
                        Ok(r) => ValueMatch::Regex(r),
                        Err(e) => {
                            bad(format!("{key}.regex"), e.to_string());
                            continue;
                        }
                    },
                    _ => {
                        bad(key, "set exactly one of `present`, `equals`, `regex`".into());
                        continue;
                    }
                };
                out.push(Condition { name, value });
            }
            out
        };
        let header_conds = conditions("headers", &m.headers, true);
        let query_conds = conditions("query", &m.query, false);
        let cookie_conds = conditions("cookies", &m.cookies, false);
        let mut hosts = Vec::new();
        for (j, h) in m.hosts.iter().enumerate() {
            match check_host(h) {
                Ok(()) => hosts.push(HostMatch::parse(h)),
                Err(reason) => bad(format!("{at}.match.hosts[{j}]"), reason),
            }
        }
        let mut methods = Vec::new();
        for (j, name) in m.methods.iter().enumerate() {
            match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(me) => methods.push(me),
                Err(_) => bad(
                    format!("{at}.match.methods[{j}]"),
                    format!("`{name}` is not an HTTP method"),
                ),
            }
        }
        let lookup = |key: String, name: &str, bad: &mut dyn FnMut(String, String)| {
            let found = upstreams.get(name).cloned();
            if found.is_none() {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                bad(
                    key,
                    format!("no upstream named `{name}` (defined: {})", known.join(", ")),
                );
            }
            found
        };
        // The legacy side (or the only one) is the route's `upstream`.
        let (upstream, migration) = match (&r.upstream, &r.migration) {
            (Some(_), Some(_)) => {
                bad(
                    format!("{at}.upstream"),
                    "set `upstream` or `migration`, not both".into(),
                );
                continue;
            }
            (None, None) => {
                bad(
                    format!("{at}.upstream"),
                    "set `upstream` (or a `migration`)".into(),
                );
                continue;
            }
            (Some(u), None) => match lookup(format!("{at}.upstream"), u, &mut bad) {
                Some(up) => (up, None),
                None => continue,
            },
            (None, Some(m)) => {
                let legacy = lookup(
                    format!("{at}.migration.legacy.upstream"),
                    &m.legacy.upstream,
                    &mut bad,
                );
                let modern = lookup(
                    format!("{at}.migration.modern.upstream"),
                    &m.modern.upstream,
                    &mut bad,
                );
                if !(0.0..=100.0).contains(&m.modern_percent) {
                    bad(
                        format!("{at}.migration.modern_percent"),
                        "must be between 0 and 100".into(),
                    );
                }
                let sticky = match m.sticky.as_deref().map(StickyKey::parse) {
                    Some(Err(reason)) => {
                        bad(format!("{at}.migration.sticky"), reason);
                        None
                    }
                    Some(Ok(k)) => Some(k),
                    None => None,
                };
                let needs_identity =
                    m.sticky.as_deref().is_some_and(|s| s.starts_with("jwt.")) || m.override_header.is_some();
                if needs_identity && r.identity.is_none() {
                    bad(
                        format!("{at}.migration"),
                        "a `jwt.` sticky key or an `override` needs the route's `identity`".into(),
                    );
                }
                if let Some(o) = &m.override_header {
                    if o.require_scope.is_none() && o.require_claim.is_none() {
                        bad(
                            format!("{at}.migration.override"),
                            "set `require_scope` or `require_claim`: an override open to everyone is a bypass".into(),
                        );
                    }
                }
                if m.fallback_non_idempotent && !m.fallback_to_legacy {
                    bad(
                        format!("{at}.migration.fallback_non_idempotent"),
                        "needs `fallback_to_legacy: true`".into(),
                    );
                }
                if !m.cohorts.is_empty() && m.sticky.is_none() {
                    bad(
                        format!("{at}.migration.cohorts"),
                        "cohorts are sticky-key values: set `sticky`".into(),
                    );
                }
                let shadow = match &m.shadow {
                    None => None,
                    Some(sc) => {
                        for (key, reason) in crate::pipeline::diff::ignore_warnings(&sc.ignore) {
                            warnings.push(src.problem(&format!("{at}.migration.shadow.{key}"), reason));
                        }
                        if !(0.0..=100.0).contains(&sc.percent) {
                            bad(
                                format!("{at}.migration.shadow.percent"),
                                "must be between 0 and 100".into(),
                            );
                        }
                        if sc.max_concurrent == 0 || sc.timeout.is_zero() {
                            bad(
                                format!("{at}.migration.shadow.max_concurrent"),
                                "max_concurrent and timeout must be greater than zero".into(),
                            );
                        }
                        match Shadow::new(&r.name, sc, deps.metrics) {
                            Ok(s) => Some(s),
                            Err(reason) => {
                                bad(format!("{at}.migration.shadow"), reason);
                                None
                            }
                        }
                    }
                };
                let (Some(legacy), Some(modern)) = (legacy, modern) else {
                    continue;
                };
                let shared = match (&m.rollout, &cfg.state_store.redis_url) {
                    (Some(_), Some(url)) => {
                        let prefix = cfg.state_store.key_prefix.as_deref().unwrap_or("ficus:");
                        match SharedStage::new(url, format!("{prefix}rollout:{}", r.name)) {
                            Ok(s) => Some(s),
                            Err(reason) => {
                                bad("state_store.redis_url".into(), reason);
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let rollout = m.rollout.as_ref().map(|rc| {
                    deps.states.rollouts.get_or_make(&r.name, m, || {
                        Rollout::new(
                            &r.name,
                            rc.clone(),
                            m.modern_percent,
                            deps.states.clock.clone(),
                            shared,
                        )
                    })
                });
                if let Some(rc) = &m.rollout {
                    if !(rc.step > 0.0 && rc.step <= 100.0) {
                        bad(
                            format!("{at}.migration.rollout.step"),
                            "must be above 0 and at most 100".into(),
                        );
                    }
                    if rc.every.is_zero() {
                        bad(
                            format!("{at}.migration.rollout.every"),
                            "must be greater than zero".into(),
                        );
                    }
                }
                (
                    legacy,
                    Some(Migration::new(
                        &r.name,
                        m,
                        modern,
                        sticky,
                        shadow,
                        rollout,
                        deps.metrics,
                    )),
                )
            }
        };
        let mut idem_scope = None;
        if let Some(idem) = &r.idempotency {
            if !idem.scope.is_empty() {
                match crate::pipeline::ratelimit::KeySpec::parse(&idem.scope) {
                    Ok(k) => idem_scope = Some(k),
                    Err(reason) => bad(format!("{at}.idempotency.scope"), reason),
                }
            } else if r.identity.is_none() {
                warnings.push(src.problem(
                    &format!("{at}.idempotency"),
                    "no `identity` and no `scope`: an Idempotency-Key from a caller without a client certificate gets 400"
                        .to_string(),
                ));
            }
            if idem.ttl.is_zero() || idem.lock_timeout.is_zero() {
                bad(
                    format!("{at}.idempotency.ttl"),
                    "ttl and lock_timeout must be greater than zero".into(),
                );
            }
            for (j, p) in idem.store_statuses.iter().enumerate() {
                if !p.valid() {
                    bad(
                        format!("{at}.idempotency.store_statuses[{j}]"),
                        "write a status (201) or a class (\"2xx\")".into(),
                    );
                }
            }
        }
        let mut find_transform = |key: String,
                                  name: &Option<String>|
         -> Option<Arc<crate::translate::Transform>> {
            let name = name.as_ref()?;
            let Some(t) = transforms.get(name) else {
                if !cfg.transforms.contains_key(name) {
                    bad(key, format!("no transform named `{name}`"));
                }
                return None;
            };
            // Captures the path rewrite uses must be bound by this route's template.
            if let Some(plan) = &t.request {
                let bound = match &r.matcher.path_template {
                    Some(tpl) => template_names(tpl),
                    None => Vec::new(),
                };
                for c in plan.capture_names() {
                    if !bound.iter().any(|b| b == c) {
                        bad(
                            key.clone(),
                            format!("transform `{name}` uses `{{{c}}}`, which this route's `path_template` does not capture"),
                        );
                    }
                }
            }
            Some(t.clone())
        };
        let route_transform = find_transform(format!("{at}.transform"), &r.transform);
        let (legacy_transform, modern_transform) = match &r.migration {
            Some(m) => (
                find_transform(format!("{at}.migration.legacy.transform"), &m.legacy.transform)
                    .or_else(|| route_transform.clone()),
                find_transform(format!("{at}.migration.modern.transform"), &m.modern.transform)
                    .or_else(|| route_transform.clone()),
            ),
            None => (route_transform.clone(), None),
        };
        let validate = match &r.validate {
            None => None,
            Some(v) => {
                let file = src.base_dir.join(&v.schema);
                watch_files.push(file.clone());
                match crate::translate::validate::SchemaCheck::load(&file, v.max_body.0) {
                    Ok(c) => Some(c),
                    Err(reason) => {
                        bad(format!("{at}.validate.schema"), reason);
                        None
                    }
                }
            }
        };
        let metrics = RouteMetrics::new(deps.metrics, &r.name, &upstream.name);
        let identity = match &r.identity {
            None => None,
            Some(ic) => {
                if let Some(key) = ic
                    .upstream_auth
                    .as_ref()
                    .and_then(|u| u.jwt.as_ref()?.key_file.as_ref())
                {
                    watch_files.push(src.base_dir.join(key));
                }
                let verifier = match (&ic.jwt, &ic.api_keys, &ic.introspection) {
                    (None, None, Some(name)) => match introspectors.get(name) {
                        Some(i) => Some(crate::identity::Verifier::Introspection(i.clone())),
                        None => {
                            bad(
                                format!("{at}.identity.introspection"),
                                format!("no introspection endpoint named `{name}`"),
                            );
                            None
                        }
                    },
                    (Some(name), None, None) => match providers.get(name) {
                        Some(p) => Some(crate::identity::Verifier::Jwt(p.clone())),
                        None => {
                            bad(
                                format!("{at}.identity.jwt"),
                                format!("no JWT provider named `{name}`"),
                            );
                            None
                        }
                    },
                    (None, Some(name), None) => match key_sets.get(name) {
                        Some(k) => Some(crate::identity::Verifier::ApiKeys(k.clone())),
                        None => {
                            bad(
                                format!("{at}.identity.api_keys"),
                                format!("no API-key set named `{name}`"),
                            );
                            None
                        }
                    },
                    (None, None, None) if ic.client_cert.is_some() || ic.forward_client_cert.is_some() => {
                        None
                    }
                    _ => {
                        bad(
                            format!("{at}.identity"),
                            "set one of `jwt`, `api_keys` or `introspection`, or `client_cert`".into(),
                        );
                        None
                    }
                };
                let has_verifier = ic.jwt.is_some() || ic.api_keys.is_some() || ic.introspection.is_some();
                if verifier.is_none() && has_verifier {
                    None
                } else {
                    match crate::identity::RouteIdentity::new(ic, verifier, &src.base_dir) {
                        Ok(i) => {
                            if ic.client_cert.is_some() && !asks_client_certs {
                                warnings.push(src.problem(
                                    &format!("{at}.identity.client_cert"),
                                    "no listener has `tls.client_auth`, so no caller can present a certificate".to_string(),
                                ));
                            }
                            Some(i)
                        }
                        Err(reason) => {
                            bad(format!("{at}.identity"), reason);
                            None
                        }
                    }
                }
            }
        };
        let mut policies = Vec::new();
        for (j, name) in r.rate_limit.iter().enumerate() {
            match rate_policies.get(name) {
                Some(p) => policies.push(p.clone()),
                None if cfg.rate_limits.policies.contains_key(name) => {} // already reported
                None => bad(
                    format!("{at}.rate_limit[{j}]"),
                    format!("no policy named `{name}` in rate_limits.policies"),
                ),
            }
        }
        routes.push(Route {
            rate_limits: (!policies.is_empty()).then_some(RouteRateLimits { policies }),
            legacy_transform,
            modern_transform,
            validate,
            identity,
            headers: header_conds,
            query: query_conds,
            cookies: cookie_conds,
            migration,
            idempotency: r
                .idempotency
                .as_ref()
                .map(|i| RouteIdempotency::new(i, idem_scope)),
            name: Arc::from(r.name.as_str()),
            hosts,
            path,
            methods,
            upstream,
            metrics,
        });
    }

    let idempotency_store = {
        let mut kept = deps.states.idempotency.lock();
        match &*kept {
            Some((c, store)) if *c == cfg.idempotency_store => Some(store.clone()),
            _ => match IdempotencyStore::new(&cfg.idempotency_store) {
                Ok(store) => {
                    let store = Arc::new(store);
                    *kept = Some((cfg.idempotency_store.clone(), store.clone()));
                    Some(store)
                }
                Err(reason) => {
                    problems.push(src.problem("idempotency_store.redis_url", reason));
                    None
                }
            },
        }
    };
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let Some(idempotency_store) = idempotency_store else {
        return Err(ConfigErrors(problems));
    };
    let owned_headers = crate::pipeline::trust::OwnedHeaders::new(
        routes
            .iter()
            .filter_map(|r| r.identity.as_ref())
            .flat_map(|i| i.owned_header_names().cloned())
            .collect::<Vec<_>>(),
        routes
            .iter()
            .filter_map(|r| r.migration.as_ref()?.override_header.as_ref())
            .map(|o| o.header.clone())
            .collect::<Vec<_>>(),
    );
    for (j, later) in routes.iter().enumerate() {
        if let Some((i, earlier)) = routes[..j].iter().enumerate().find(|(_, e)| later.shadowed_by(e)) {
            warnings.push(src.problem(
                &format!("routes[{j}]"),
                format!(
                    "unreachable: every request it matches is taken by the earlier route `{}` (routes[{i}])",
                    earlier.name
                ),
            ));
        }
    }
    Ok(Snapshot {
        rate_limit_stores: rate_policies.values().map(|p| p.local_store()).collect(),
        owned_headers,
        jwt_providers: providers.into_values().collect(),
        introspectors: introspectors.into_values().collect(),
        warnings,
        idempotency_store,
        version,
        hash: src.hash.clone(),
        loaded_at: SystemTime::now(),
        source: src.name.clone(),
        router: Router::new(routes),
        upstreams,
        listeners,
        unmatched: RouteMetrics::new(deps.metrics, "unmatched", ""),
        shutdown: cfg.shutdown.clone(),
        watch_files,
        config: cfg,
    })
}

/// The capture names of a `path_template` (`/orders/{id}/{*rest}` -> id, rest).
fn template_names(t: &str) -> Vec<String> {
    t.split('{')
        .skip(1)
        .filter_map(|p| p.split_once('}'))
        .map(|(n, _)| n.trim_start_matches('*').to_string())
        .collect()
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let scheme = match uri.scheme() {
        Some(sc) if *sc == Scheme::HTTP || *sc == Scheme::HTTPS => sc.clone(),
        Some(sc) => {
            return Err(format!(
                "scheme `{sc}` is not supported; use http://host:port or https://host:port"
            ))
        }
        None => return Err(format!("`{s}` needs a scheme: http://host:port")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{s}` has no host"))?;
    if authority.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{s}`: an endpoint is scheme://host:port only, without a path"
        ));
    }
    Ok(Endpoint { scheme, authority })
}

/// A route path must already be in normal form, or it could never match a normalised request.
fn check_route_path(p: &str) -> Result<(), String> {
    match normalize_path(p, false) {
        Ok(n) if n == p => Ok(()),
        Ok(n) => Err(format!(
            "`{p}` is not in normal form; requests are matched as `{n}`"
        )),
        Err(e) => Err(format!("`{p}`: {e}")),
    }
}

fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && !name.contains('*')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a host name or `*.domain` pattern (no port, no scheme)"
        ))
    }
}

/// The first invalid setting of the store breaker, if any: a breaker that could never open or
/// never wait would silently bring back the latency it exists to remove.
fn breaker_problem(b: &super::file::StoreBreakerConfig) -> Option<(&'static str, &'static str)> {
    if b.failures == 0 {
        Some(("failures", "must be at least 1"))
    } else if b.open_for.is_zero() {
        Some(("open_for", "must be more than 0"))
    } else if b.max_open_for < b.open_for {
        Some(("max_open_for", "must be at least open_for"))
    } else {
        None
    }
}

/// Policies by name. The Redis store is shared by all of them and kept across reloads while the
/// store section is unchanged; each policy's in-process state is kept while its limit is.
fn compile_rate_limits(
    cfg: &super::file::RateLimitsConfig,
    deps: &Deps<'_>,
    bad: &mut impl FnMut(String, String),
) -> BTreeMap<String, Arc<Policy>> {
    let store = &cfg.store;
    let redis = if store.redis_urls.is_empty() {
        None
    } else if store.timeout.is_zero() {
        bad("rate_limits.store.timeout".into(), "must be more than 0".into());
        None
    } else if let Some((key, reason)) = breaker_problem(&store.breaker) {
        bad(format!("rate_limits.store.breaker.{key}"), reason.into());
        None
    } else {
        let mut kept = deps.states.ratelimit_redis.lock();
        match &*kept {
            Some((c, r)) if c == store => Some(r.clone()),
            _ => match RedisStore::new(store, deps.metrics) {
                Ok(r) => {
                    *kept = Some((store.clone(), r.clone()));
                    Some(r)
                }
                Err(reason) => {
                    bad("rate_limits.store.redis_urls".into(), reason);
                    None
                }
            },
        }
    };
    let mut out = BTreeMap::new();
    for (name, p) in &cfg.policies {
        let at = format!("rate_limits.policies.{name}");
        let limit = match Policy::limit(p) {
            Ok(l) => l,
            Err(reason) => {
                bad(at, reason);
                continue;
            }
        };
        let shared = if Policy::uses_redis(p, !store.redis_urls.is_empty()) {
            match &redis {
                Some(r) => Some((r.clone(), store.on_error, format!("{}{name}:", store.key_prefix))),
                None if store.redis_urls.is_empty() => {
                    bad(
                        format!("{at}.store"),
                        "`redis` needs rate_limits.store.redis_urls".into(),
                    );
                    continue;
                }
                None => continue,
            }
        } else {
            None
        };
        let local = deps
            .states
            .rate_limits
            .get_or_make(name, &limit, || LocalStore::new(limit));
        match Policy::new(name, p, limit, local, shared, deps.metrics) {
            Ok(policy) => {
                out.insert(name.clone(), Arc::new(policy));
            }
            Err(reason) => bad(at, reason),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn compile_text(text: &'static str) -> Result<Snapshot, ConfigErrors> {
        compile_text_in(text, ".")
    }

    /// With files the config names (schemas) looked up relative to `dir`, as for a file there.
    fn compile_text_in(text: &'static str, dir: &str) -> Result<Snapshot, ConfigErrors> {
        let src = ConfigSource::Embedded {
            name: "test.yaml".into(),
            text,
            base_dir: PathBuf::from(dir),
        };
        let metrics = Metrics::new();
        let clients = ClientCache::default();
        compile(
            &src.read()?,
            1,
            &Deps {
                metrics: &metrics,
                clients: &clients,
                states: &Default::default(),
            },
        )
    }

    #[test]
    fn a_minimal_config_compiles() {
        let snap = compile_text(
            "listeners:\n  - name: main\n    bind: 127.0.0.1:0\nupstreams:\n  app:\n    endpoints: [http://127.0.0.1:9]\nroutes:\n  - name: all\n    upstream: app\n",
        )
        .unwrap();
        assert_eq!(snap.router.routes().len(), 1);
        assert!(snap.listeners.contains_key("main"));
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_key_path() {
        let err = compile_text(
            "listeners:\n  - name: main\n    bind: 127.0.0.1:0\nupstreams:\n  app:\n    endpoints: [ftp://x]\nroutes:\n  - name: a\n    match: { path_prefix: /api/../x }\n    upstream: nope\n",
        )
        .err()
        .unwrap();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("test.yaml:6: upstreams.app.endpoints[0]: scheme `ftp`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("test.yaml:9: routes[0].match.path_prefix:")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("test.yaml:10: routes[0].upstream: no upstream named `nope`")),
            "{lines:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_at_their_own_line() {
        let err = compile_text("listeners:\n  - name: main\n    bind: 127.0.0.1:0\n    bnid: x\n")
            .err()
            .unwrap();
        assert_eq!(err.0.len(), 1);
        let p = &err.0[0];
        assert_eq!((p.line, p.path.as_str()), (4, "listeners[0].bnid"), "{p}");
        assert!(p.reason.starts_with("unknown field `bnid`"), "{p}");
    }

    #[test]
    fn bad_durations_and_sizes_are_explained() {
        let err = compile_text(
            "listeners:\n  - name: main\n    bind: 127.0.0.1:0\n    limits:\n      idle_timeout: soon\n",
        )
        .err()
        .unwrap();
        assert_eq!(err.0[0].path, "listeners[0].limits.idle_timeout");
        assert_eq!(err.0[0].line, 5);
        assert!(err.0[0].reason.contains("not a duration"), "{}", err.0[0]);
    }

    #[test]
    fn a_client_certificate_route_needs_no_token_verifier_but_scopes_do() {
        let base = "listeners:\n  - name: main\n    bind: 127.0.0.1:0\nupstreams:\n  app:\n    endpoints: [http://127.0.0.1:9]\nroutes:\n  - name: a\n    upstream: app\n";
        let ok = format!("{base}    identity: {{ client_cert: {{ san: 'spiffe://corp/*' }}, forward_client_cert: {{ san: X-Client-San }} }}\n");
        let snap = compile_text(Box::leak(ok.into_boxed_str())).unwrap();
        assert_eq!(
            snap.owned_headers.names().collect::<Vec<_>>(),
            vec![&http::HeaderName::from_static("x-client-san")]
        );
        // No listener asks for client certificates: valid, but flagged.
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.path == "routes[0].identity.client_cert"),
            "{:?}",
            snap.warnings.iter().map(ToString::to_string).collect::<Vec<_>>()
        );

        let bad = format!("{base}    identity: {{ client_cert: {{ required: true }}, scopes: [x] }}\n");
        let err = compile_text(Box::leak(bad.into_boxed_str())).err().unwrap();
        assert!(
            err.0[0].reason.contains("need `jwt` or `api_keys`"),
            "{}",
            err.0[0]
        );
        let bad = format!("{base}    identity: {{ optional: true }}\n");
        let err = compile_text(Box::leak(bad.into_boxed_str())).err().unwrap();
        assert!(err.0[0].reason.contains("or `client_cert`"), "{}", err.0[0]);
    }

    #[test]
    fn example_config_is_valid() {
        if let Err(e) = compile_text_in(include_str!("../../config/ficus.example.yaml"), "config") {
            panic!("config/ficus.example.yaml is invalid:\n{e}");
        }
    }

    #[test]
    fn demo_config_is_valid() {
        if let Err(e) = compile_text(include_str!("../../config/demo.yaml")) {
            panic!("config/demo.yaml is invalid:\n{e}");
        }
    }

    #[test]
    fn zero_listener_timeouts_and_bad_log_filters_are_refused() {
        let err = compile_text(
            "log: { level: 'ficus=loud' }\nlisteners:\n  - name: main\n    bind: 127.0.0.1:0\n    limits: { idle_timeout: 0s }\n",
        )
        .err()
        .unwrap();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("test.yaml:1: log.level: not a valid log filter")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l
                    .starts_with("test.yaml:5: listeners[0].limits.idle_timeout: must be greater than zero")),
            "{lines:?}"
        );
    }
}
