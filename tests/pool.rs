//! The upstream connection pool: reuse, connections the upstream closed, the idle timeout and
//! the idle cap, seen from a real upstream that counts its TCP connections.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream that counts the connections it accepted and those still open.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Counted {
    /// `keep_alive: false` answers each request with `Connection: close` and closes;
    /// `delay` holds each answer that long.
    async fn start(keep_alive: bool, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let body = format!("served {}", req.uri().path());
                        Ok::<_, Infallible>(Response::new(full(body)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn config(upstream: SocketAddr, pool: &str) -> String {
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners:
  - {{ name: main, bind: '127.0.0.1:0' }}
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  app: {{ endpoints: ['http://{upstream}'], pool: {{ {pool} }} }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}
"
    )
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = Counted::start(true, Duration::ZERO).await;
    let f = Ficus::start(&config(up.addr, "")).await;
    for i in 0..20 {
        let a = get(&f.url(&format!("/n/{i}"))).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), format!("served /n/{i}"));
    }
    assert_eq!(
        up.accepted(),
        1,
        "every request after the first reused the pooled connection"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_answer_costs_no_request() {
    let up = Counted::start(false, Duration::ZERO).await;
    let f = Ficus::start(&config(up.addr, "")).await;
    for i in 0..10 {
        let a = get(&f.url(&format!("/c/{i}"))).await;
        assert_eq!(
            a.status, 200,
            "request {i} after the upstream closed the last connection"
        );
        assert_eq!(a.text(), format!("served /c/{i}"));
    }
    assert_eq!(up.accepted(), 10, "a closed connection is never handed out again");
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() {
    let up = Counted::start(true, Duration::ZERO).await;
    let f = Ficus::start(&config(up.addr, "idle_timeout: 300ms")).await;
    assert_eq!(get(&f.url("/")).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async { up.open() == 0 }).await,
        "the idle connection is still open"
    );
    assert_eq!(get(&f.url("/again")).await.status, 200);
    assert_eq!(up.accepted(), 2, "the expired connection was replaced");
}

#[tokio::test]
async fn no_more_idle_connections_are_kept_than_max_idle_per_endpoint() {
    let up = Counted::start(true, Duration::from_millis(200)).await;
    let f = Ficus::start(&config(up.addr, "max_idle_per_endpoint: 2")).await;
    let calls = (0..6).map(|i| {
        let url = f.url(&format!("/p/{i}"));
        async move { get(&url).await.status }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.accepted(), 6, "six concurrent requests need six connections");
    assert!(
        eventually(Duration::from_secs(5), || async { up.open() == 2 }).await,
        "{} upstream connections open, 2 expected",
        up.open()
    );
    // The kept ones serve the next requests.
    for i in 0..4 {
        assert_eq!(get(&f.url(&format!("/q/{i}"))).await.status, 200);
    }
    assert_eq!(up.accepted(), 6);
}

/// A hand-written HTTP/1.1 upstream that answers every request with `head` and the body
/// `hello`, and counts its connections. It never closes a connection itself, whatever its
/// answer says: the connection count tells whether the proxy reused one.
async fn raw_upstream(head: &'static str) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // GETs without bodies: each blank line ends one request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\nhello");
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn an_upstream_connection_header_is_read_token_by_token() {
    let cases = [
        ("Content-Length: 5\r\nConnection: Keep-Alive", 1),
        ("Content-Length: 5\r\nConnection: keep-alive ", 1),
        ("Content-Length: 5\r\nConnection: Close", 3),
        ("Content-Length: 5\r\nConnection:  close", 3),
        ("Content-Length: 5\r\nConnection: keep-alive, close", 3),
        ("Content-Length: 5\r\nConnection: x-trace, Close", 3),
    ];
    for (head, connections) in cases {
        let (addr, accepted, task) = raw_upstream(head).await;
        let f = Ficus::start(&config(addr, "")).await;
        for i in 0..3 {
            let a = tokio::time::timeout(Duration::from_secs(5), get(&f.url("/")))
                .await
                .unwrap_or_else(|_| panic!("{head:?}: request {i} hung"));
            assert_eq!(a.status, 200, "{head:?}: request {i}");
            assert_eq!(a.text(), "hello", "{head:?}: request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{head:?}");
        task.abort();
    }
}

#[tokio::test]
async fn an_upstream_content_length_list_must_agree() {
    // As one line and as separate lines (each line a value of digits alone).
    for head in [
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 005",
    ] {
        let (addr, _, task) = raw_upstream(head).await;
        let f = Ficus::start(&config(addr, "")).await;
        let a = get(&f.url("/")).await;
        assert_eq!(a.status, 200, "{head:?}: equal values are one length");
        assert_eq!(a.text(), "hello", "{head:?}");
        task.abort();
    }
    for head in ["Content-Length: 5, 6", "Content-Length: 5\r\nContent-Length: 6"] {
        let (addr, _, task) = raw_upstream(head).await;
        let f = Ficus::start(&config(addr, "")).await;
        get(&f.url("/")).await.assert_problem(502, "upstream-failed");
        task.abort();
    }
}
