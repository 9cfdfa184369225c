//! `GET /admin/dlq?route=NAME[&limit=N]`, `POST /admin/dlq/{id}/replay` and `POST /admin/dlq/{id}/drop`:
//! the dead-lettered writes of `buffer_writes` routes (see `pipeline::writes`).

use http::{Response, StatusCode};

use super::{audit, json};
use crate::error::problem;
use crate::gateway::shared::Shared;
use crate::pipeline::body::ResponseBody;
use crate::pipeline::writes::admin::{self as dlq, DlqError};

/// Dead-lettered writes listed per call without `?limit=`, and at most with it.
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 500;

fn failed(e: &DlqError) -> Response<ResponseBody> {
    match e {
        DlqError::UnknownRoute(_) | DlqError::NotFound => {
            problem(StatusCode::NOT_FOUND, "not-found", &e.to_string(), None)
        }
        DlqError::Store(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "write-queue-unavailable",
            &e.to_string(),
            None,
        ),
    }
}

fn no_queue() -> Response<ResponseBody> {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "no route buffers writes (`buffer_writes` and `queue_store`)",
        None,
    )
}

pub async fn list(shared: &Shared, query: Option<&str>) -> Response<ResponseBody> {
    let snap = shared.snapshot.load_full();
    let Some(q) = &snap.writes else { return no_queue() };
    let param = |name: &str| {
        query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let route = param("route");
    let limit = match param("limit").map(|l| l.parse::<usize>()) {
        None => LIST_DEFAULT,
        Some(Ok(n)) if (1..=LIST_MAX).contains(&n) => n,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-limit",
                &format!("`limit` must be a number from 1 to {LIST_MAX}"),
                None,
            )
        }
    };
    let Some(route) = route else {
        return problem(
            StatusCode::BAD_REQUEST,
            "route-required",
            "name the route: /admin/dlq?route=NAME",
            None,
        );
    };
    match dlq::list(q, &route, &snap.redact, limit).await {
        Ok(doc) => json(StatusCode::OK, &doc),
        Err(e) => failed(&e),
    }
}

/// `replay` or `drop` of write `id`, audited whatever its outcome.
pub async fn act(shared: &Shared, id: &str, action: &str, who: audit::Who) -> Response<ResponseBody> {
    let snap = shared.snapshot.load_full();
    let mut entry = audit::Entry::new(format!("dlq.{action}"), "admin api", who, snap.version);
    entry.target = Some(id.to_string());
    let result = match (&snap.writes, action) {
        (None, _) => Err(None),
        (Some(q), "replay") => dlq::replay(q, id).await.map_err(Some),
        (Some(q), _) => dlq::drop(q, id).await.map_err(Some),
    };
    let resp = match &result {
        Ok(route) => {
            entry.detail = Some(serde_json::json!({ "route": route }));
            let state = if action == "replay" { "queued" } else { "dropped" };
            json(
                StatusCode::OK,
                &serde_json::json!({ "id": id, "route": route, "state": state }),
            )
        }
        Err(None) => no_queue(),
        Err(Some(e)) => failed(e),
    };
    if !resp.status().is_success() {
        entry.outcome = audit::Outcome::Error;
        entry.reason = Some(resp.status().to_string());
    }
    audit::record(shared, &entry);
    resp
}
