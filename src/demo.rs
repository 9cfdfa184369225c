//! `ficus demo`: ficus on its embedded config plus two in-process backends on loopback, so a new
//! user can try it with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::ConfigSource;

mod idp;

pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");
/// The legacy order service's description, served at `/OrderService.asmx?wsdl` (with the
/// address the backend is bound to); `ficus import wsdl` reads it.
pub const ORDERS_WSDL: &str = include_str!("../config/demo-orders.wsdl");
/// The defaults of `ficus demo`'s address flags; config/demo.yaml is written with these.
pub const LISTEN_ADDR: &str = "127.0.0.1:8080";
pub const ADMIN_ADDR: &str = "127.0.0.1:9901";
pub const LEGACY_ADDR: &str = "127.0.0.1:18001";
pub const MODERN_ADDR: &str = "127.0.0.1:18002";
/// The demo identity provider: its JWKS, and the mint endpoint `ficus demo token` calls.
pub const IDP_ADDR: &str = "127.0.0.1:18003";
/// Must match `identity.jwt.demo` in config/demo.yaml.
pub const DEMO_ISSUER: &str = "http://127.0.0.1:18003/";
pub const DEMO_AUDIENCE: &str = "ficus-demo";

pub use idp::{request_token, spawn_idp, DemoIdpError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "cannot bind the demo {what} on {addr}: {source} (pick another with `ficus demo --{what} ADDR`)"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Idp(#[from] DemoIdpError),
}

/// Where the demo's parts listen. Port 0 picks a free port; the banner shows the one chosen.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub legacy: SocketAddr,
    pub modern: SocketAddr,
    pub idp: SocketAddr,
}

impl Default for Addrs {
    fn default() -> Self {
        let parse = |a: &str| a.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        Self {
            listen: parse(LISTEN_ADDR),
            admin: parse(ADMIN_ADDR),
            legacy: parse(LEGACY_ADDR),
            modern: parse(MODERN_ADDR),
            idp: parse(IDP_ADDR),
        }
    }
}

/// The embedded config as written (the default addresses).
pub fn source() -> ConfigSource {
    ConfigSource::Embedded {
        name: "config/demo.yaml (embedded)".into(),
        text: DEMO_CONFIG,
        base_dir: std::env::current_dir().unwrap_or_default(),
    }
}

/// The embedded config with its five addresses replaced by `addrs`. Each default is replaced in
/// one pass, so a new address that happens to equal another default is not replaced again.
pub fn config_for(addrs: &Addrs) -> String {
    let pairs = [
        (LISTEN_ADDR, addrs.listen.to_string()),
        (ADMIN_ADDR, addrs.admin.to_string()),
        (LEGACY_ADDR, addrs.legacy.to_string()),
        (MODERN_ADDR, addrs.modern.to_string()),
        (IDP_ADDR, addrs.idp.to_string()),
    ];
    let mut out = String::with_capacity(DEMO_CONFIG.len());
    let mut rest = DEMO_CONFIG;
    'scan: while !rest.is_empty() {
        for (from, to) in &pairs {
            if let Some(after) = rest.strip_prefix(from) {
                // `127.0.0.1:8080` must not match the start of `127.0.0.1:80801`.
                if !after.starts_with(|c: char| c.is_ascii_digit()) {
                    out.push_str(to);
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// Starts the demo identity provider and both backends on `addrs` (port 0: any free port), and
/// returns the config that points at them together with the addresses actually bound.
pub async fn start(addrs: &Addrs) -> Result<(ConfigSource, Addrs), DemoError> {
    // Before the gateway, so its first JWKS fetch finds the demo IdP up.
    let idp = spawn_idp(addrs.idp).await?;
    let mut bound = Addrs { idp, ..*addrs };
    for (what, flavor) in [("legacy", Flavor::Legacy), ("modern", Flavor::Modern)] {
        let addr = if what == "legacy" {
            addrs.legacy
        } else {
            addrs.modern
        };
        let local = spawn_backend(addr, flavor)
            .await
            .map_err(|source| DemoError::Bind { what, addr, source })?;
        match flavor {
            Flavor::Legacy => bound.legacy = local,
            Flavor::Modern => bound.modern = local,
        }
    }
    // `ConfigSource::Embedded` holds a `&'static str` (reloads re-read it); this runs once per
    // process, so the one leaked copy is the config's lifetime anyway.
    let text: &'static str = Box::leak(config_for(&bound).into_boxed_str());
    let name = if text == DEMO_CONFIG {
        "config/demo.yaml (embedded)".to_string()
    } else {
        "config/demo.yaml (embedded, addresses from the command line)".to_string()
    };
    Ok((
        ConfigSource::Embedded {
            name,
            text,
            base_dir: std::env::current_dir().unwrap_or_default(),
        },
        bound,
    ))
}

#[derive(Clone, Copy)]
pub enum Flavor {
    /// Answers in XML with old field names, as the system being replaced does.
    Legacy,
    /// Answers in JSON.
    Modern,
}

/// Starts a demo backend; it runs until the process exits.
pub async fn spawn_backend(addr: SocketAddr, flavor: Flavor) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let legacy = matches!(flavor, Flavor::Legacy);
                    if legacy && req.uri().path() == "/OrderService.asmx" && req.uri().query() == Some("wsdl")
                    {
                        return Ok::<_, Infallible>(orders_wsdl(local));
                    }
                    if legacy && req.uri().path() == "/OrderService.asmx" {
                        use http_body_util::BodyExt as _;
                        let body = match req.into_body().collect().await {
                            Ok(c) => c.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        return Ok::<_, Infallible>(legacy_order(&body));
                    }
                    Ok::<_, Infallible>(answer(flavor, &req))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn answer(flavor: Flavor, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let header_of = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if let (Flavor::Modern, Some(id)) = (flavor, path.strip_prefix("/api/orders/")) {
        return modern_order(id);
    }
    let (ctype, body, who) = match flavor {
        Flavor::Legacy => (
            "application/xml",
            format!(
                "<response><servedBy>legacy</servedBy><path>{}</path><requestId>{}</requestId>\
                 <forwardedFor>{}</forwardedFor></response>\n",
                xml_escape(path),
                xml_escape(&header_of("x-request-id")),
                xml_escape(&header_of("x-forwarded-for")),
            ),
            "legacy",
        ),
        Flavor::Modern => (
            "application/json",
            format!(
                "{}\n",
                serde_json::json!({
                    "served_by": "modern",
                    "path": path,
                    // Set by ficus from the verified token on the protected route.
                    "user": header_of("x-user-id"),
                    "request_id": header_of("x-request-id"),
                    "forwarded_for": header_of("x-forwarded-for"),
                })
            ),
            "modern",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert("x-served-by", HeaderValue::from_static(who));
    r
}

fn respond(status: u16, ctype: &'static str, who: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert("x-served-by", HeaderValue::from_static(who));
    r
}

/// The legacy order service: SOAP 1.1 (`GetOrder` with an `OrderId`), legacy names, cents, a
/// Fault for unknown orders.
fn legacy_order(envelope_in: &[u8]) -> Response<Full<Bytes>> {
    let text = String::from_utf8_lossy(envelope_in);
    let id = text
        .split_once("<OrderId>")
        .and_then(|(_, rest)| rest.split_once("</OrderId>"))
        .map(|(id, _)| id.to_string())
        .unwrap_or_default();
    let envelope = |inner: String| {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope \
             xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>\n"
        )
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id == "404" {
        let fault = format!(
            "<soap:Fault><faultcode>soap:Client.NotFound</faultcode>\
             <faultstring>Order {} does not exist</faultstring></soap:Fault>",
            xml_escape(&id)
        );
        return respond(500, "text/xml; charset=utf-8", "legacy", envelope(fault));
    }
    // When this answer was made: different in every answer, which ficus learns to ignore.
    let generated = generated_at();
    let order = format!(
        "<GetOrderResponse xmlns=\"urn:orders\"><Order><ORDER_NO>{id}</ORDER_NO><CUST_NO>C-{id}</CUST_NO>\
         <STATUS>S</STATUS><TOTAL_CENTS>4498</TOTAL_CENTS><CREATED>20240229143000</CREATED>\
         <GENERATED_AT>{generated}</GENERATED_AT>\
         <SERVED_BY>legacy</SERVED_BY><Lines><Line><SKU>A-1</SKU><QTY>2</QTY></Line></Lines></Order>\
         </GetOrderResponse>"
    );
    respond(200, "text/xml; charset=utf-8", "legacy", envelope(order))
}

/// The WSDL as an ASMX service publishes its own: with the address it answers on.
fn orders_wsdl(local: SocketAddr) -> Response<Full<Bytes>> {
    let body = ORDERS_WSDL.replace(LEGACY_ADDR, &local.to_string());
    respond(200, "text/xml; charset=utf-8", "legacy", body)
}

/// The modern order service: the same order, natively in the modern shape.
fn modern_order(id: &str) -> Response<Full<Bytes>> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id == "404" {
        let body = serde_json::json!({
            "type": "urn:ficus:problem:soap-fault", "title": "Not Found", "status": 404,
            "detail": format!("Order {id} does not exist"), "fault_code": "Client.NotFound",
        });
        return respond(404, "application/problem+json", "modern", body.to_string());
    }
    let body = serde_json::json!({
        "id": id, "customer_id": format!("C-{id}"), "status": "shipped", "total": "44.98",
        "created_at": "2024-02-29T14:30:00+01:00", "served_by": "modern",
        "generated_at": generated_at(),
        "lines": [{"sku": "A-1", "quantity": 2}],
    });
    respond(200, "application/json", "modern", format!("{body}\n"))
}

/// Now, to the nanosecond: two answers made back to back still differ.
fn generated_at() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What `ficus demo` prints once it is up. Tests read the first lines (`  ficus  http://…`,
/// `  admin  http://…`, `  demo IdP JWKS  http://…`) to find a demo started on port 0.
pub fn banner(public: SocketAddr, admin: SocketAddr, a: &Addrs) -> String {
    let (legacy, modern, idp) = (a.legacy, a.modern, a.idp);
    // Only a demo on another IdP address needs the flag: the default finds the default demo.
    let token_cmd = if idp.to_string() == IDP_ADDR {
        "ficus demo token".to_string()
    } else {
        format!("ficus demo token --idp {idp}")
    };
    format!(
        "\nficus demo is running.\n\
         \n  ficus          http://{public}\n  admin          http://{admin}\n  legacy backend http://{legacy}\n  modern backend http://{modern}\n  demo IdP JWKS  http://{idp}/.well-known/jwks.json\n\
         \nTry:\n  curl -i http://{public}/api/customers/42      # still served by legacy (XML), rate-limited\n  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' http://{public}/api/customers/42; done  # 5 pass, then 429\n  curl -i http://{public}/api/orders/7 -H 'X-User: alice'  # mid-migration: alice is on legacy, which speaks SOAP; ficus translates to JSON\n  curl -i http://{public}/api/orders/7 -H 'X-User: bob'    # bob is on modern (JSON): the same shape\n  curl -i http://{public}/api/orders/404 -H 'X-User: alice'  # a SOAP Fault becomes problem+json 404\n  curl -i http://{public}/api/orders/7 -H 'X-User: beta-tester'  # a cohort: always modern (JSON)\n  curl -s 'http://{admin}/admin/diffs?route=orders'   # shadow comparisons, field by field\n  curl -s 'http://{admin}/admin/noise?route=orders'   # fields learned as noise (generated_at differs in every answer)\n  curl -s 'http://{admin}/admin/drift?route=orders'   # which fields mismatch, how often and how, over 10 minutes\n  curl -s http://{admin}/admin/upstreams\n  curl -s 'http://{legacy}/OrderService.asmx?wsdl' > orders.wsdl; ficus import wsdl orders.wsdl  # the legacy service's WSDL as routes\n  curl -i http://{public}/public/../api/orders/7  # normalised before routing\n  TOKEN=$({token_cmd} --sub alice --scope orders:read)   # from the demo IdP on {idp}\n  curl -i http://{public}/api/me                                  # 401: the route needs a token\n  curl -i http://{public}/api/me -H \"Authorization: Bearer $TOKEN\"  # 200, with scope orders:read\n  curl -s http://{admin}/metrics | grep ficus_requests_total\n  curl -s http://{admin}/admin/config\n  FICUS_ADMIN_TOKEN=... is needed for: curl -XPOST -H 'Authorization: Bearer ...' http://{admin}/admin/reload\n\
         \nCtrl-C stops it (in-flight requests are drained).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_address_is_in_the_embedded_config() {
        // config_for replaces these strings: one the config stopped using would silently stay.
        for a in [LISTEN_ADDR, ADMIN_ADDR, LEGACY_ADDR, MODERN_ADDR, IDP_ADDR] {
            assert!(DEMO_CONFIG.contains(a), "{a} is not in config/demo.yaml");
        }
        assert!(DEMO_CONFIG.contains(DEMO_ISSUER));
        assert_eq!(config_for(&Addrs::default()), DEMO_CONFIG);
    }

    #[test]
    fn config_for_moves_every_part_and_compiles() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        // The new listen address is another default's: it must not be replaced a second time.
        let addrs = Addrs {
            listen: a(9901),
            admin: a(28080),
            legacy: a(28001),
            modern: a(28002),
            idp: a(28003),
        };
        let text = config_for(&addrs);
        for old in [LISTEN_ADDR, LEGACY_ADDR, MODERN_ADDR, IDP_ADDR] {
            assert!(!text.contains(old), "{old} left in:\n{text}");
        }
        assert!(text.contains("bind: 127.0.0.1:9901\n"), "{text}");
        assert!(text.contains("bind: 127.0.0.1:28080\n"), "{text}");
        assert!(text.contains("issuer: http://127.0.0.1:28003/"), "{text}");
        assert!(text.contains("jwks_url: http://127.0.0.1:28003/.well-known/jwks.json"));
        assert!(text.contains("\"http://127.0.0.1:28001\""));
        let src = ConfigSource::Embedded {
            name: "demo".into(),
            text: Box::leak(text.into_boxed_str()),
            base_dir: std::env::current_dir().unwrap_or_default(),
        };
        let compiled = src.read().and_then(|t| crate::config::compile::standalone(&t));
        assert!(compiled.is_ok(), "{:?}", compiled.err().map(|e| e.0));
    }
}
