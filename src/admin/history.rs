//! `GET /admin/history[?route=NAME]`: each route's last hour in 10-second steps (see
//! `pipeline::history`), which the migration page plots.

use http::StatusCode;

use super::json;
use crate::error::problem;
use crate::gateway::shared::Shared;
use crate::pipeline::body::ResponseBody;
use crate::pipeline::history::{SLOTS, STEP_SECS};
use crate::pipeline::route::Route;

pub fn history(shared: &Shared, query: Option<&str>) -> http::Response<ResponseBody> {
    let wanted = super::query_param(query, "route");
    let snap = shared.snapshot.load();
    let routes = snap.router.routes();
    match wanted {
        Some(name) => match routes.iter().find(|r| *r.name == *name) {
            Some(r) => json(StatusCode::OK, &of_route(r)),
            None => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "no route with that name",
                None,
            ),
        },
        None => json(
            StatusCode::OK,
            &serde_json::json!({ "routes": routes.iter().map(|r| of_route(r)).collect::<Vec<_>>() }),
        ),
    }
}

fn of_route(r: &Route) -> serde_json::Value {
    serde_json::json!({
        "route": &*r.name,
        "step_seconds": STEP_SECS,
        "window_seconds": STEP_SECS * SLOTS,
        "migration": r.migration.is_some(),
        "points": r.history.points(),
    })
}
