//! `GET /admin/contract[?route=NAME]`: the JSON shape each side of a route answers with, as
//! JSON Schema, its status codes, and the differences that would break a legacy client.

use http::StatusCode;

use super::json;
use crate::error::problem;
use crate::gateway::shared::Shared;
use crate::pipeline::body::ResponseBody;

pub fn report(shared: &Shared, query: Option<&str>) -> http::Response<ResponseBody> {
    let wanted = super::query_param(query, "route");
    let snap = shared.snapshot.load();
    let routes = snap.router.routes();
    let Some(name) = wanted else {
        let all: Vec<serde_json::Value> = routes
            .iter()
            .filter_map(|r| r.contract.as_ref().map(|c| c.report()))
            .collect();
        return json(StatusCode::OK, &serde_json::json!({ "routes": all }));
    };
    let Some(route) = routes.iter().find(|r| *r.name == *name) else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no route with that name",
            None,
        );
    };
    match &route.contract {
        Some(c) => json(StatusCode::OK, &c.report()),
        None => problem(
            StatusCode::NOT_FOUND,
            "no-contract",
            "this route learns no contract: give it a migration `shadow` or a `contract` section",
            None,
        ),
    }
}
