//! Builds one entry of `routes`: its matcher, its upstream or migration, and the stages it
//! names (identity, rate limits, idempotency, transforms, schema validation).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;

use super::{Condition, HostMatch, PathMatch, Route, ValueMatch};
use crate::config::carry::Carry;
use crate::config::file::{ConditionConfig, MatchConfig, RouteConfig};
use crate::config::problems::Section;
use crate::identity::compile::{route_identity, Verifiers};
use crate::pipeline::context::Side;
use crate::pipeline::contract::Contract;
use crate::pipeline::idempotency::RouteIdempotency;
use crate::pipeline::migration::compile::{self as migration, RolloutKey};
use crate::pipeline::normalize::normalize_path;
use crate::pipeline::ratelimit::{Policy, RouteRateLimits};
use crate::pipeline::rollout::Rollout;
use crate::telemetry::metrics::RouteMetrics;
use crate::translate::Transform;
use crate::upstream::compile::find;

/// What a route may name, built from the other sections first.
pub struct Env<'a> {
    pub migration: migration::Env<'a>,
    pub transforms: &'a BTreeMap<String, Arc<Transform>>,
    /// Every transform the config defines, built or not (one that failed is reported already).
    pub transform_names: Vec<&'a str>,
    pub verifiers: &'a Verifiers,
    pub policies: &'a BTreeMap<String, Arc<Policy>>,
    pub policy_names: Vec<&'a str>,
    /// Whether any listener asks callers for a certificate.
    pub client_auth_listener: bool,
    /// The top-level `queue_store`, which `buffer_writes` needs.
    pub queue_store: Option<&'a crate::config::writes::QueueStoreConfig>,
    /// What contracts learned, carried across reloads.
    pub contracts: crate::pipeline::contract::Keeping<'a>,
}

impl Route {
    /// The route, or `None` when it lacks an upstream (reported); every other problem is
    /// reported while the route is still built, so later checks see it.
    pub fn compile(
        r: &RouteConfig,
        sec: &mut Section<'_, '_>,
        env: &Env<'_>,
        rollouts: &mut Carry<RolloutKey, Arc<Rollout>>,
    ) -> Option<Self> {
        let path = path_match(&r.matcher, &mut sec.at("match"));
        let headers = conditions(&r.matcher.headers, &mut sec.at("match.headers"), true);
        let query = conditions(&r.matcher.query, &mut sec.at("match.query"), false);
        let cookies = conditions(&r.matcher.cookies, &mut sec.at("match.cookies"), false);
        let hosts = hosts(&r.matcher, sec);
        let methods = methods(&r.matcher, sec);
        let (upstream, migration) = match (&r.upstream, &r.migration) {
            (Some(_), Some(_)) => {
                sec.error("upstream", "set `upstream` or `migration`, not both");
                return None;
            }
            (None, None) => {
                sec.error("upstream", "set `upstream` (or a `migration`)");
                return None;
            }
            (Some(u), None) => (find(env.migration.upstreams, u, sec, "upstream")?, None),
            (None, Some(m)) => {
                let (legacy, m) =
                    migration::compile(r, m, &mut sec.at("migration"), &env.migration, rollouts)?;
                (legacy, Some(m))
            }
        };
        let idempotency = r
            .idempotency
            .as_ref()
            .and_then(|i| RouteIdempotency::compile(i, r.identity.is_some(), &mut sec.at("idempotency")));
        let route_transform = transform(r, &r.transform, "transform", sec, env);
        let (legacy_transform, modern_transform) = match &r.migration {
            Some(m) => (
                transform(r, &m.legacy.transform, "migration.legacy.transform", sec, env)
                    .or_else(|| route_transform.clone()),
                transform(r, &m.modern.transform, "migration.modern.transform", sec, env)
                    .or_else(|| route_transform.clone()),
            ),
            None => (route_transform, None),
        };
        let validate = r.validate.as_ref().and_then(|v| {
            let file = sec.file(&v.schema);
            crate::translate::validate::SchemaCheck::load(&file, v.max_body.0)
                .map_err(|reason| sec.error("validate.schema", reason))
                .ok()
        });
        let identity = r.identity.as_ref().and_then(|ic| {
            route_identity(
                ic,
                env.verifiers,
                &mut sec.at("identity"),
                env.client_auth_listener,
            )
        });
        let mut policies = Vec::new();
        for (j, name) in r.rate_limit.iter().enumerate() {
            match env.policies.get(name) {
                Some(p) => policies.push(p.clone()),
                None if env.policy_names.contains(&name.as_str()) => {} // reported with the policy
                None => sec.error(
                    &format!("rate_limit[{j}]"),
                    format!("no policy named `{name}` in rate_limits.policies"),
                ),
            }
        }
        let buffer_writes = r.buffer_writes.as_ref().and_then(|b| {
            crate::pipeline::writes::compile::route(
                r,
                b,
                env.queue_store,
                &mut sec.at("buffer_writes"),
                env.migration.metrics,
            )
        });
        let contract = contract(r, migration.as_ref(), &mut sec.at("contract"), &env.contracts);
        Some(Route {
            contract,
            buffer_writes,
            rate_limits: (!policies.is_empty()).then_some(RouteRateLimits { policies }),
            legacy_transform,
            modern_transform,
            validate,
            identity,
            headers,
            query,
            cookies,
            metrics: RouteMetrics::new(
                env.migration.metrics,
                &r.name,
                &upstream.name,
                r.migration.is_some().then_some(Side::Legacy),
            ),
            migration,
            idempotency,
            history: env.migration.metrics.route_history(&r.name),
            name: Arc::from(r.name.as_str()),
            hosts,
            path,
            methods,
            upstream,
        })
    }
}

/// The route's contract learner: fed by its shadow, if any, and by `contract` sampling.
fn contract(
    r: &RouteConfig,
    migration: Option<&crate::pipeline::migration::Migration>,
    sec: &mut Section<'_, '_>,
    kept: &crate::pipeline::contract::Keeping<'_>,
) -> Option<Arc<Contract>> {
    let shadow = migration.and_then(|m| m.shadow.as_ref());
    if let Some(c) = &r.contract {
        if !(0.0..=100.0).contains(&c.sample_percent) {
            sec.error("sample_percent", "must be between 0 and 100");
        }
        if c.max_body_bytes.0 == 0 {
            sec.error("max_body_bytes", "must be greater than zero");
        }
    }
    let (percent, max_body) = match (&r.contract, shadow) {
        (None, None) => return None,
        (Some(c), _) => (c.sample_percent, c.max_body_bytes.0),
        (None, Some(s)) => (0.0, s.max_body),
    };
    let key = crate::pipeline::contract::ContractKey {
        legacy: match (&r.upstream, &r.migration) {
            (Some(u), _) => u.clone(),
            (None, Some(m)) => m.legacy.upstream.clone(),
            (None, None) => String::new(),
        },
        modern: r.migration.as_ref().map(|m| m.modern.upstream.clone()),
        legacy_transform: r
            .migration
            .as_ref()
            .and_then(|m| m.legacy.transform.clone())
            .or_else(|| r.transform.clone()),
        modern_transform: r
            .migration
            .as_ref()
            .and_then(|m| m.modern.transform.clone())
            .or_else(|| r.transform.clone()),
    };
    let made = Contract::new(&r.name, percent, max_body, kept.memory(&r.name, &key));
    let made = Arc::new(made);
    if let Some(s) = shadow {
        s.set_contract(made.clone());
    }
    Some(made)
}

fn path_match(m: &MatchConfig, sec: &mut Section<'_, '_>) -> PathMatch {
    let set = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_template.is_some(),
        m.path_regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        sec.error(
            "",
            "set one of `path`, `path_prefix`, `path_template`, `path_regex`",
        );
        return PathMatch::Any;
    }
    let built = if let Some(t) = &m.path_template {
        check_route_path(t)
            .and_then(|()| PathMatch::template(t))
            .map_err(|e| ("path_template", e))
    } else if let Some(re) = &m.path_regex {
        regex::Regex::new(&format!("^(?:{re})$"))
            .map(PathMatch::Regex)
            .map_err(|e| ("path_regex", e.to_string()))
    } else if let Some(p) = &m.path {
        check_route_path(p)
            .map(|()| PathMatch::Exact(p.clone()))
            .map_err(|e| ("path", e))
    } else if let Some(p) = &m.path_prefix {
        check_route_path(p)
            .map(|()| {
                if p == "/" {
                    PathMatch::Any
                } else {
                    PathMatch::Prefix(p.clone())
                }
            })
            .map_err(|e| ("path_prefix", e))
    } else {
        Ok(PathMatch::Any)
    };
    built.unwrap_or_else(|(key, reason)| {
        sec.error(key, reason);
        PathMatch::Any
    })
}

/// Header names are matched lower-cased (`lower`); query and cookie names as written.
fn conditions(list: &[ConditionConfig], sec: &mut Section<'_, '_>, lower: bool) -> Vec<Condition> {
    let mut out = Vec::new();
    for (j, c) in list.iter().enumerate() {
        let mut sec = sec.at(&format!("[{j}]"));
        let name = if lower {
            c.name.to_ascii_lowercase()
        } else {
            c.name.clone()
        };
        if name.is_empty() || (lower && http::header::HeaderName::from_bytes(name.as_bytes()).is_err()) {
            sec.error("name", format!("`{}` is not a valid name", c.name));
            continue;
        }
        let value = match (c.present, &c.equals, &c.regex) {
            (Some(p), None, None) => ValueMatch::Present(p),
            (None, Some(e), None) => ValueMatch::Equals(e.clone()),
            (None, None, Some(re)) => match regex::Regex::new(re) {
                Ok(r) => ValueMatch::Regex(r),
                Err(e) => {
                    sec.error("regex", e.to_string());
                    continue;
                }
            },
            _ => {
                sec.error("", "set exactly one of `present`, `equals`, `regex`");
                continue;
            }
        };
        out.push(Condition { name, value });
    }
    out
}

fn hosts(m: &MatchConfig, sec: &mut Section<'_, '_>) -> Vec<HostMatch> {
    let mut out = Vec::new();
    for (j, h) in m.hosts.iter().enumerate() {
        match check_host(h) {
            Ok(()) => out.push(HostMatch::parse(h)),
            Err(reason) => sec.error(&format!("match.hosts[{j}]"), reason),
        }
    }
    out
}

fn methods(m: &MatchConfig, sec: &mut Section<'_, '_>) -> Vec<Method> {
    let mut out = Vec::new();
    for (j, name) in m.methods.iter().enumerate() {
        match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
            Ok(me) => out.push(me),
            Err(_) => sec.error(
                &format!("match.methods[{j}]"),
                format!("`{name}` is not an HTTP method"),
            ),
        }
    }
    out
}

/// The transform named at `key`. The captures its path rewrite uses must be bound by this
/// route's template.
fn transform(
    r: &RouteConfig,
    name: &Option<String>,
    key: &str,
    sec: &mut Section<'_, '_>,
    env: &Env<'_>,
) -> Option<Arc<Transform>> {
    let name = name.as_ref()?;
    let Some(t) = env.transforms.get(name) else {
        if !env.transform_names.contains(&name.as_str()) {
            sec.error(key, format!("no transform named `{name}`"));
        }
        return None;
    };
    if let Some(plan) = &t.request {
        let bound = r
            .matcher
            .path_template
            .as_deref()
            .map(template_names)
            .unwrap_or_default();
        for c in plan.capture_names() {
            if !bound.iter().any(|b| b == c) {
                sec.error(
                    key,
                    format!("transform `{name}` uses `{{{c}}}`, which this route's `path_template` does not capture"),
                );
            }
        }
    }
    Some(t.clone())
}

/// The capture names of a `path_template` (`/orders/{id}/{*rest}` -> id, rest).
fn template_names(t: &str) -> Vec<String> {
    t.split('{')
        .skip(1)
        .filter_map(|p| p.split_once('}'))
        .map(|(n, _)| n.trim_start_matches('*').to_string())
        .collect()
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
