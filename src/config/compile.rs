//! Compilation of a [`FileConfig`] into the immutable [`Snapshot`] the hot path reads.
//!
//! Each stage validates and builds its own section (`upstream::compile`, `identity::compile`,
//! `pipeline::ratelimit::compile`, `Route::compile`, `Transform::compile`,
//! `ListenerRuntime::compile`); this file only orders them, hands each the sections it depends
//! on, and collects the problems as `file:line: key.path: reason`. Everything that can be worked
//! out ahead of a request (routes, endpoints, TLS acceptors, metric handles) is worked out here,
//! once per config version.
//!
//! Compiling has no effect on what runs: state that outlives a reload is read from the running
//! snapshot's [`Carried`] and written to the new one's, which takes effect only when the new
//! snapshot is swapped in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::carry::Carry;
use super::file::{FileConfig, IdempotencyStoreConfig, ShutdownConfig, UpstreamConfig};
use super::problems::Problems;
use super::{ConfigErrors, ConfigProblem, SourceText};
use crate::identity::jwt::JwtProvider;
use crate::pipeline::idempotency::IdempotencyStore;
use crate::pipeline::migration::compile::RolloutKey;
use crate::pipeline::rollout::{Clock, Rollout, SystemClock};
use crate::pipeline::route::compile::Env as RouteEnv;
use crate::pipeline::route::{Route, Router};
use crate::pipeline::trust::OwnedHeaders;
use crate::server::runtime::ListenerRuntime;
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::translate::Transform;
use crate::upstream::client::PoolKey;
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
    /// Every header some route sets for its upstream (claims, client-certificate headers, legacy
    /// credentials, migration overrides, `X-Ficus-*`): removed from every request before the
    /// first stage, so no caller can send them through a route that does not set them.
    pub owned_headers: OwnedHeaders,
    /// The state this snapshot hands to the next compile.
    pub carried: Carried,
    /// What the access log and stored shadow diffs redact.
    pub redact: Arc<crate::telemetry::redact::Redactor>,
    /// `telemetry.tracing` with the `OTEL_*` variables folded in; `None`: tracing is off.
    pub tracing: Option<crate::telemetry::traces::TracingSettings>,
    /// The write queue of `buffer_writes` routes, kept across reloads while `queue_store` is unchanged.
    pub writes: Option<Arc<crate::pipeline::writes::WriteQueue>>,
}

impl Snapshot {
    pub fn pool_keys(&self) -> Vec<PoolKey> {
        self.upstreams.values().map(|u| u.pool_key.clone()).collect()
    }

    pub fn rollouts(&self) -> Vec<Arc<Rollout>> {
        self.carried.rollouts.values().cloned().collect()
    }
}

/// State that outlives a reload while the config that defines it is unchanged (see
/// [`Carry`]): per upstream its endpoint health and breakers, per migration route its
/// rollout, per identity provider its keys and caches, per rate-limit policy its counters, and
/// the idempotency store, whose in-flight locks must outlive a reload.
#[derive(Default)]
pub struct Carried {
    pub upstreams: Carry<UpstreamConfig, crate::upstream::compile::Kept>,
    pub identity: crate::identity::compile::Kept,
    pub rate_limits: crate::pipeline::ratelimit::compile::Kept,
    pub rollouts: Carry<RolloutKey, Arc<Rollout>>,
    pub contracts: Carry<crate::pipeline::contract::ContractKey, crate::pipeline::contract::Memory>,
    pub idempotency: Carry<IdempotencyStoreConfig, Arc<IdempotencyStore>>,
    pub tls_sessions: crate::server::runtime::TlsSessions,
    pub writes: Carry<crate::config::writes::QueueStoreConfig, Arc<crate::pipeline::writes::WriteQueue>>,
    pub shadow_learning:
        Carry<crate::pipeline::migration::compile::LearningKey, Arc<crate::pipeline::shadow::Learning>>,
}

/// What compiling needs besides the config text, made once per process: the metric registry,
/// the upstream connection pools (shared by equal pool settings across reloads), and the clock
/// that rollouts read (tests use a manual one).
pub struct Compiler {
    pub metrics: Metrics,
    pub clients: ClientCache,
    pub clock: Arc<dyn Clock>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock::default()))
    }
}

impl Compiler {
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            metrics: Metrics::new(),
            clients: ClientCache::default(),
            clock,
        }
    }

    /// Builds snapshot `version` from `src`, keeping what `prev` (the running snapshot's
    /// carry) holds for unchanged config. Reports every problem found, not just the first.
    pub fn compile(&self, src: &SourceText, version: u64, prev: &Carried) -> Result<Snapshot, ConfigErrors> {
        let cfg = src.parse()?;
        let mut p = Problems::new(src);
        let mut next = Carried::default();
        top_level(&cfg, &mut p);
        let redact = Arc::new(crate::telemetry::redact::Redactor::compile(
            &cfg.redact,
            &mut p.at("redact"),
        ));
        let listeners = self.listeners(&cfg, &mut p, prev, &mut next);
        let upstreams = self.upstreams(&cfg, &mut p, prev, &mut next);
        let verifiers = crate::identity::compile::compile(
            &cfg.identity,
            &mut p,
            &self.metrics,
            &prev.identity,
            &mut next.identity,
        );
        let policies = crate::pipeline::ratelimit::compile::compile(
            &cfg.rate_limits,
            &mut p,
            &self.metrics,
            &prev.rate_limits,
            &mut next.rate_limits,
        );
        let transforms = self.transforms(&cfg, &mut p);
        let learning = std::cell::RefCell::new(Carry::default());
        let env = RouteEnv {
            migration: crate::pipeline::migration::compile::Env {
                upstreams: &upstreams,
                metrics: &self.metrics,
                clock: &self.clock,
                state_store: &cfg.state_store,
                prev: &prev.rollouts,
                redact: &redact,
                learning_prev: &prev.shadow_learning,
                learning_next: &learning,
            },
            transforms: &transforms,
            transform_names: cfg.transforms.keys().map(String::as_str).collect(),
            verifiers: &verifiers,
            policies: &policies,
            policy_names: cfg.rate_limits.policies.keys().map(String::as_str).collect(),
            client_auth_listener: cfg
                .listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some())),
            queue_store: cfg.queue_store.as_ref(),
            contracts: crate::pipeline::contract::Keeping::new(&prev.contracts),
        };
        let routes = routes(&cfg, &mut p, &env, &mut next.rollouts);
        next.contracts = env.contracts.into_next();
        next.shadow_learning = learning.take();
        let idempotency_store = idempotency_store(&cfg.idempotency_store, &mut p, prev, &mut next);
        let writes = write_queue(&cfg, &mut p, prev, &mut next);
        warn_unreachable(&routes, &mut p);
        let tracing = crate::telemetry::traces::compile(
            &cfg.telemetry.tracing,
            &crate::telemetry::traces::process_env,
            &mut p.at("telemetry.tracing"),
        );
        let findings = p.finish()?;
        let idempotency_store = idempotency_store
            .ok_or_else(|| ConfigErrors::one(&src.name, 1, "idempotency_store", "cannot be built"))?;
        Ok(Snapshot {
            owned_headers: owned_headers(&routes),
            jwt_providers: verifiers.jwt.into_values().collect(),
            warnings: findings.warnings,
            watch_files: findings.files,
            idempotency_store,
            version,
            hash: src.hash.clone(),
            loaded_at: SystemTime::now(),
            source: src.name.clone(),
            router: Router::new(routes),
            upstreams,
            listeners,
            unmatched: RouteMetrics::new(&self.metrics, "unmatched", "", None),
            shutdown: cfg.shutdown.clone(),
            config: cfg,
            carried: next,
            redact,
            tracing,
            writes,
        })
    }

    fn listeners(
        &self,
        cfg: &FileConfig,
        p: &mut Problems<'_>,
        prev: &Carried,
        next: &mut Carried,
    ) -> HashMap<String, Arc<ListenerRuntime>> {
        let mut out = HashMap::new();
        let mut binds = HashSet::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let mut sec = p.at(format!("listeners[{i}]"));
            if l.name.is_empty() {
                sec.error("name", "must not be empty");
            }
            if out.contains_key(&l.name) {
                sec.error("name", format!("`{}` is used by an earlier listener", l.name));
            }
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                sec.error("bind", format!("{} is bound by an earlier listener", l.bind));
            }
            if let Some(tls) = &l.tls {
                for c in &tls.certs {
                    sec.file(&c.cert);
                    sec.file(&c.key);
                }
                if let Some(ca) = &tls.client_auth {
                    sec.file(&ca.ca_file);
                }
            }
            let sessions = (&prev.tls_sessions, &mut next.tls_sessions);
            match ListenerRuntime::compile(l, sec.base_dir(), &self.metrics, sessions) {
                Ok(rt) => {
                    out.insert(l.name.clone(), Arc::new(rt));
                }
                Err(errs) => sec.errors(errs),
            }
        }
        out
    }

    fn upstreams(
        &self,
        cfg: &FileConfig,
        p: &mut Problems<'_>,
        prev: &Carried,
        next: &mut Carried,
    ) -> BTreeMap<String, Arc<Upstream>> {
        let env = crate::upstream::compile::Env {
            metrics: &self.metrics,
            clients: &self.clients,
            clock: &self.clock,
            prev: &prev.upstreams,
        };
        cfg.upstreams
            .iter()
            .map(|(name, u)| {
                let mut sec = p.at(format!("upstreams.{name}"));
                let up = crate::upstream::compile::compile(name, u, &mut sec, &env, &mut next.upstreams);
                (name.clone(), up)
            })
            .collect()
    }

    fn transforms(&self, cfg: &FileConfig, p: &mut Problems<'_>) -> BTreeMap<String, Arc<Transform>> {
        let mut out = BTreeMap::new();
        for (name, t) in &cfg.transforms {
            match Transform::compile(name, t, &self.metrics) {
                Ok(t) => {
                    out.insert(name.clone(), Arc::new(t));
                }
                Err(errs) => p.at(format!("transforms.{name}")).errors(errs),
            }
        }
        out
    }
}

/// Compiles `src` on its own, as `ficus check` and `ficus translate` do: nothing runs, so
/// there is no state to keep.
pub fn standalone(src: &SourceText) -> Result<Snapshot, ConfigErrors> {
    Compiler::default().compile(src, 1, &Carried::default())
}

fn top_level(cfg: &FileConfig, p: &mut Problems<'_>) {
    let mut sec = p.at("");
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        sec.error("log.level", format!("not a valid log filter: {e}"));
    }
    if cfg.listeners.is_empty() {
        sec.error("listeners", "configure at least one listener");
    }
    for (i, h) in cfg.admin.allowed_hosts.iter().enumerate() {
        if !crate::admin::host::valid_host_name(h) {
            sec.error(
                &format!("admin.allowed_hosts[{i}]"),
                format!("`{h}` is not a host name (write it without scheme or port)"),
            );
        }
    }
}

fn routes(
    cfg: &FileConfig,
    p: &mut Problems<'_>,
    env: &RouteEnv<'_>,
    rollouts: &mut Carry<RolloutKey, Arc<Rollout>>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let mut sec = p.at(format!("routes[{i}]"));
        if r.name.is_empty() {
            sec.error("name", "must not be empty");
        } else if !names.insert(r.name.as_str()) {
            sec.error("name", format!("`{}` is used by an earlier route", r.name));
        }
        if let Some(route) = Route::compile(r, &mut sec, env, rollouts) {
            routes.push(route);
        }
    }
    routes
}

fn idempotency_store(
    cfg: &IdempotencyStoreConfig,
    p: &mut Problems<'_>,
    prev: &Carried,
    next: &mut Carried,
) -> Option<Arc<IdempotencyStore>> {
    let store = match prev.idempotency.get("", cfg) {
        Some(s) => s,
        None => match IdempotencyStore::new(cfg) {
            Ok(s) => Arc::new(s),
            Err(reason) => {
                p.at("idempotency_store.redis_url").error("", reason);
                return None;
            }
        },
    };
    next.idempotency.keep("", cfg, store.clone());
    Some(store)
}

/// The `queue_store`, when some route buffers writes: checked, and carried while unchanged.
fn write_queue(
    cfg: &FileConfig,
    p: &mut Problems<'_>,
    prev: &Carried,
    next: &mut Carried,
) -> Option<Arc<crate::pipeline::writes::WriteQueue>> {
    let qs = cfg.queue_store.as_ref()?;
    let mut sec = p.at("queue_store");
    crate::pipeline::writes::compile::queue_store(qs, &mut sec);
    if !cfg.routes.iter().any(|r| r.buffer_writes.is_some()) {
        return None;
    }
    let q = match prev.writes.get("", qs) {
        Some(q) => q,
        None => match crate::pipeline::writes::WriteQueue::new(qs) {
            Ok(q) => q,
            Err(reason) => {
                sec.error("redis_urls", reason);
                return None;
            }
        },
    };
    next.writes.keep("", qs, q.clone());
    // Status requests are answered before routing, so a route under the prefix never sees them.
    let under = |path: &str| {
        path.strip_prefix(qs.status_prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    for (i, r) in cfg.routes.iter().enumerate() {
        let m = &r.matcher;
        if [&m.path, &m.path_prefix, &m.path_template]
            .into_iter()
            .flatten()
            .any(|p| under(p))
        {
            p.at(format!("routes[{i}]")).warn(
                "match",
                format!(
                    "requests for `{}/{{id}}` are answered as queued-write statuses before routing (queue_store.status_prefix): this route never gets them",
                    qs.status_prefix
                ),
            );
        }
    }
    Some(q)
}

fn owned_headers(routes: &[Route]) -> OwnedHeaders {
    OwnedHeaders::new(
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
    )
}

fn warn_unreachable(routes: &[Route], p: &mut Problems<'_>) {
    for (j, later) in routes.iter().enumerate() {
        if let Some((i, earlier)) = routes[..j].iter().enumerate().find(|(_, e)| later.shadowed_by(e)) {
            p.at(format!("routes[{j}]")).warn(
                "",
                format!(
                    "unreachable: every request it matches is taken by the earlier route `{}` (routes[{i}])",
                    earlier.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn assert_line(lines: &[String], start: &str) {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "no `{start}` in {lines:?}"
        );
    }

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
        Compiler::default().compile(&src.read()?, 1, &Carried::default())
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
        assert_line(&lines, "test.yaml:6: upstreams.app.endpoints[0]: scheme `ftp`");
        assert_line(&lines, "test.yaml:9: routes[0].match.path_prefix:");
        assert_line(
            &lines,
            "test.yaml:10: routes[0].upstream: no upstream named `nope`",
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
    fn a_route_under_the_write_status_prefix_is_warned_about() {
        let text = "listeners:\n  - name: main\n    bind: 127.0.0.1:0\nupstreams:\n  app:\n    endpoints: [http://127.0.0.1:9]\nroutes:\n  - name: orders\n    match: { path_prefix: /orders }\n    upstream: app\n    buffer_writes: { max_attempts: 3 }\n  - name: mine\n    match: { path_prefix: /ficus/writes/mine }\n    upstream: app\n  - name: near\n    match: { path_prefix: /ficus/writes-old }\n    upstream: app\nqueue_store: { redis_urls: ['redis://127.0.0.1:9'] }\n";
        let snap = compile_text(text).unwrap();
        let warned: Vec<&str> = snap
            .warnings
            .iter()
            .filter(|w| w.reason.contains("queued-write statuses"))
            .map(|w| w.path.as_str())
            .collect();
        assert_eq!(warned, ["routes[1].match"], "{:?}", snap.warnings);
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
        assert_line(&lines, "test.yaml:1: log.level: not a valid log filter");
        assert_line(
            &lines,
            "test.yaml:5: listeners[0].limits.idle_timeout: must be greater than zero",
        );
    }
}
