//! Baseline for the load tests: the smallest hyper-util reverse proxy (no routing, no limits,
//! no metrics), to show how much of ficus's per-request CPU is the HTTP stack itself.
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:18085 127.0.0.1:18080`

use std::convert::Infallible;

use http::Uri;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18085".into());
    let upstream = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    let uri: Result<Uri, _> = format!("http://{upstream}{pq}").parse();
                    async move {
                        if let Ok(u) = uri {
                            *req.uri_mut() = u;
                        }
                        match client.request(req).await {
                            Ok(r) => Ok::<_, Infallible>(r.map(http_body_util::Either::Left)),
                            Err(_) => Ok(hyper::Response::new(http_body_util::Either::Right(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))),
                        }
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
