//! `GET /admin/rollouts` (every migration route's rollout: state, stage, baseline analysis and
//! decision history) and `POST /admin/rollouts/{route}/approve|pause|resume|rollback`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{audit, json};
use crate::error::problem;
use crate::gateway::shared::Shared;
use crate::pipeline::body::ResponseBody;
use crate::pipeline::rollout::{Action, RolloutError};
use crate::pipeline::route::Route;

/// The operator actions, as the last path segment names them.
pub const ACTIONS: [&str; 4] = ["approve", "pause", "resume", "rollback"];

/// `/admin/rollouts/{route}/{action}` split, when the path has that shape.
pub fn parse_action_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/admin/rollouts/")?;
    let (route, action) = rest.rsplit_once('/')?;
    (!route.is_empty() && !route.contains('/')).then_some((route, action))
}

/// One route's object. A migration route without a rollout is `idle` at its fixed percent.
fn describe(r: &Route) -> Option<serde_json::Value> {
    let m = r.migration.as_ref()?;
    Some(match &m.rollout {
        Some(ro) => serde_json::to_value(ro.view()).unwrap_or_default(),
        None => serde_json::json!({
            "route": &*r.name,
            "state": "idle",
            "percent": m.modern_percent(),
            "stage": null,
            "analysis": null,
            "history": [],
        }),
    })
}

pub fn list(shared: &Shared, query: Option<&str>) -> Response<ResponseBody> {
    let wanted = super::query_param(query, "route");
    let snap = shared.snapshot.load();
    let routes = snap.router.routes();
    match wanted {
        Some(name) => match routes.iter().find(|r| *r.name == *name).and_then(|r| describe(r)) {
            Some(v) => json(StatusCode::OK, &v),
            None => not_found(),
        },
        None => {
            let all: Vec<_> = routes.iter().filter_map(|r| describe(r)).collect();
            json(StatusCode::OK, &serde_json::json!({ "routes": all }))
        }
    }
}

fn not_found() -> Response<ResponseBody> {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "no migration route with that name",
        None,
    )
}

/// An operator action on a route's rollout (the caller is authorized), audited whatever its
/// outcome.
pub async fn act(
    shared: &Shared,
    route: &str,
    action: &str,
    _req: Request<Incoming>,
    who: audit::Who,
) -> Response<ResponseBody> {
    let version = shared.snapshot.load().version;
    let mut entry = audit::Entry::new(format!("rollout.{action}"), "admin api", who, version);
    entry.target = Some(route.to_string());
    let resp = apply(shared, route, action, &mut entry).await;
    audit::record_answer(shared, entry, &resp);
    resp
}

async fn apply(
    shared: &Shared,
    name: &str,
    action: &str,
    entry: &mut audit::Entry,
) -> Response<ResponseBody> {
    let action = match action {
        "approve" => Action::Approve,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "rollback" => Action::Rollback,
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "rollout actions are approve, pause, resume and rollback",
                None,
            )
        }
    };
    let snap = shared.snapshot.load();
    let Some(route) = snap.router.routes().iter().find(|r| &*r.name == name) else {
        return not_found();
    };
    let Some(ro) = route.migration.as_ref().and_then(|m| m.rollout.as_ref()) else {
        return problem(
            StatusCode::CONFLICT,
            "no-rollout",
            "this route has no rollout configured",
            None,
        );
    };
    let before = ro.view();
    match ro.act(action).await {
        Ok(()) => {}
        Err(e @ RolloutError::NothingToApprove) => {
            entry.reason = Some(e.to_string());
            return problem(StatusCode::CONFLICT, "nothing-to-approve", &e.to_string(), None);
        }
    }
    let after = ro.view();
    entry.detail = Some(serde_json::json!({
        "percent_before": before.percent,
        "percent_after": after.percent,
        "state_before": before.state,
        "state_after": after.state,
    }));
    json(StatusCode::OK, &after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_paths_split_into_route_and_action() {
        assert_eq!(
            parse_action_path("/admin/rollouts/orders/approve"),
            Some(("orders", "approve"))
        );
        assert_eq!(parse_action_path("/admin/rollouts/orders"), None);
        assert_eq!(parse_action_path("/admin/rollouts//approve"), None);
        assert_eq!(parse_action_path("/admin/rollouts/a/b/approve"), None);
    }
}
