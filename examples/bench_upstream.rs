//! The minimal upstream the load tests run ficus against: answers every request with a short
//! fixed body, on one thread, so the measurement is about the proxy.
//!
//! `cargo run --release --example bench_upstream -- 127.0.0.1:18090 [BODY_FILE CONTENT_TYPE]`
//! (with a file: that body, with that Content-Type, for the translation load test).

use std::convert::Infallible;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body: &'static [u8] = match std::env::args().nth(2) {
        Some(f) => Vec::leak(std::fs::read(f)?),
        None => b"hello from upstream\n",
    };
    let ctype: &'static str = String::leak(std::env::args().nth(3).unwrap_or_else(|| "text/plain".into()));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("bench upstream on {addr}");
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r = Response::new(Full::new(Bytes::from_static(body)));
                    if let Ok(v) = http::HeaderValue::from_str(ctype) {
                        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                    }
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
