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
pub const LEGACY_ADDR: &str = "127.0.0.1:18001";
pub const MODERN_ADDR: &str = "127.0.0.1:18002";
/// The demo identity provider: its JWKS, and the mint endpoint `ficus demo token` calls.
pub const IDP_ADDR: &str = "127.0.0.1:18003";
/// Must match `identity.jwt.demo` in config/demo.yaml.
pub const DEMO_ISSUER: &str = "http://127.0.0.1:18003/";
pub const DEMO_AUDIENCE: &str = "ficus-demo";

pub use idp::{request_token, spawn_idp, DemoIdpError};

pub fn source() -> ConfigSource {
    ConfigSource::Embedded {
        name: "config/demo.yaml (embedded)".into(),
        text: DEMO_CONFIG,
        base_dir: std::env::current_dir().unwrap_or_default(),
    }
}

#[derive(Clone, Copy)]
pub enum Flavor {
    /// Answers in XML with old field names, as the system being replaced does.
    Legacy,
    /// Answers in JSON.
    Modern,
}

/// Starts a demo backend; it runs until the process exits.
pub async fn spawn_backend(addr: &str, flavor: Flavor) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    if matches!(flavor, Flavor::Legacy) && req.uri().path() == "/OrderService.asmx" {
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
    let order = format!(
        "<GetOrderResponse xmlns=\"urn:orders\"><Order><ORDER_NO>{id}</ORDER_NO><CUST_NO>C-{id}</CUST_NO>\
         <STATUS>S</STATUS><TOTAL_CENTS>4498</TOTAL_CENTS><CREATED>20240229143000</CREATED>\
         <SERVED_BY>legacy</SERVED_BY><Lines><Line><SKU>A-1</SKU><QTY>2</QTY></Line></Lines></Order>\
         </GetOrderResponse>"
    );
    respond(200, "text/xml; charset=utf-8", "legacy", envelope(order))
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
        "lines": [{"sku": "A-1", "quantity": 2}],
    });
    respond(200, "application/json", "modern", format!("{body}\n"))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn banner(public: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "\nficus demo is running.\n\
         \n  ficus          http://{public}\n  admin          http://{admin}\n  legacy backend http://{LEGACY_ADDR}\n  modern backend http://{MODERN_ADDR}\n  demo IdP JWKS  http://{IDP_ADDR}/.well-known/jwks.json\n\
         \nTry:\n  curl -i http://{public}/api/customers/42      # still served by legacy (XML), rate-limited\n  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' http://{public}/api/customers/42; done  # 5 pass, then 429\n  curl -i http://{public}/api/orders/7 -H 'X-User: alice'  # mid-migration: alice is on legacy, which speaks SOAP; ficus translates to JSON\n  curl -i http://{public}/api/orders/7 -H 'X-User: bob'    # bob is on modern (JSON): the same shape\n  curl -i http://{public}/api/orders/404 -H 'X-User: alice'  # a SOAP Fault becomes problem+json 404\n  curl -i http://{public}/api/orders/7 -H 'X-User: beta-tester'  # a cohort: always modern (JSON)\n  curl -s 'http://{admin}/admin/diffs?route=orders'   # shadow comparisons, field by field\n  curl -s http://{admin}/admin/upstreams\n  curl -i http://{public}/public/../api/orders/7  # normalised before routing\n  TOKEN=$(ficus demo token --sub alice --scope orders:read)   # from the demo IdP on {IDP_ADDR}\n  curl -i http://{public}/api/me                                  # 401: the route needs a token\n  curl -i http://{public}/api/me -H \"Authorization: Bearer $TOKEN\"  # 200, with scope orders:read\n  curl -s http://{admin}/metrics | grep ficus_requests_total\n  curl -s http://{admin}/admin/config\n  FICUS_ADMIN_TOKEN=... is needed for: curl -XPOST -H 'Authorization: Bearer ...' http://{admin}/admin/reload\n\
         \nCtrl-C stops it (in-flight requests are drained).\n"
    )
}
