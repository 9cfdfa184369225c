//! Defence in depth: a panic while one request is handled becomes that request's 500
//! problem+json and a `ficus_panics_total` increment, instead of a dropped HTTP/1.1 connection
//! (the client sees an empty reply) or a reset h2 stream. Every parser on the request path is
//! property-tested; this is for the panic they missed.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::gateway::shared::Shared;
use crate::pipeline;
use crate::pipeline::body::ResponseBody;
use crate::pipeline::context::{self, X_REQUEST_ID};
use crate::pipeline::request::ConnInfo;

/// [`pipeline::handle`], with a panic answered instead of unwinding into hyper.
///
/// `AssertUnwindSafe`: what a panicking request leaves behind is shared state behind atomics,
/// `parking_lot` locks (which do not poison) and guards whose `Drop` runs during the unwind; the
/// next request must not see a broken invariant any more than it would after an error return.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    // Kept for the answer in case the request is lost to a panic (a shared buffer, cheap). The
    // pipeline's own observation guard writes the metrics and the access-log line as it unwinds.
    let request_id = req.headers().get(X_REQUEST_ID).cloned();
    match AssertUnwindSafe(run(&shared, &conn, req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(payload) => {
            let request_id = request_id
                .filter(|v| context::valid_request_id(v.as_bytes()))
                .unwrap_or_else(context::new_request_id);
            let e = ProxyError::Internal(panic_message(payload.as_ref()));
            shared.metrics().panics().increment(1);
            tracing::error!(request_id = ?request_id, error = %e, "a request panicked");
            e.to_response(Some(&request_id))
        }
    }
}

/// Not an async fn: one would keep a second copy of the request in every request's future.
#[cfg(not(test))]
fn run<'a>(
    shared: &'a Shared,
    conn: &'a ConnInfo,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Response<ResponseBody>> + 'a {
    pipeline::handle(shared, conn, req)
}

/// The crate's own unit tests need a request that panics, and no input may make one in the real
/// pipeline. This hook exists only under `cfg(test)`: neither the binary nor the end-to-end tests
/// (which link the library built without `cfg(test)`) contain it.
#[cfg(test)]
async fn run(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    if req.uri().path() == tests::PANIC_PATH {
        panic!("the cfg(test) hook panics on purpose");
    }
    pipeline::handle(shared, conn, req).await
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;

    use crate::config::ConfigSource;
    use crate::gateway::Gateway;

    pub(super) const PANIC_PATH: &str = "/__ficus_test/panic";

    const CONFIG: &str = "\
log: { level: error, access_log: true }
listeners: [{ name: main, bind: '127.0.0.1:0' }]
admin: { bind: '127.0.0.1:0' }
reload: { watch: false }
upstreams:
  app: { endpoints: ['http://127.0.0.1:9'] }
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: app
";

    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        path: &str,
    ) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
        sender.ready().await.expect("the connection is still open");
        let req = http::Request::get(path)
            .header("host", "ficus.test")
            .body(Empty::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("an answer, not a dropped connection");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let doc = serde_json::from_slice(&body).unwrap_or_default();
        (parts.status, parts.headers, doc)
    }

    async fn start() -> Gateway {
        Gateway::start(ConfigSource::Embedded {
            name: "contain-test.yaml".into(),
            text: CONFIG,
            base_dir: PathBuf::from("."),
        })
        .await
        .unwrap()
    }

    fn panics_total(metrics: &str) -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with("ficus_panics_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    async fn admin_metrics(gw: &Gateway) -> String {
        let tcp = TcpStream::connect(gw.admin_addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/metrics")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_panicking_request_is_a_500_problem_and_the_connection_serves_the_next_one() {
        let gw = start().await;
        assert_eq!(
            panics_total(&admin_metrics(&gw).await),
            Some(0.0),
            "registered up front"
        );

        let tcp = TcpStream::connect(gw.addr("main").unwrap()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);

        let (status, headers, doc) = get(&mut sender, PANIC_PATH).await;
        assert_eq!(status, 500, "{doc}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(doc["type"], "urn:ficus:problem:internal-error");
        assert!(
            !doc["detail"].as_str().unwrap().contains("on purpose"),
            "the panic message stays in the log: {doc}"
        );
        assert!(headers.contains_key("x-request-id"));

        // The same keep-alive connection answers the next request through the real pipeline.
        let (status, _, doc) = get(&mut sender, "/nothing-here").await;
        assert_eq!(status, 404, "{doc}");
        assert_eq!(doc["type"], "urn:ficus:problem:no-route");
        assert!(!conn.is_finished());

        assert_eq!(panics_total(&admin_metrics(&gw).await), Some(1.0));
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_panicking_h2_stream_is_a_500_and_the_connection_serves_the_next_stream() {
        let gw = start().await;
        let tcp = TcpStream::connect(gw.addr("main").unwrap()).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for (path, want) in [(PANIC_PATH, 500), ("/nothing-here", 404), (PANIC_PATH, 500)] {
            sender.ready().await.expect("the h2 connection is still open");
            let req = http::Request::get(format!("http://ficus.test{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender
                .send_request(req)
                .await
                .expect("an answer, not a reset stream");
            assert_eq!(resp.status(), want, "{path}");
        }
        assert_eq!(panics_total(&admin_metrics(&gw).await), Some(2.0));
        gw.shutdown().await;
    }
}
