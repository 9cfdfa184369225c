//! OpenTelemetry traces end to end: ficus exports to a receiver in this test, which decodes the
//! OTLP export with the `opentelemetry-proto` types (HTTP/protobuf and gRPC) and checks the
//! span tree, its attributes and what the upstream was told.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Spans as they arrived, each with its resource's `service.name`.
type Spans = Arc<Mutex<Vec<(String, Span)>>>;

fn keep(store: &Spans, msg: ExportTraceServiceRequest) {
    let mut out = store.lock().unwrap();
    for rs in msg.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body.
async fn http_receiver() -> (Upstream, Spans) {
    let spans: Spans = Arc::default();
    let store = spans.clone();
    let up = Upstream::start(move |req: Request<Incoming>| {
        let store = store.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            assert_eq!(req.headers()["x-collector-token"], "t0k3n");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            keep(&store, ExportTraceServiceRequest::decode(body).unwrap());
            let mut r = Response::new(full(ExportTraceServiceResponse::default().encode_to_vec()));
            r.headers_mut()
                .insert("content-type", "application/x-protobuf".parse().unwrap());
            r
        }
    })
    .await;
    (up, spans)
}

struct Collector(Spans);

#[async_trait::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if request.metadata().get("x-collector-token").map(|v| v.as_bytes()) != Some(b"t0k3n") {
            return Err(tonic::Status::unauthenticated(
                "the configured header was not sent",
            ));
        }
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector: the generated `TraceServiceServer`, served over h2c by the harness.
async fn grpc_receiver() -> (Upstream, Spans) {
    use tonic::codegen::Service as _;
    let spans: Spans = Arc::default();
    let server = TraceServiceServer::new(Collector(spans.clone()));
    let up = Upstream::start(move |req: Request<Incoming>| {
        let mut server = server.clone();
        async move {
            let resp = server.call(req).await.unwrap();
            resp.map(|b| b.map_err(|s| io::Error::other(s.to_string())).boxed_unsync())
        }
    })
    .await;
    (up, spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn attr_str<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key)? {
        Value::StringValue(v) => Some(v),
        _ => None,
    }
}

fn attr_int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

fn attr_bool(s: &Span, key: &str) -> Option<bool> {
    match attr(s, key)? {
        Value::BoolValue(v) => Some(*v),
        _ => None,
    }
}

fn server_spans(spans: &Spans, trace: &str) -> Vec<Span> {
    spans
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32 && hex(&s.trace_id) == trace)
        .cloned()
        .collect()
}

async fn wait_for_server_span(spans: &Spans, trace: &str) -> Span {
    let found = eventually(Duration::from_secs(10), || async {
        !server_spans(spans, trace).is_empty()
    })
    .await;
    assert!(found, "no server span of trace {trace} arrived");
    server_spans(spans, trace).remove(0)
}

fn tracing_section(endpoint: &str, extra: &str) -> String {
    format!(
        "telemetry:\n  tracing:\n    enabled: true\n    endpoint: '{endpoint}'\n    service_name: ficus-test\n    \
         batch_delay: 50ms\n    headers: {{ x-collector-token: t0k3n }}\n{extra}"
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn request_span_tree_continues_the_callers_trace_with_attempts_identity_and_translation() {
    let (receiver, spans) = http_receiver().await;
    // The first try gets a 503, the retry succeeds: two attempt spans.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let tries = Arc::new(AtomicUsize::new(0));
    let (log, count) = (seen.clone(), tries.clone());
    let up = Upstream::start(move |req: Request<Incoming>| {
        let (log, count) = (log.clone(), count.clone());
        async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string());
            log.lock().unwrap().push(tp.unwrap_or_default());
            let mut r = Response::new(full("{}"));
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "keys:\n  - {{ id: k1, owner: acme, sha256: '{}' }}\n",
            sha256_hex("key-1")
        ),
    )
    .unwrap();
    let yaml = format!(
        "\
log: {{ level: warn, access_log: false }}
listeners: [{{ name: main, bind: '127.0.0.1:0' }}]
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  app: {{ endpoints: ['{}'], retry: {{ attempts: 1, backoff: 1ms, max_backoff: 2ms }} }}
transforms:
  t:
    request:
      ops: [{{ rename: {{ path: a, to: b }} }}]
identity:
  api_keys:
    partners: {{ keys_file: keys.yaml }}
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: app
    transform: t
    identity: {{ api_keys: partners }}
{}",
        up.url(),
        tracing_section(&receiver.url(), "")
    );
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let a = send(
        &client(),
        Request::put(f.url("/orders/7"))
            .header("x-api-key", "key-1")
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(full("{\"a\":1}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());

    let server = wait_for_server_span(&spans, TRACE_ID).await;
    assert_eq!(
        hex(&server.parent_span_id),
        PARENT_ID,
        "the caller's span is the parent"
    );
    assert_eq!(server.name, "PUT /orders/*");
    assert_eq!(attr_str(&server, "http.request.method"), Some("PUT"));
    assert_eq!(attr_str(&server, "url.path"), Some("/orders/7"));
    assert_eq!(attr_str(&server, "url.scheme"), Some("http"));
    assert_eq!(attr_str(&server, "http.route"), Some("/orders/*"));
    assert_eq!(attr_str(&server, "ficus.route"), Some("orders"));
    assert_eq!(attr_int(&server, "http.response.status_code"), Some(200));
    let all = spans.lock().unwrap().clone();
    assert!(all.iter().all(|(service, _)| service == "ficus-test"));
    let children: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    for s in &children {
        assert_eq!(s.trace_id, server.trace_id);
    }
    let named = |n: &str| children.iter().filter(|s| s.name == n).count();
    assert_eq!(named("identity"), 1, "{children:#?}");
    assert_eq!(named("translate request"), 1, "{children:#?}");

    let mut attempts: Vec<&Span> = children
        .iter()
        .copied()
        .filter(|s| s.kind == SpanKind::Client as i32 && attr_str(s, "ficus.upstream") == Some("app"))
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "one span per try: {children:#?}");
    assert_eq!(attempts[0].name, "PUT");
    assert_eq!(attr_int(attempts[0], "http.response.status_code"), Some(503));
    assert_eq!(attr_bool(attempts[0], "ficus.retried"), Some(true));
    assert_eq!(attr_str(attempts[0], "error.type"), Some("503"));
    assert_eq!(attr_int(attempts[1], "http.response.status_code"), Some(200));
    assert_eq!(attr_bool(attempts[1], "ficus.retried"), Some(false));
    assert_eq!(attr_int(attempts[1], "http.request.resend_count"), Some(1));

    // Each try told the upstream the same trace, with that try's span as the parent.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (tp, attempt) in seen.iter().zip(&attempts) {
        assert_eq!(*tp, format!("00-{TRACE_ID}-{}-01", hex(&attempt.span_id)));
    }
    f.shutdown().await;
}

#[tokio::test]
async fn unsampled_caller_is_followed_nothing_exported_and_upstream_keeps_the_trace() {
    let (receiver, spans) = http_receiver().await;
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()) + &tracing_section(&receiver.url(), "");
    let f = Ficus::start(&yaml).await;
    let c = client();
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let e = send(
        &c,
        Request::get(f.url("/a"))
            .header("traceparent", format!("00-{unsampled}-b7ad6b7169203331-00"))
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    let tp = e.header("traceparent").unwrap().to_string();
    assert!(tp.starts_with(&format!("00-{unsampled}-")), "{tp}");
    assert!(tp.ends_with("-00"), "the caller's decision travels on: {tp}");
    // The control: a sampled request after it is exported, and the unsampled one never was.
    send(
        &c,
        Request::get(f.url("/b"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let server = wait_for_server_span(&spans, TRACE_ID).await;
    assert_eq!(attr_str(&server, "http.route"), Some("/*"));
    assert!(spans
        .lock()
        .unwrap()
        .iter()
        .all(|(_, s)| hex(&s.trace_id) != unsampled));
    f.shutdown().await;
}

#[tokio::test]
async fn tracing_off_sends_nothing_and_passes_traceparent_through() {
    let (receiver, _spans) = http_receiver().await;
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url())
        + &format!(
            "telemetry:\n  tracing:\n    enabled: false\n    endpoint: '{}'\n",
            receiver.url()
        );
    let f = Ficus::start(&yaml).await;
    let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let e = send(
        &client(),
        Request::get(f.url("/x"))
            .header("traceparent", &tp)
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header("traceparent"), Some(tp.as_str()));
    // Shutting down flushes any exporter there is: there is none.
    f.shutdown().await;
    assert_eq!(receiver.hits(), 0);
}

#[tokio::test]
async fn grpc_export_delivers_the_span_tree() {
    let (receiver, spans) = grpc_receiver().await;
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()) + &tracing_section(&receiver.url(), "    protocol: grpc\n");
    let f = Ficus::start(&yaml).await;
    let e = send(
        &client(),
        Request::get(f.url("/g"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    let server = wait_for_server_span(&spans, TRACE_ID).await;
    assert_eq!(hex(&server.parent_span_id), PARENT_ID);
    assert_eq!(attr_str(&server, "http.request.method"), Some("GET"));
    assert_eq!(attr_int(&server, "http.response.status_code"), Some(200));
    let attempt = spans
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .find(|s| s.parent_span_id == server.span_id && s.kind == SpanKind::Client as i32)
        .expect("the upstream call's span");
    assert_eq!(
        e.header("traceparent"),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&attempt.span_id)).as_str())
    );
    f.shutdown().await;
}

#[tokio::test]
async fn shadow_call_gets_its_own_trace_linked_to_the_request() {
    let (receiver, spans) = http_receiver().await;
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&yaml::migration_route("m", "/", &["shadow: { percent: 100 }"]))
        .section(&tracing_section(&receiver.url(), ""))
        .build();
    let f = Ficus::start(&yaml).await;
    send(
        &client(),
        Request::get(f.url("/s"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(empty())
            .unwrap(),
    )
    .await
    .text();
    let server = wait_for_server_span(&spans, TRACE_ID).await;
    let linked = |s: &Span| {
        s.links
            .iter()
            .any(|l| l.span_id == server.span_id && l.trace_id == server.trace_id)
    };
    let found = eventually(Duration::from_secs(10), || async {
        spans
            .lock()
            .unwrap()
            .iter()
            .any(|(_, s)| s.name == "shadow" && linked(s))
    })
    .await;
    assert!(found, "no shadow span linked to the request");
    let shadow = spans
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .find(|s| s.name == "shadow")
        .unwrap();
    assert_ne!(shadow.trace_id, server.trace_id, "a trace of its own");
    assert_eq!(attr_str(&shadow, "ficus.upstream"), Some("modern"));
    assert_eq!(attr_int(&shadow, "http.response.status_code"), Some(200));
    f.shutdown().await;
}

#[tokio::test]
async fn redis_rate_limit_call_is_a_span_under_the_rate_limit_stage() {
    let redis = Redis::start().await;
    let (receiver, spans) = http_receiver().await;
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace("    upstream: app\n", "    upstream: app\n    rate_limit: [per-ip]\n")
        + &format!(
            "rate_limits:\n  store: {{ redis_urls: ['{}'], timeout: 500ms }}\n  policies:\n    per-ip: {{ key: client_ip, rate: 1000/s }}\n",
            redis.url
        )
        + &tracing_section(&receiver.url(), "");
    let f = Ficus::start(&yaml).await;
    let c = client();
    // The store connects in the background: requests until one decides through Redis.
    let found = eventually(Duration::from_secs(15), || async {
        send(&c, Request::get(f.url("/r")).body(empty()).unwrap()).await;
        let all: Vec<Span> = spans.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
        let by_id = |id: &[u8]| all.iter().find(|s| s.span_id == id);
        all.iter().any(|call| {
            call.name == "redis EVALSHA"
                && call.kind == SpanKind::Client as i32
                && by_id(&call.parent_span_id).is_some_and(|stage| {
                    stage.name == "rate_limit"
                        && by_id(&stage.parent_span_id).is_some_and(|s| s.kind == SpanKind::Server as i32)
                })
        })
    })
    .await;
    assert!(
        found,
        "no Redis call span under a rate_limit span under the server span"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn introspection_call_is_a_span_under_the_identity_stage() {
    let (receiver, spans) = http_receiver().await;
    let idp = Upstream::start(|_req: Request<Incoming>| async {
        Response::new(full(r#"{"active": true, "sub": "alice", "aud": "orders"}"#))
    })
    .await;
    let up = Upstream::echo().await;
    std::env::set_var("FICUS_TEST_TRACING_IDP_SECRET", "s3cret");
    let yaml = basic_config(&up.url()).replace(
        "    upstream: app\n",
        "    upstream: app\n    identity: { introspection: corp }\n",
    ) + &format!(
        "identity:\n  introspection:\n    corp: {{ url: '{}/introspect', client_id: ficus, client_secret_env: \
         FICUS_TEST_TRACING_IDP_SECRET, audiences: [orders] }}\n",
        idp.url()
    ) + &tracing_section(&receiver.url(), "");
    let f = Ficus::start(&yaml).await;
    let a = send(
        &client(),
        Request::get(f.url("/i"))
            .header("authorization", "Bearer opaque-token")
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let server = wait_for_server_span(&spans, TRACE_ID).await;
    let all: Vec<Span> = spans.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
    let identity = all
        .iter()
        .find(|s| s.name == "identity" && s.parent_span_id == server.span_id)
        .expect("an identity span under the server span");
    let call = all
        .iter()
        .find(|s| s.name == "introspection" && s.parent_span_id == identity.span_id)
        .expect("the IdP call under the identity span");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.trace_id, server.trace_id);
    f.shutdown().await;
}
