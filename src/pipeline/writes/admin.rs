//! What the admin API does with dead-lettered writes: list them (bodies and credentials
//! redacted), send one back to its queue, or drop it.

use base64::Engine as _;

use super::store::{self, State, StoreError, Stored};
use super::WriteQueue;
use crate::telemetry::redact::{Redactor, MARKER};

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no route named `{0}` buffers writes")]
    UnknownRoute(String),
    #[error("no dead-lettered write with this id")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The route's dead-lettered writes, oldest first, at most `limit`.
pub async fn list(
    q: &WriteQueue,
    route: &str,
    redact: &Redactor,
    limit: usize,
) -> Result<serde_json::Value, DlqError> {
    let Some(r) = q.route(route) else {
        return Err(DlqError::UnknownRoute(route.to_string()));
    };
    // What ficus itself set for the upstream (credentials, internal JWT, vouched-for claims,
    // client-certificate headers) is in the stored request too: never shown.
    let own: Vec<http::HeaderName> = r
        .identity
        .as_ref()
        .map(|i| i.owned_header_names().cloned().collect())
        .unwrap_or_default();
    let hidden = |name: &str| {
        redact.header(name)
            || name.eq_ignore_ascii_case("authorization")
            || own.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
    };
    let v: redis::Value = q
        .store
        .run(
            redis::cmd("XRANGE")
                .arg(q.store.dlq_key(route))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit),
        )
        .await?;
    let mut out = Vec::new();
    for e in store::entries(&v) {
        let stored: Option<Stored> = store::field(&e, "w").and_then(|w| serde_json::from_str(w).ok());
        let Some(s) = stored else {
            out.push(serde_json::json!({ "entry": e.0, "unreadable": true }));
            continue;
        };
        let status = q.store.status(&s.id).await?;
        out.push(serde_json::json!({
            "id": s.id,
            "entry": e.0,
            "dead_lettered_at": store::id_ms(&e.0).map(store::rfc3339),
            "queued_at": store::rfc3339(s.queued_at),
            "method": s.method,
            "path": redacted_path(&s.path, redact),
            "idempotency_key": s.idempotency_key,
            "headers": s.headers.iter().map(|h| {
                let value = if hidden(&h.n) { MARKER.to_string() } else {
                    h.v.clone().unwrap_or_else(|| MARKER.to_string())
                };
                serde_json::json!([h.n, value])
            }).collect::<Vec<_>>(),
            "body": redacted_body(&s, redact),
            "reason": status.as_ref().and_then(|st| st.dead_letter_reason.clone()),
            "attempts": status.as_ref().map_or(0, |st| st.attempts),
            "errors": status.as_ref().map(|st| st.errors.iter().map(|x| serde_json::json!({
                "at": store::rfc3339(x.at),
                "attempt": x.attempt,
                "status": x.status,
                "error": x.error,
            })).collect::<Vec<_>>()).unwrap_or_default(),
        }));
    }
    Ok(serde_json::json!({ "route": route, "count": out.len(), "writes": out }))
}

fn redacted_path(path: &str, redact: &Redactor) -> String {
    match path.split_once('?') {
        Some((p, q)) => format!("{p}?{}", redact.query(q)),
        None => path.to_string(),
    }
}

/// A JSON body with every leaf value replaced by its type, and the `redact.json_paths` fields
/// marked: the shape helps to find what went wrong, the values are personal data. Other bodies
/// show only their size.
fn redacted_body(s: &Stored, redact: &Redactor) -> serde_json::Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.body.as_bytes())
        .unwrap_or_default();
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return serde_json::json!({ "bytes": bytes.len(), "content": MARKER });
    };
    for p in &redact.json_paths {
        let _ = p.for_each_mut::<()>(&mut doc, &mut |v| {
            *v = serde_json::Value::from(MARKER);
            Ok(())
        });
    }
    shape(&mut doc);
    serde_json::json!({ "bytes": bytes.len(), "json": doc })
}

fn shape(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => m.values_mut().for_each(shape),
        Value::Array(a) => a.iter_mut().for_each(shape),
        Value::String(s) if s == MARKER => {}
        other => *other = Value::from(format!("<{}>", crate::translate::path::kind(other))),
    }
}

/// Finds write `id` in its route's dead-letter stream.
async fn find(q: &WriteQueue, id: &str) -> Result<(store::Status, String, Stored), DlqError> {
    let status = q.store.status(id).await?.ok_or(DlqError::NotFound)?;
    let entry = match (&status.state, &status.dlq_entry) {
        (State::DeadLettered, Some(e)) => e.clone(),
        _ => return Err(DlqError::NotFound),
    };
    let v: redis::Value = q
        .store
        .run(
            redis::cmd("XRANGE")
                .arg(q.store.dlq_key(&status.route))
                .arg(&entry)
                .arg(&entry),
        )
        .await?;
    let stored = store::entries(&v)
        .into_iter()
        .next()
        .and_then(|e| serde_json::from_str::<Stored>(store::field(&e, "w")?).ok())
        .ok_or(DlqError::NotFound)?;
    Ok((status, entry, stored))
}

/// Puts a dead-lettered write back at the end of its partition's queue, with its attempts
/// reset and its age counted from now (its error history is kept). Returns the route.
pub async fn replay(q: &WriteQueue, id: &str) -> Result<String, DlqError> {
    let (mut status, entry, mut stored) = find(q, id).await?;
    let route = q
        .route(&status.route)
        .ok_or_else(|| DlqError::UnknownRoute(status.route.clone()))?;
    let Some(w) = &route.buffer_writes else {
        return Err(DlqError::UnknownRoute(status.route.clone()));
    };
    stored.queued_at = store::now_ms();
    stored.partition %= q.cfg.partitions.max(1);
    status.state = State::Queued;
    status.attempts = 0;
    status.queued_at = stored.queued_at;
    status.dlq_entry = None;
    status.dead_letter_reason = None;
    status.updated_at = store::now_ms();
    q.store.put_status(id, &status, q.status_ttl(w)).await?;
    q.store.enqueue(&stored).await?;
    q.store
        .run::<i64>(redis::cmd("XDEL").arg(q.store.dlq_key(&stored.route)).arg(&entry))
        .await?;
    w.metrics.queued.increment(1);
    Ok(stored.route)
}

/// Removes a dead-lettered write for good; its status shows `dropped`. Returns the route.
pub async fn drop(q: &WriteQueue, id: &str) -> Result<String, DlqError> {
    let (mut status, entry, stored) = find(q, id).await?;
    q.store
        .run::<i64>(redis::cmd("XDEL").arg(q.store.dlq_key(&stored.route)).arg(&entry))
        .await?;
    status.state = State::Dropped;
    status.dlq_entry = None;
    status.updated_at = store::now_ms();
    let ttl = q.cfg.status_ttl;
    q.store.put_status(id, &status, ttl).await?;
    Ok(stored.route)
}
