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
                let svc = hyper::service::service_fn(move |req| async move {
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

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn banner(public: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "\nficus demo is running.\n\
         \n  ficus          http://{public}\n  admin          http://{admin}\n  legacy backend http://{LEGACY_ADDR}\n  modern backend http://{MODERN_ADDR}\n  demo IdP JWKS  http://{IDP_ADDR}/.well-known/jwks.json\n\
         \nTry:\n  curl -i http://{public}/api/customers/42      # still served by legacy (XML), rate-limited\n  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' http://{public}/api/customers/42; done  # 5 pass, then 429\n  curl -i http://{public}/api/orders/7 -H 'X-User: alice'  # mid-migration: alice's side is sticky\n  curl -i http://{public}/api/orders/7 -H 'X-User: beta-tester'  # a cohort: always modern (JSON)\n  curl -s 'http://{admin}/admin/diffs?route=orders'   # shadow comparisons, field by field\n  curl -s http://{admin}/admin/upstreams\n  curl -i http://{public}/public/../api/orders/7  # normalised before routing\n  TOKEN=$(ficus demo token --sub alice --scope orders:read)   # from the demo IdP on {IDP_ADDR}\n  curl -i http://{public}/api/me                                  # 401: the route needs a token\n  curl -i http://{public}/api/me -H \"Authorization: Bearer $TOKEN\"  # 200, with scope orders:read\n  curl -s http://{admin}/metrics | grep ficus_requests_total\n  curl -s http://{admin}/admin/config\n  FICUS_ADMIN_TOKEN=... is needed for: curl -XPOST -H 'Authorization: Bearer ...' http://{admin}/admin/reload\n\
         \nCtrl-C stops it (in-flight requests are drained).\n"
    )
}
