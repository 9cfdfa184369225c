//! OpenTelemetry traces over OTLP (HTTP/protobuf or gRPC).
//!
//! Off unless configured (`telemetry.tracing` or the standard `OTEL_*` variables): then no tracer
//! exists, `RequestCtx::trace` stays `None` and the request path tests only that `Option` (and,
//! in the identity and rate-limit stores, one relaxed atomic load). When on, every request gets a
//! server span; its children cover identity (with JWKS and introspection fetches), the Redis
//! rate-limit call, translation and each upstream attempt; a shadow call gets its own trace,
//! linked to the request's span. Finished spans go to a bounded queue drained by a tokio task:
//! a full queue drops spans, it never makes a request wait.
//!
//! The tracer is built once, at start. A reload validates `telemetry.tracing` like any other
//! section, but a changed value takes effect at the next restart.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Full};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use crate::config::file::TracingConfig;
use crate::config::problems::Section;

/// Tracers alive in this process. Code below the request's stages (the Redis store, the IdP
/// clients) looks for a parent span only when it is non-zero, so with tracing off it pays one
/// atomic load and nothing else.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// An `OTEL_TRACES_SAMPLER` choice: the root decision, and whether a sampled or unsampled parent
/// decides instead when the request carries one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSpec {
    pub root: RootSampler,
    pub parent_based: bool,
}

/// `telemetry.tracing` with the `OTEL_*` variables folded in, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The URL spans are sent to: for OTLP/HTTP the full `/v1/traces` URL.
    pub endpoint: Uri,
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub sampler: SamplerSpec,
    pub batch_delay: Duration,
    pub export_timeout: Duration,
    pub max_queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP client: {0}")]
    Client(String),
}

/// Reads the process environment: the standard variables feed [`compile`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Validates `telemetry.tracing`, each unset key taken from its `OTEL_*` variable. `None`: off.
pub fn compile(
    cfg: &TracingConfig,
    env: &dyn Fn(&str) -> Option<String>,
    sec: &mut Section<'_, '_>,
) -> Option<TracingSettings> {
    let env = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let traces_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let base_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT");
    let env_off = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let on = cfg
        .enabled
        .unwrap_or(!env_off && (traces_endpoint.is_some() || base_endpoint.is_some()));
    if !on {
        return None;
    }
    let mut ok = true;

    let (protocol_text, protocol_key) = match &cfg.protocol {
        Some(p) => (p.clone(), "protocol".to_string()),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| (v, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| (v, "OTEL_EXPORTER_OTLP_PROTOCOL")))
        {
            Some((v, var)) => (v, format!("protocol (from {var})")),
            None => ("http/protobuf".to_string(), "protocol".to_string()),
        },
    };
    let protocol = match protocol_text.as_str() {
        "http/protobuf" => Protocol::HttpProtobuf,
        "grpc" => Protocol::Grpc,
        other => {
            sec.error(
                &protocol_key,
                format!("`{other}` is not supported; use `http/protobuf` or `grpc`"),
            );
            ok = false;
            Protocol::HttpProtobuf
        }
    };

    // A base URL gets the signal path (OTLP/HTTP only); the per-signal variable is used as is.
    let (url, from, append) = match (&cfg.endpoint, traces_endpoint, base_endpoint) {
        (Some(e), _, _) => (e.clone(), "endpoint".to_string(), true),
        (None, Some(e), _) => (
            e,
            "endpoint (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)".into(),
            false,
        ),
        (None, None, Some(e)) => (e, "endpoint (from OTEL_EXPORTER_OTLP_ENDPOINT)".into(), true),
        (None, None, None) => match protocol {
            Protocol::HttpProtobuf => ("http://localhost:4318".into(), "endpoint".into(), true),
            Protocol::Grpc => ("http://localhost:4317".into(), "endpoint".into(), false),
        },
    };
    let url = if append && protocol == Protocol::HttpProtobuf {
        format!("{}/v1/traces", url.trim_end_matches('/'))
    } else {
        url
    };
    let endpoint = match url.parse::<Uri>() {
        Ok(u) if u.host().is_none() => {
            sec.error(&from, format!("`{url}` has no host"));
            None
        }
        Ok(u) => match (u.scheme_str(), protocol) {
            (Some("http"), _) | (Some("https"), Protocol::HttpProtobuf) => Some(u),
            (Some("https"), Protocol::Grpc) => {
                sec.error(
                    &from,
                    "gRPC over TLS is not built in: use an `http://` collector (a local agent) or `http/protobuf`",
                );
                None
            }
            _ => {
                sec.error(&from, format!("`{url}` must start with http:// or https://"));
                None
            }
        },
        Err(e) => {
            sec.error(&from, format!("`{url}` is not a URL ({e})"));
            None
        }
    };

    let mut header_text: BTreeMap<String, String> = BTreeMap::new();
    for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
        if let Some(v) = env(var) {
            header_text.extend(parse_key_values(&v));
        }
    }
    header_text.extend(
        cfg.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
    );
    let mut headers = Vec::new();
    for (k, v) in &header_text {
        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.push((n, v));
            }
            // The value is not shown: headers usually carry the collector's credentials.
            _ => {
                sec.error(&format!("headers.{k}"), "not a valid header name and value");
                ok = false;
            }
        }
    }

    let mut resource: BTreeMap<String, String> = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| parse_key_values(&v).collect())
        .unwrap_or_default();
    resource.extend(cfg.resource_attributes.clone());
    let service_name = cfg
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .or_else(|| resource.get("service.name").cloned())
        .unwrap_or_else(|| "ficus".to_string());
    if service_name.is_empty() {
        sec.error("service_name", "must not be empty");
        ok = false;
    }
    resource.remove("service.name");

    let sampler = sampler_spec(cfg, &env, sec);
    let batch_delay = cfg.batch_delay.unwrap_or(Duration::from_secs(5));
    if batch_delay.is_zero() {
        sec.error("batch_delay", "must be more than 0");
        ok = false;
    }
    let export_timeout = cfg.export_timeout.unwrap_or(Duration::from_secs(10));
    if export_timeout.is_zero() {
        sec.error("export_timeout", "must be more than 0");
        ok = false;
    }
    let max_queue = cfg.max_queue.unwrap_or(2048);
    if max_queue == 0 {
        sec.error("max_queue", "must be at least 1");
        ok = false;
    }
    let (endpoint, sampler) = (endpoint?, sampler?);
    ok.then_some(TracingSettings {
        endpoint,
        protocol,
        headers,
        service_name,
        resource,
        sampler,
        batch_delay,
        export_timeout,
        max_queue,
    })
}

fn sampler_spec(
    cfg: &TracingConfig,
    env: &dyn Fn(&str) -> Option<String>,
    sec: &mut Section<'_, '_>,
) -> Option<SamplerSpec> {
    let (name, name_key) = match &cfg.sampler {
        Some(s) => (s.clone(), "sampler".to_string()),
        None => match env("OTEL_TRACES_SAMPLER") {
            Some(s) => (s, "sampler (from OTEL_TRACES_SAMPLER)".to_string()),
            None => ("parentbased_always_on".to_string(), "sampler".to_string()),
        },
    };
    let arg = match cfg.sampler_arg {
        Some(a) => Some((a, "sampler_arg".to_string())),
        None => match env("OTEL_TRACES_SAMPLER_ARG") {
            None => None,
            Some(s) => match s.parse::<f64>() {
                Ok(a) => Some((a, "sampler_arg (from OTEL_TRACES_SAMPLER_ARG)".to_string())),
                Err(_) => {
                    sec.error(
                        "sampler_arg (from OTEL_TRACES_SAMPLER_ARG)",
                        format!("`{s}` is not a number"),
                    );
                    return None;
                }
            },
        },
    };
    let ratio = match arg {
        None => 1.0,
        Some((a, key)) => {
            if !(0.0..=1.0).contains(&a) {
                sec.error(&key, format!("{a} is not a ratio between 0 and 1"));
                return None;
            }
            a
        }
    };
    let (root, parent_based) = match name.as_str() {
        "always_on" => (RootSampler::AlwaysOn, false),
        "always_off" => (RootSampler::AlwaysOff, false),
        "traceidratio" => (RootSampler::Ratio(ratio), false),
        "parentbased_always_on" => (RootSampler::AlwaysOn, true),
        "parentbased_always_off" => (RootSampler::AlwaysOff, true),
        "parentbased_traceidratio" => (RootSampler::Ratio(ratio), true),
        other => {
            sec.error(
                &name_key,
                format!(
                    "`{other}` is not one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio"
                ),
            );
            return None;
        }
    };
    Some(SamplerSpec { root, parent_based })
}

/// `k1=v1,k2=v2` with percent-encoded values (the W3C baggage form the OTel variables use).
fn parse_key_values(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    s.split(',').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        let k = k.trim();
        if k.is_empty() {
            return None;
        }
        let v = percent_decode(v.trim());
        Some((k.to_string(), v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tracer of a running gateway.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Stored in a span's context so code that runs inside it (and only sees
/// `Context::current()`) can start child spans.
#[derive(Clone)]
struct Handle(SdkTracer);

impl Tracing {
    /// Builds the exporter and the batch processor. Needs a tokio runtime: the processor's
    /// worker is a task on it.
    pub fn start(s: &TracingSettings) -> Result<Self, TracesError> {
        use opentelemetry_otlp::SpanExporter;
        let exporter = match s.protocol {
            Protocol::HttpProtobuf => {
                let connector = crate::upstream::tls::idp_connector(
                    None,
                    std::path::Path::new("."),
                    Duration::from_secs(2),
                )
                .map_err(|e| TracesError::Client(e.to_string()))?;
                let client = OtlpHttpClient {
                    client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build(connector),
                    headers: s.headers.clone(),
                    timeout: s.export_timeout,
                };
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(s.endpoint.to_string())
                    .with_timeout(s.export_timeout)
                    .with_http_client(client)
                    .build()?
            }
            Protocol::Grpc => {
                let mut map = http::HeaderMap::new();
                for (k, v) in &s.headers {
                    map.insert(k.clone(), v.clone());
                }
                let metadata = tonic::metadata::MetadataMap::from_headers(map);
                // Runs after the exporter adds OTEL_EXPORTER_OTLP_HEADERS, so a configured
                // header replaces the variable's rather than being sent next to it.
                let headers = move |mut req: tonic::Request<()>| {
                    for kv in metadata.iter() {
                        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                            req.metadata_mut().insert(k.clone(), v.clone());
                        }
                    }
                    Ok(req)
                };
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(s.endpoint.to_string())
                    .with_timeout(s.export_timeout)
                    .with_interceptor(headers)
                    .build()?
            }
        };
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(s.batch_delay)
            .with_max_queue_size(s.max_queue)
            .with_max_export_batch_size(s.max_queue.min(512))
            .build();
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(s.service_name.clone())
            .with_attributes(
                s.resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(s.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ficus");
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Self { provider, tracer })
    }

    /// Sends what is queued and stops the exporter. Blocks: call it off the runtime's threads.
    pub fn shutdown_blocking(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "trace exporter shutdown");
        }
    }

    /// The server span of one request, child of the caller's `traceparent` when it sent a
    /// valid one (so a parent-based sampler follows the caller's decision).
    pub fn server_span<B>(&self, req: &Request<B>, peer: IpAddr, scheme: &'static str) -> RequestTrace {
        let parent = req
            .headers()
            .get(crate::pipeline::context::TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .map_or_else(Context::new, |sc| Context::new().with_remote_span_context(sc));
        let (method, original) = method_name(req.method());
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new("url.scheme", scheme),
            KeyValue::new("network.protocol.version", protocol_version(req.version())),
            KeyValue::new("network.peer.address", peer.to_string()),
        ];
        let name = if original.is_some() { "HTTP" } else { method };
        if let Some(o) = original {
            attrs.push(KeyValue::new("http.request.method_original", o));
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span).with_value(Handle(self.tracer.clone())),
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
        // The SDK's own shutdown (run when the last provider handle drops) blocks until the
        // exporter task answers; on the runtime's thread that task could never run. Done on a
        // thread of its own instead, where waiting is harmless.
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("ficus-otel-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown();
            });
    }
}

fn sampler(s: SamplerSpec) -> Sampler {
    let root = match s.root {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
    };
    if s.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}

/// The known methods by their semantic-convention name; any other is `_OTHER` plus the original.
fn method_name(m: &Method) -> (&'static str, Option<String>) {
    let known = match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return ("_OTHER", Some(m.as_str().to_string())),
    };
    (known, None)
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "",
    }
}

/// A W3C `traceparent` (version 00) as a remote span context.
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if !crate::pipeline::context::valid_traceparent(v) {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    let trace = TraceId::from_hex(&s[3..35]).ok()?;
    let span = SpanId::from_hex(&s[36..52]).ok()?;
    let flags = u8::from_str_radix(&s[53..55], 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` that makes `cx`'s span the parent of the next hop.
pub fn traceparent(cx: &Context) -> HeaderValue {
    let span = cx.span();
    let sc = span.span_context();
    let s = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00")
    })
}

/// One request's server span (and the tracer, for its children).
pub struct RequestTrace {
    cx: Context,
}

impl RequestTrace {
    fn tracer(&self) -> Option<&SdkTracer> {
        self.cx.get::<Handle>().map(|h| &h.0)
    }

    fn start(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind, attrs: Vec<KeyValue>) -> Context {
        match self.tracer() {
            Some(t) => {
                let span = t
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attrs)
                    .start_with_context(t, &self.cx);
                self.cx.with_span(span)
            }
            None => self.cx.clone(),
        }
    }

    /// Once the answer is known: the route, the status, and the span's end.
    pub fn finish(
        &self,
        method: &Method,
        route: Option<(&str, Cow<'_, str>)>,
        client: IpAddr,
        status: StatusCode,
        error: Option<&'static str>,
    ) {
        let span = self.cx.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        if let Some((name, template)) = route {
            let (m, original) = method_name(method);
            span.update_name(format!(
                "{} {template}",
                if original.is_some() { "HTTP" } else { m }
            ));
            span.set_attribute(KeyValue::new("http.route", template.into_owned()));
            span.set_attribute(KeyValue::new("ficus.route", name.to_string()));
        }
        span.set_attribute(KeyValue::new("client.address", client.to_string()));
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("ficus.error", e));
        }
        // A 4xx is the client's doing: only a server error marks the server span as failed.
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
            span.set_status(Status::error(error.unwrap_or("server error")));
        }
        span.end();
    }

    /// Runs `fut` inside a child span; `failed` names the failure of an output that is one.
    pub async fn within<F: Future>(
        &self,
        name: &'static str,
        fut: F,
        failed: impl FnOnce(&F::Output) -> Option<Cow<'static, str>>,
    ) -> F::Output {
        let cx = self.start(name, SpanKind::Internal, Vec::new());
        let out = fut.with_context(cx.clone()).await;
        end_with(&cx, failed(&out));
        out
    }

    /// The client span of one try at the upstream `upstream`; `resend` counts the tries before.
    pub fn attempt(&self, upstream: &str, method: &Method, uri: &Uri, resend: u32) -> Attempt {
        let (m, original) = method_name(method);
        let mut attrs = vec![
            KeyValue::new("http.request.method", m),
            KeyValue::new("ficus.upstream", upstream.to_string()),
            KeyValue::new(
                "url.full",
                format!(
                    "{}://{}{}",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map_or("", |a| a.as_str()),
                    uri.path()
                ),
            ),
        ];
        if let Some(h) = uri.host() {
            attrs.push(KeyValue::new("server.address", h.to_string()));
        }
        if let Some(p) = uri.port_u16() {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        if resend > 0 {
            attrs.push(KeyValue::new("http.request.resend_count", i64::from(resend)));
        }
        let name = if original.is_some() { "HTTP" } else { m };
        Attempt(self.start(name, SpanKind::Client, attrs))
    }

    /// What a shadow call needs to start its own trace, linked to this request's span.
    pub fn link(&self) -> Option<Linked> {
        Some(Linked {
            tracer: self.tracer()?.clone(),
            to: self.cx.span().span_context().clone(),
        })
    }
}

fn end_with(cx: &Context, failure: Option<Cow<'static, str>>) {
    let span = cx.span();
    if let Some(f) = failure {
        span.set_attribute(KeyValue::new("error.type", f.to_string()));
        span.set_status(Status::error(f));
    }
    span.end();
}

/// One upstream attempt's span.
pub struct Attempt(Context);

impl Attempt {
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(&self.0)
    }

    /// The attempt's outcome: the upstream's status or why there was none, and whether
    /// ficus tries again after it.
    pub fn finish(self, status: Option<StatusCode>, error: Option<&'static str>, retried: bool) {
        let span = self.0.span();
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s.as_u16())));
        }
        span.set_attribute(KeyValue::new("ficus.retried", retried));
        let failure = match (status, error) {
            (_, Some(e)) => Some(Cow::Borrowed(e)),
            (Some(s), None) if s.is_server_error() => Some(Cow::Owned(s.as_str().to_string())),
            _ => None,
        };
        end_with(&self.0, failure);
    }
}

/// A request's span, for a shadow call that runs after the request has been answered.
pub struct Linked {
    tracer: SdkTracer,
    to: SpanContext,
}

impl Linked {
    /// The shadow call's span: a new trace, linked to the request that caused it.
    pub fn start(&self, upstream: &str, method: &Method) -> Attempt {
        let (m, _) = method_name(method);
        let span = self
            .tracer
            .span_builder("shadow")
            .with_kind(SpanKind::Client)
            .with_links(vec![Link::with_context(self.to.clone())])
            .with_attributes(vec![
                KeyValue::new("http.request.method", m),
                KeyValue::new("ficus.upstream", upstream.to_string()),
            ])
            .start_with_context(&self.tracer, &Context::new());
        Attempt(Context::new().with_span(span))
    }
}

/// What [`within`] and [`in_current`] return: without tracing, the future itself (the stage's
/// future does not grow); with it, the traced future, boxed.
pub type Traced<'a, F> = Either<F, Pin<Box<dyn Future<Output = <F as Future>::Output> + Send + 'a>>>;

/// Runs `fut` in a child span of the span current on this task, if a request's span is current
/// (a fetch on behalf of a request), else just runs it (the background JWKS refresh, tracing
/// off). For calls below the stages, which see no `RequestCtx`; call it where the result is
/// awaited, since the current span is looked up here.
pub fn in_current<'a, F>(
    name: &'static str,
    kind: SpanKind,
    fut: F,
    failed: impl FnOnce(&F::Output) -> Option<Cow<'static, str>> + Send + 'a,
) -> Traced<'a, F>
where
    F: Future + Send + 'a,
{
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return Either::Left(fut);
    }
    let cx = Context::map_current(|cx| {
        let tracer = cx.get::<Handle>()?.0.clone();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&tracer, cx);
        Some(cx.with_span(span))
    });
    match cx {
        None => Either::Left(fut),
        Some(cx) => Either::Right(Box::pin(async move {
            let out = fut.with_context(cx.clone()).await;
            end_with(&cx, failed(&out));
            out
        })),
    }
}

/// [`RequestTrace::within`] for an optional trace: without one, `fut` runs as it is.
pub fn within<'a, F>(
    trace: Option<&'a RequestTrace>,
    name: &'static str,
    fut: F,
    failed: impl FnOnce(&F::Output) -> Option<Cow<'static, str>> + Send + 'a,
) -> Traced<'a, F>
where
    F: Future + Send + 'a,
{
    match trace {
        None => Either::Left(fut),
        Some(t) => Either::Right(Box::pin(t.within(name, fut, failed))),
    }
}

/// OTLP/HTTP over ficus's own hyper client (rustls, webpki roots). The configured headers are
/// set last, so `telemetry.tracing.headers` wins over `OTEL_EXPORTER_OTLP_HEADERS`, which the
/// exporter adds by itself.
#[derive(Debug)]
struct OtlpHttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

/// The collector's answer is a small protobuf message; anything larger is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = request.into_parts();
        for (k, v) in &self.headers {
            parts.headers.insert(k.clone(), v.clone());
        }
        let call = async {
            let resp = self
                .client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| TracesError::Client(format!("no answer within {:?}", self.timeout)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::problems::Problems;
    use crate::config::ConfigSource;

    fn run(cfg: &TracingConfig, vars: &[(&str, &str)]) -> (Option<TracingSettings>, Vec<String>) {
        let src = ConfigSource::Embedded {
            name: "test.yaml".into(),
            text: "telemetry: {}\n",
            base_dir: ".".into(),
        }
        .read()
        .unwrap();
        let mut p = Problems::new(&src);
        let env = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let out = compile(cfg, &env, &mut p.at("telemetry.tracing"));
        let errors = match p.finish() {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        };
        (out, errors)
    }

    #[test]
    fn tracing_is_off_without_config_or_endpoint_variable() {
        let (s, e) = run(&TracingConfig::default(), &[("OTEL_SERVICE_NAME", "x")]);
        assert!(s.is_none() && e.is_empty());
        let off = TracingConfig {
            enabled: Some(false),
            ..Default::default()
        };
        let (s, _) = run(&off, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert!(s.is_none(), "enabled: false wins over the variable");
        let (s, _) = run(
            &TracingConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        );
        assert!(s.is_none());
    }

    #[test]
    fn standard_variables_configure_tracing_and_config_keys_override_them() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=a%20b,x-other=1"),
            ("OTEL_SERVICE_NAME", "from-env"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=edge",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let (s, e) = run(&TracingConfig::default(), &vars);
        assert!(e.is_empty(), "{e:?}");
        let s = s.unwrap();
        assert_eq!(s.endpoint.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.service_name, "from-env");
        assert_eq!(s.resource["team"], "edge");
        assert_eq!(s.headers[0].0, "x-other");
        assert_eq!(s.headers[1].1, "a b");
        assert_eq!(
            s.sampler,
            SamplerSpec {
                root: RootSampler::Ratio(0.25),
                parent_based: true
            }
        );

        let cfg = TracingConfig {
            endpoint: Some("http://agent:4317".into()),
            protocol: Some("grpc".into()),
            service_name: Some("edge".into()),
            headers: [("X-Token".to_string(), "cfg".to_string())].into(),
            sampler: Some("always_off".into()),
            ..Default::default()
        };
        let s = run(&cfg, &vars).0.unwrap();
        assert_eq!(s.endpoint.to_string(), "http://agent:4317/");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.service_name, "edge");
        assert_eq!(s.headers.iter().find(|(k, _)| k == "x-token").unwrap().1, "cfg");
        assert_eq!(s.sampler.root, RootSampler::AlwaysOff);
    }

    #[test]
    fn bad_tracing_values_are_reported_with_their_key() {
        let cfg = TracingConfig {
            enabled: Some(true),
            protocol: Some("http/json".into()),
            sampler: Some("sometimes".into()),
            max_queue: Some(0),
            ..Default::default()
        };
        let (s, e) = run(&cfg, &[]);
        assert!(s.is_none());
        let all = e.join("\n");
        assert!(all.contains("telemetry.tracing.protocol"), "{all}");
        assert!(all.contains("telemetry.tracing.sampler"), "{all}");
        assert!(all.contains("telemetry.tracing.max_queue"), "{all}");

        let cfg = TracingConfig {
            enabled: Some(true),
            sampler_arg: Some(1.5),
            sampler: Some("traceidratio".into()),
            ..Default::default()
        };
        assert!(run(&cfg, &[])
            .1
            .join("")
            .contains("telemetry.tracing.sampler_arg"));
        let (_, e) = run(
            &TracingConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert!(e.join("").contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e:?}");
    }

    #[test]
    fn traceparent_round_trips() {
        let sc = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        let cx = Context::new().with_remote_span_context(sc);
        assert_eq!(
            traceparent(&cx),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }
}
