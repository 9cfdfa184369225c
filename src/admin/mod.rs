//! The admin listener (loopback by default): metrics, health, the active config, and reload.
//! Reading is open to whoever can reach the socket; anything that changes state needs the
//! bearer token from the environment variable named by `admin.token_env`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod audit;
pub mod contract;
pub mod dlq;
pub mod history;
pub mod host;
pub mod rollouts;

use crate::error::problem;
use crate::gateway::reload;
use crate::gateway::shared::Shared;
use crate::pipeline::body::ResponseBody;
use crate::server::io::IdleIo;
use host::host_allowed;

/// An admin connection with no byte either way for this long is closed (a Prometheus scraper's
/// kept-alive connection, at the usual 15-30 s interval, stays open).
const ADMIN_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(audit::Peer(peer));
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        });
        // hyper's header-read timeout times a kept-alive connection's next head only from its
        // first byte (vendor/hyper); a connection that sends nothing is closed once idle.
        let io = IdleIo::new(tcp, ADMIN_IDLE_TIMEOUT, None);
        let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ResponseBody> {
    if !host_allowed(&req, &shared.snapshot.load().config.admin.allowed_hosts) {
        // 421 rather than 403: no credential would help; this server simply does not answer
        // for that name.
        return problem(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected-request",
            "the admin API answers only to IP addresses, localhost and admin.allowed_hosts",
            None,
        );
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let mut body = shared.metrics().render();
            // Rendered from each route's drift window at the scrape, so that a field that left
            // the top has no series left behind.
            let snap = shared.snapshot.load();
            body.push_str(&crate::pipeline::drift::prometheus(
                snap.router
                    .routes()
                    .iter()
                    .filter_map(|r| r.migration.as_ref()?.shadow.as_ref())
                    .map(|s| (s.route(), s.drift())),
            ));
            text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if shared.ready.load(Ordering::Acquire) {
                // Upstream health is shown, not judged: failing readiness because a backend is
                // down would take every ficus instance out of its load balancer at once.
                let snap = shared.snapshot.load();
                let upstreams: serde_json::Map<String, serde_json::Value> = snap
                    .upstreams
                    .values()
                    .map(|u| {
                        let st = u.endpoints.status();
                        let up = st.iter().filter(|e| e.healthy && !e.ejected).count();
                        (
                            u.name.to_string(),
                            serde_json::json!({ "available": up, "endpoints": st }),
                        )
                    })
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ready", "upstreams": upstreams}),
                )
            } else {
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    "ficus is starting or draining",
                    None,
                )
            }
        }
        (&Method::GET, "/admin/config") => {
            let status = shared.status.lock().clone();
            json(StatusCode::OK, &status)
        }
        (&Method::GET, "/admin/upstreams") => json(StatusCode::OK, &upstreams(shared)),
        (&Method::GET, "/admin/diffs") => {
            let wanted = query_param(req.uri().query(), "route");
            let snap = shared.snapshot.load();
            let diffs: Vec<_> = snap
                .router
                .routes()
                .iter()
                .filter(|r| wanted.as_deref().is_none_or(|w| w == &*r.name))
                .filter_map(|r| r.migration.as_ref()?.shadow.as_ref())
                .flat_map(|s| s.recent())
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "diffs": diffs }))
        }
        (&Method::GET, "/admin/noise") => {
            per_shadow(shared, &req, |s| serde_json::to_value(s.noise_report()))
        }
        (&Method::GET, "/admin/drift") => {
            per_shadow(shared, &req, |s| serde_json::to_value(s.drift_report()))
        }
        (&Method::GET, "/admin/routes") => {
            let snap = shared.snapshot.load();
            let routes: Vec<serde_json::Value> = snap
                .router
                .routes()
                .iter()
                .enumerate()
                .map(|(i, r)| r.describe(i))
                .collect();
            let warnings: Vec<String> = snap.warnings.iter().map(ToString::to_string).collect();
            json(
                StatusCode::OK,
                &serde_json::json!({ "version": snap.version, "routes": routes, "warnings": warnings }),
            )
        }
        (&Method::GET, "/admin/migration") => json(StatusCode::OK, &migration(shared)),
        (&Method::GET, "/admin/contract") => contract::report(shared, req.uri().query()),
        (&Method::GET, "/admin/history") => history::history(shared, req.uri().query()),
        (&Method::GET, "/admin/ui") => {
            let mut r = text(StatusCode::OK, "text/html; charset=utf-8", UI.to_string());
            // Everything is inline and same-origin: nothing else may load.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            );
            r
        }
        (&Method::POST, p) if legacy_rollout_path(p).is_some() => {
            let name = path_segment(legacy_rollout_path(p).unwrap_or_default());
            let who = match authorize(shared, &req) {
                Ok(who) => who,
                Err((who, resp)) => return denied(shared, "rollout", Some(name), who, resp),
            };
            rollout_action(shared, &name, req, who).await
        }
        (&Method::GET, "/admin/dlq") => dlq::list(shared, req.uri().query()).await,
        (&Method::POST, p) if dlq_action(p).is_some() => {
            let Some((id, action)) = dlq_action(p) else {
                return problem(StatusCode::NOT_FOUND, "not-found", "no admin endpoint here", None);
            };
            let (id, action) = (id.to_string(), action);
            let who = match authorize(shared, &req) {
                Ok(who) => who,
                Err((who, resp)) => return denied(shared, &format!("dlq.{action}"), Some(id), who, resp),
            };
            dlq::act(shared, &id, action, who).await
        }
        (_, p) if dlq_action(p).is_some() => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this method is not allowed here",
            None,
        ),
        (&Method::GET, "/admin/rollouts") => rollouts::list(shared, req.uri().query()),
        (&Method::POST, p) if rollouts::parse_action_path(p).is_some() => {
            let Some((route, action)) = rollouts::parse_action_path(p) else {
                return problem(StatusCode::NOT_FOUND, "not-found", "no admin endpoint here", None);
            };
            let (route, action) = (path_segment(route), action.to_string());
            let who = match authorize(shared, &req) {
                Ok(who) => who,
                Err((who, resp)) => {
                    return denied(shared, &format!("rollout.{action}"), Some(route), who, resp)
                }
            };
            rollouts::act(shared, &route, &action, req, who).await
        }
        (_, p) if rollouts::parse_action_path(p).is_some_and(|(_, a)| rollouts::ACTIONS.contains(&a)) => {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this method is not allowed here",
                None,
            )
        }
        (&Method::POST, "/admin/reload") => {
            let who = match authorize(shared, &req) {
                Ok(who) => who,
                Err((who, resp)) => return denied(shared, "reload", None, who, resp),
            };
            match reload::reload_by(shared, "admin api", who).await {
                Ok(_) => {
                    let status = shared.status.lock().clone();
                    json(StatusCode::OK, &status)
                }
                Err(errors) => {
                    let doc = serde_json::json!({
                        "type": "urn:ficus:problem:config-invalid",
                        "title": "Unprocessable Content",
                        "status": 422,
                        "detail": "the new config was refused; the previous config keeps serving",
                        "problems": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    });
                    let mut r = json(StatusCode::UNPROCESSABLE_ENTITY, &doc);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/problem+json"),
                    );
                    r
                }
            }
        }
        (
            _,
            "/metrics" | "/healthz" | "/readyz" | "/admin/config" | "/admin/upstreams" | "/admin/routes"
            | "/admin/diffs" | "/admin/migration" | "/admin/ui" | "/admin/reload" | "/admin/dlq"
            | "/admin/contract" | "/admin/noise" | "/admin/drift" | "/admin/rollouts" | "/admin/history",
        ) => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this method is not allowed here",
            None,
        ),
        _ => problem(StatusCode::NOT_FOUND, "not-found", "no admin endpoint here", None),
    }
}

/// `/admin/dlq/{id}/replay` or `/admin/dlq/{id}/drop`: the write id and the action.
fn dlq_action(path: &str) -> Option<(&str, &'static str)> {
    let rest = path.strip_prefix("/admin/dlq/")?;
    let (id, action) = rest.split_once('/')?;
    let action = match action {
        "replay" => "replay",
        "drop" => "drop",
        _ => return None,
    };
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some((id, action))
}

/// `/admin/routes/{name}/rollout`: the name (not empty; `/admin/routes/rollout` has none).
fn legacy_rollout_path(p: &str) -> Option<&str> {
    let name = p.strip_prefix("/admin/routes/")?.strip_suffix("/rollout")?;
    (!name.is_empty()).then_some(name)
}

/// A query parameter, percent-decoded (`?route=a%20b` names `a b`, as the page encodes it).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A percent-encoded path segment, decoded (`+` stays `+`: it means a space only in queries).
pub fn path_segment(segment: &str) -> String {
    let q = format!("s={}", segment.replace('+', "%2B"));
    query_param(Some(&q), "s").unwrap_or_default()
}

/// `?route=NAME`: that shadowed route's `report`, or 404; without it, every shadowed route's,
/// as `{"routes": [...]}`.
fn per_shadow(
    shared: &Shared,
    req: &Request<Incoming>,
    report: impl Fn(&crate::pipeline::shadow::Shadow) -> serde_json::Result<serde_json::Value>,
) -> Response<ResponseBody> {
    let wanted = query_param(req.uri().query(), "route");
    let snap = shared.snapshot.load();
    let shadows = snap
        .router
        .routes()
        .iter()
        .filter(|r| wanted.as_deref().is_none_or(|w| w == &*r.name))
        .filter_map(|r| r.migration.as_ref()?.shadow.as_ref());
    let mut reports: Vec<serde_json::Value> = shadows.filter_map(|s| report(s).ok()).collect();
    match wanted {
        None => json(StatusCode::OK, &serde_json::json!({ "routes": reports })),
        Some(_) if !reports.is_empty() => json(StatusCode::OK, &reports.swap_remove(0)),
        Some(_) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no shadowed route with that name",
            None,
        ),
    }
}

/// The status page: static HTML and JS in the binary, reading the JSON endpoints above.
const UI: &str = include_str!("ui.html");

/// Per migration route: the split, the rollout stage and its guards' measures, recent diffs.
fn migration(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let routes: Vec<serde_json::Value> = snap
        .router
        .routes()
        .iter()
        .filter_map(|r| {
            let m = r.migration.as_ref()?;
            Some(serde_json::json!({
                "route": &*r.name,
                "legacy": &*r.upstream.name,
                "modern": &*m.modern.name,
                "modern_percent": m.modern_percent(),
                "rollout": m.rollout.as_ref().map(|ro| ro.status()),
                "last_minute": { "legacy": m.legacy_stats.summary(), "modern": m.modern_stats.summary() },
                "shadow": m.shadow.as_ref().map(|s| {
                    let (matched, mismatched) = s.totals();
                    let compared = matched + mismatched;
                    serde_json::json!({
                        "compared": compared,
                        "mismatched": mismatched,
                        "diff_rate": if compared == 0 { 0.0 } else { mismatched as f64 / compared as f64 },
                    })
                }),
                "recent_diffs": m.shadow.as_ref().map_or(0, |s| s.recent().len()),
            }))
        })
        .collect();
    serde_json::json!({ "routes": routes })
}

#[derive(serde::Deserialize)]
struct RolloutAction {
    action: String,
    #[serde(default)]
    percent: Option<f64>,
}

/// A refused admin write, audited before its answer goes out.
fn denied(
    shared: &Shared,
    action: &str,
    target: Option<String>,
    who: audit::Who,
    resp: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let mut e = audit::Entry::new(action, "admin api", who, shared.snapshot.load().version);
    e.target = target;
    e.outcome = audit::Outcome::Denied;
    e.reason = Some(resp.status().to_string());
    audit::record(shared, &e);
    resp
}

/// A rollout change, audited whatever its outcome.
async fn rollout_action(
    shared: &Shared,
    name: &str,
    req: Request<Incoming>,
    who: audit::Who,
) -> Response<ResponseBody> {
    let version = shared.snapshot.load().version;
    let mut entry = audit::Entry::new("rollout", "admin api", who, version);
    entry.target = Some(name.to_string());
    let resp = apply_rollout_action(shared, name, req, &mut entry).await;
    audit::record_answer(shared, entry, &resp);
    resp
}

async fn apply_rollout_action(
    shared: &Shared,
    name: &str,
    req: Request<Incoming>,
    entry: &mut audit::Entry,
) -> Response<ResponseBody> {
    use http_body_util::BodyExt as _;
    let bad = |detail: &str| problem(StatusCode::BAD_REQUEST, "invalid-rollout-action", detail, None);
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("the body must be a small JSON object"),
    };
    let Ok(action) = serde_json::from_slice::<RolloutAction>(&body) else {
        return bad(r#"send {"action": "pause" | "resume" | "set", "percent": 0-100}"#);
    };
    let snap = shared.snapshot.load();
    let Some(route) = snap.router.routes().iter().find(|r| &*r.name == name) else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no route with that name",
            None,
        );
    };
    let Some(ro) = route.migration.as_ref().and_then(|m| m.rollout.as_ref()) else {
        return problem(
            StatusCode::CONFLICT,
            "no-rollout",
            "this route has no rollout configured",
            None,
        );
    };
    entry.action = format!("rollout.{}", action.action);
    let percent_before = ro.status().percent;
    use crate::pipeline::rollout::Action;
    let order = match (action.action.as_str(), action.percent) {
        ("pause", _) => Action::Pause,
        ("resume", _) => Action::Resume,
        ("set", Some(p)) if (0.0..=100.0).contains(&p) => Action::Set(p),
        _ => return bad(r#"action is "pause", "resume" or "set" (with "percent" from 0 to 100)"#),
    };
    // Pause, resume and set cannot fail; only an approval can find nothing to approve.
    let _ = ro.act(order).await;
    let status = ro.status();
    entry.detail =
        Some(serde_json::json!({ "percent_before": percent_before, "percent_after": status.percent }));
    json(StatusCode::OK, &status)
}

/// Each upstream of the active snapshot: endpoints and circuit-breaker state.
fn upstreams(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let list: Vec<serde_json::Value> = snap
        .upstreams
        .values()
        .map(|u| {
            serde_json::json!({
                "name": &*u.name,
                "balance": u.endpoints.policy(),
                "endpoints": u.endpoints.status(),
                "circuit_breaker": u.breaker.as_ref().map(|b| b.status()),
            })
        })
        .collect();
    serde_json::json!({ "version": snap.version, "upstreams": list })
}

/// Compares digests, not the tokens, in constant time: neither the length nor the content of
/// the expected token shows in the response time.
fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    aws_lc_rs::constant_time::verify_slices_are_equal(&a, &b).is_ok()
}

/// Who is calling (for the audit log), and whether they may: the response when not.
#[allow(clippy::result_large_err)]
fn authorize(
    shared: &Shared,
    req: &Request<Incoming>,
) -> Result<audit::Who, (audit::Who, Response<ResponseBody>)> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = audit::Who::admin(req.extensions().get::<audit::Peer>().map(|p| p.0), given);
    let Some(expected) = &shared.admin_token else {
        return Err((
            who,
            problem(
                StatusCode::FORBIDDEN,
                "admin-token-not-configured",
                "state-changing admin calls are disabled: set the admin token environment variable",
                None,
            ),
        ));
    };
    match given {
        Some(t) if token_matches(t, expected) => Ok(who),
        _ => {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
                None,
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ficus-admin\""),
            );
            Err((who, r))
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<ResponseBody> {
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    text(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_accepts_only_the_exact_token() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }

    #[test]
    fn route_names_are_percent_decoded_in_queries_and_paths() {
        assert_eq!(
            query_param(Some("route=a%20b&x=1"), "route").as_deref(),
            Some("a b")
        );
        assert_eq!(
            query_param(Some("x=1&route=caf%C3%A9"), "route").as_deref(),
            Some("café")
        );
        assert_eq!(query_param(Some("x=1"), "route"), None);
        assert_eq!(query_param(None, "route"), None);
        assert_eq!(path_segment("a%2Fb+c"), "a/b+c");
        assert_eq!(
            legacy_rollout_path("/admin/routes/orders/rollout"),
            Some("orders")
        );
        assert_eq!(legacy_rollout_path("/admin/routes/rollout"), None);
        assert_eq!(legacy_rollout_path("/admin/routes//rollout"), None);
    }
}
