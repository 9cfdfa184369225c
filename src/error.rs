//! Every error ficus itself answers with, and the one place that maps them to HTTP.
//!
//! Responses are RFC 9457 `application/problem+json`; the `type` URN is stable so clients and
//! dashboards can key on it.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::identity::client_cert::ClientCertError;
use crate::pipeline::body::ResponseBody;
use crate::pipeline::normalize::PathError;

/// nginx's "client closed request": a status for logs and metrics, never sent.
pub fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header and the request authority disagree")]
    ConflictingHost,
    #[error("the request path cannot be normalised safely: {0}")]
    BadPath(#[from] PathError),
    #[error("request headers exceed the {limit}-byte limit")]
    HeadersTooLarge { limit: u64 },
    #[error("the request body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("the client stopped sending the request body")]
    BodyTimeout,
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// The client went away before its request was answered; logged as 499 (nginx's code),
    /// never sent, and never counted against an upstream.
    #[error("the client closed the connection before the request was answered")]
    ClientClosed,
    #[error("no route matches this request")]
    NoRoute,
    #[error("upstream `{upstream}` could not be reached: {reason}")]
    UpstreamUnreachable { upstream: String, reason: String },
    #[error("upstream `{upstream}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("upstream `{upstream}` failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("authentication failed: {reason}")]
    Unauthenticated { reason: String, invalid: bool },
    #[error("the token lacks a required scope ({scope})")]
    InsufficientScope { scope: String },
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error(transparent)]
    ClientCert(#[from] crate::identity::client_cert::ClientCertError),
    #[error("the identity provider is unavailable: {0}")]
    IdentityUnavailable(String),
    #[error("the token for the upstream could not be made: {0}")]
    InternalToken(String),
    #[error("this route requires an Idempotency-Key header")]
    IdempotencyKeyMissing,
    #[error("the Idempotency-Key must be 1 to 255 visible ASCII characters")]
    IdempotencyKeyInvalid,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInFlight,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("an Idempotency-Key on this route needs a verified caller (a token or a client certificate) or the route's scope key")]
    IdempotencyScopeMissing,
    #[error("the idempotency store is unavailable: {0}")]
    IdempotencyStore(String),
    #[error("the backend's answer could not be translated: {reason}")]
    TranslationFailed { reason: String },
    #[error("the request could not be translated for the backend: {0}")]
    RequestTranslation(String),
    #[error("the request body does not match the route's schema ({} problem(s))", .0.len())]
    SchemaViolation(Vec<crate::translate::validate::Violation>),
    #[error("the circuit breaker for upstream `{upstream}` is open; retry in {retry_after_secs} s")]
    CircuitOpen { upstream: String, retry_after_secs: u64 },
    /// The upstream's concurrency limit and queue are full, or the wait in the queue ran out.
    #[error("upstream `{upstream}` is at its concurrency limit ({reason}); retry shortly")]
    UpstreamOverloaded { upstream: String, reason: &'static str },
    #[error("rate limit `{policy}` exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        policy: std::sync::Arc<str>,
        retry_after_secs: u64,
        /// `RateLimit-Policy` / `RateLimit` (and legacy) headers of the decisions made.
        headers: Box<http::HeaderMap>,
    },
    /// A write had to be queued (`buffer_writes`) and the queue could not take it.
    #[error("the upstream is unreachable and the write could not be queued: {0}")]
    WriteQueueUnavailable(String),
    /// No queued write with this id, or not the caller's: the same answer, so ids can't be probed.
    #[error("no queued write with this id")]
    WriteNotFound,
    /// A bug: the request's handling panicked. The message is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::pipeline::body::BodyError> for ProxyError {
    fn from(e: crate::pipeline::body::BodyError) -> Self {
        use crate::pipeline::body::{BodyError, ClientFault};
        match e {
            BodyError::TooLarge(limit) => Self::BodyTooLarge { limit },
            BodyError::Timeout => Self::BodyTimeout,
            BodyError::Read(e) => match ClientFault::of(&e) {
                ClientFault::Gone => Self::ClientClosed,
                _ => Self::ClientBody(e.to_string()),
            },
        }
    }
}

impl ProxyError {
    /// A request that could not be put in the backend's dialect: 400, or 413 past the plan's
    /// bound. The one mapping for live traffic; the shadow copy and `ficus translate` report text.
    pub fn request_translation(e: crate::translate::TranslateError) -> Self {
        match e {
            crate::translate::TranslateError::TooLarge { limit } => Self::BodyTooLarge { limit },
            other => Self::RequestTranslation(other.to_string()),
        }
    }

    /// A backend's answer that could not be put in the client's dialect: 502.
    pub fn response_translation(e: crate::translate::TranslateError) -> Self {
        Self::TranslationFailed {
            reason: e.to_string(),
        }
    }

    /// The answer to a client body that broke; `limit` is the listener's body limit.
    pub fn client_fault(fault: crate::pipeline::body::ClientFault, limit: u64, detail: String) -> Self {
        use crate::pipeline::body::ClientFault;
        match fault {
            ClientFault::TooLarge => Self::BodyTooLarge { limit },
            ClientFault::Timeout => Self::BodyTimeout,
            ClientFault::Malformed => Self::ClientBody(detail),
            ClientFault::Gone => Self::ClientClosed,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::DuplicateHost | Self::ConflictingHost | Self::BadPath(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::ClientClosed => client_closed(),
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::UpstreamUnreachable { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::CircuitOpen { .. }
            | Self::UpstreamOverloaded { .. }
            | Self::IdempotencyStore(_)
            | Self::WriteQueueUnavailable(_)
            | Self::IdentityUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::WriteNotFound => StatusCode::NOT_FOUND,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ClientCert(ClientCertError::Missing) => StatusCode::UNAUTHORIZED,
            Self::ClientCert(ClientCertError::NotAllowed { .. }) => StatusCode::FORBIDDEN,
            Self::IdempotencyKeyMissing | Self::IdempotencyKeyInvalid | Self::IdempotencyScopeMissing => {
                StatusCode::BAD_REQUEST
            }
            Self::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            Self::InternalToken(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TranslationFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::RequestTranslation(_) | Self::SchemaViolation(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable last part of the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingHost => "missing-host",
            Self::DuplicateHost => "duplicate-host",
            Self::ConflictingHost => "conflicting-host",
            Self::BadPath(_) => "invalid-path",
            Self::HeadersTooLarge { .. } => "headers-too-large",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::BodyTimeout => "body-timeout",
            Self::ClientBody(_) => "invalid-body",
            Self::ClientClosed => "client-closed",
            Self::NoRoute => "no-route",
            Self::UpstreamUnreachable { .. } => "upstream-unreachable",
            Self::UpstreamTimeout { .. } => "upstream-timeout",
            Self::UpstreamFailed { .. } => "upstream-failed",
            Self::CircuitOpen { .. } => "circuit-open",
            Self::UpstreamOverloaded { .. } => "upstream-overloaded",
            Self::RateLimited { .. } => "rate-limited",
            Self::Unauthenticated { invalid: true, .. } => "invalid-token",
            Self::Unauthenticated { invalid: false, .. } => "missing-token",
            Self::InsufficientScope { .. } => "insufficient-scope",
            Self::Forbidden(_) => "forbidden",
            Self::ClientCert(ClientCertError::Missing) => "client-cert-required",
            Self::ClientCert(ClientCertError::NotAllowed { .. }) => "client-cert-not-allowed",
            Self::IdentityUnavailable(_) => "identity-unavailable",
            Self::InternalToken(_) => "internal-token-failed",
            Self::IdempotencyKeyMissing => "idempotency-key-missing",
            Self::IdempotencyKeyInvalid => "idempotency-key-invalid",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyScopeMissing => "idempotency-scope-missing",
            Self::IdempotencyStore(_) => "idempotency-store-unavailable",
            Self::TranslationFailed { .. } => "translation-failed",
            Self::RequestTranslation(_) => "request-translation-failed",
            Self::SchemaViolation(_) => "schema-validation-failed",
            Self::WriteQueueUnavailable(_) => "write-queue-unavailable",
            Self::WriteNotFound => "write-not-found",
            Self::Internal(_) => "internal-error",
        }
    }

    pub fn to_response(&self, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
        // Why a token failed goes to the log, not to the caller.
        let detail = match self {
            Self::Unauthenticated { invalid: true, .. } => {
                "the bearer token is invalid or expired".to_string()
            }
            Self::Unauthenticated { invalid: false, .. } => "a bearer token is required".to_string(),
            // Which SANs were presented goes to the log only.
            Self::ClientCert(ClientCertError::NotAllowed { .. }) => {
                "the client certificate is not allowed on this route".to_string()
            }
            // A panic message can hold request data and says nothing a client can act on.
            Self::Internal(_) => "ficus failed while handling this request".to_string(),
            // The store's own error (addresses, Redis replies) is for the log.
            Self::WriteQueueUnavailable(_) => "the write queue is unavailable; retry later".to_string(),
            other => other.to_string(),
        };
        let mut resp = match self {
            // Each failing place, so a client can fix all of them at once.
            Self::SchemaViolation(v) => problem_with(
                self.status(),
                self.kind(),
                &detail,
                request_id,
                &[("errors", serde_json::to_value(v).unwrap_or_default())],
            ),
            _ => problem(self.status(), self.kind(), &detail, request_id),
        };
        match self {
            Self::CircuitOpen { retry_after_secs, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            // Places free up as soon as a response head arrives: a second is a fair hint.
            Self::UpstreamOverloaded { .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthenticated { invalid, .. } => {
                let challenge = if *invalid {
                    r#"Bearer error="invalid_token""#
                } else {
                    "Bearer"
                };
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Self::InsufficientScope { scope } => {
                let v = format!(
                    r#"Bearer error="insufficient_scope", scope="{}""#,
                    scope.replace('"', "")
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Self::RateLimited {
                retry_after_secs,
                headers,
                ..
            } => {
                let h = resp.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                for (name, value) in headers.iter() {
                    h.insert(name.clone(), value.clone());
                }
            }
            Self::IdempotencyKeyInFlight => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            Self::IdentityUnavailable(_) => {
                // The JWKS refetch and the introspection retry run every few seconds.
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
            }
            _ => {}
        }
        resp
    }
}

/// `202 Accepted` for a write queued while its upstream is unreachable: a problem-style body
/// saying so, and `Location` naming the write's status resource.
pub fn write_queued(
    location: &str,
    id: &str,
    reason: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let detail = format!("the write is queued and will be sent when the upstream is back ({reason})");
    let mut resp = problem_with(
        StatusCode::ACCEPTED,
        "write-queued",
        &detail,
        request_id,
        &[
            ("id", serde_json::Value::from(id)),
            ("status_url", serde_json::Value::from(location)),
        ],
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Builds a problem+json response. Also used by the admin API so every error looks alike.
pub fn problem(
    status: StatusCode,
    kind: &str,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    problem_with(status, kind, detail, request_id, &[])
}

fn problem_with(
    status: StatusCode,
    kind: &str,
    detail: &str,
    request_id: Option<&HeaderValue>,
    extra: &[(&str, serde_json::Value)],
) -> Response<ResponseBody> {
    let mut doc = serde_json::json!({
        "type": format!("urn:ficus:problem:{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        doc["request_id"] = serde_json::Value::from(id);
    }
    for (k, v) in extra {
        doc[*k] = v.clone();
    }
    let body = Bytes::from(doc.to_string());
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(id) = request_id {
        h.insert(crate::pipeline::context::X_REQUEST_ID, id.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_map_to_502_and_504() {
        let e = ProxyError::UpstreamUnreachable {
            upstream: "a".into(),
            reason: "refused".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let e = ProxyError::UpstreamTimeout {
            upstream: "a".into(),
            timeout_ms: 5,
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn problem_body_is_rfc9457_json() {
        let id = HeaderValue::from_static("abc");
        let resp = ProxyError::NoRoute.to_response(Some(&id));
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[crate::pipeline::context::X_REQUEST_ID], "abc");
    }

    #[tokio::test]
    async fn write_queue_errors_are_503_without_the_stores_message() {
        use http_body_util::BodyExt as _;
        let e = ProxyError::WriteQueueUnavailable("Connection refused: redis://10.0.0.7:6379".into());
        let resp = e.to_response(None);
        assert_eq!(resp.status(), 503);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["type"], "urn:ficus:problem:write-queue-unavailable");
        assert!(!doc.to_string().contains("10.0.0.7"), "{doc}");
    }

    #[tokio::test]
    async fn internal_errors_are_500_internal_error_without_their_message() {
        use http_body_util::BodyExt as _;
        let e = ProxyError::Internal("index out of bounds: secret=hunter2".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.kind(), "internal-error");
        let resp = e.to_response(None);
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["type"], "urn:ficus:problem:internal-error");
        assert!(!doc.to_string().contains("hunter2"), "{doc}");
    }
}
