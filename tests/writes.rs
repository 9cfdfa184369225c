//! Write buffering end to end, against a real `redis-server` and real upstreams: writes queued
//! (202) while legacy is down are applied exactly once, in order per key, when it is back; a
//! poison write goes to the dead-letter queue and back through the admin API; Redis down means
//! 503; the status resource is its principal's only; the real binary killed with SIGKILL
//! mid-replay loses nothing; two instances share one queue.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use support::*;
use tokio::net::TcpListener;

const TOKEN_ENV: &str = "FICUS_TEST_WRITES_TOKEN";
const TOKEN: &str = "writes-admin-token";

// ---------------------------------------------------------------- the backend

/// What the backend saw: every delivery, and the writes it applied (the first delivery of
/// each Idempotency-Key: it deduplicates, as the issue expects of a backend behind ficus).
#[derive(Default)]
struct Ledger {
    deliveries: Vec<String>,
    applied: Vec<Applied>,
    seen: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
struct Applied {
    key: String,
    account: String,
    seq: u64,
}

/// A legacy backend on a fixed port (so it can be "down", then started where ficus expects
/// it), answering 201 to every write, after `delay`; a body containing `poison` gets 500 until
/// `fixed` is set.
struct Backend {
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start_on(
        port: u16,
        delay: Duration,
        ledger: Arc<Mutex<Ledger>>,
        fixed: Arc<AtomicBool>,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (l, f) = (ledger.clone(), fixed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (l, f) = (l.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (l, f) = (l.clone(), f.clone());
                        async move { Ok::<_, Infallible>(backend(req, delay, &l, &f).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { ledger, task }
    }

    fn applied(&self) -> Vec<Applied> {
        self.ledger.lock().applied.clone()
    }

    fn deliveries(&self) -> usize {
        self.ledger.lock().deliveries.len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(
    req: Request<Incoming>,
    delay: Duration,
    l: &Mutex<Ledger>,
    fixed: &AtomicBool,
) -> Response<Body> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let account = req
        .headers()
        .get("x-account")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    tokio::time::sleep(delay).await;
    if method == http::Method::GET {
        return Response::new(full("ok"));
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if text.contains("poison") && !fixed.load(Ordering::SeqCst) {
        let mut r = Response::new(full("{\"error\":\"cannot digest\"}"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let seq = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(0);
    let mut g = l.lock();
    g.deliveries.push(key.clone());
    let n = g.seen.len();
    if !g.seen.contains_key(&key) {
        g.seen.insert(key.clone(), n);
        g.applied.push(Applied {
            key: key.clone(),
            account,
            seq,
        });
    }
    let mut r = Response::new(full(format!("{{\"order\":\"{key}\"}}")));
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

// ---------------------------------------------------------------- config and requests

fn config(legacy_port: u16, redis: &str, route_extra: &str, buffer: &str) -> String {
    format!(
        "log: {{ level: warn, access_log: false }}\n\
         listeners: [{{ name: main, bind: '127.0.0.1:0' }}]\n\
         admin: {{ bind: '127.0.0.1:0', token_env: {TOKEN_ENV}, audit_log: audit.log }}\n\
         reload: {{ watch: false }}\n\
         upstreams:\n  legacy: {{ endpoints: ['http://127.0.0.1:{legacy_port}'] }}\n\
         routes:\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: legacy\n{route_extra}\
         \x20   buffer_writes: {{ max_attempts: 3, partition_key: 'header:x-account', backoff_base: 20ms, backoff_max: 200ms{buffer} }}\n\
         queue_store: {{ redis_urls: ['{redis}'], partitions: 8, claim_idle: 1s, poll_interval: 50ms }}\n"
    )
}

fn write(url: String, key: Option<&str>, account: &str, body: String) -> Request<Body> {
    let mut b = Request::post(url)
        .header("x-account", account)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(full(body)).unwrap()
}

/// Queues `n` writes over `accounts` accounts (`seq` counts per account), asserting each 202.
/// Returns the status-resource paths.
async fn queue_writes(base: &str, n: usize, accounts: usize, prefix: &str) -> Vec<String> {
    let c = client();
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut locations = Vec::new();
    for i in 0..n {
        let account = format!("acct-{}", i % accounts);
        let s = seq.entry(account.clone()).or_default();
        *s += 1;
        let body = format!("{{\"account\":\"{account}\",\"seq\":{s}}}");
        let key = format!("{prefix}-{i}");
        let a = send(&c, write(format!("{base}/orders"), Some(&key), &account, body)).await;
        a.assert_problem(202, "write-queued");
        let loc = a.headers["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with("/ficus/writes/"), "{loc}");
        assert_eq!(a.json()["status_url"], loc.as_str());
        locations.push(loc);
    }
    locations
}

/// Every queued write applied exactly once, and per account in the order it was sent.
fn assert_complete_and_ordered(applied: &[Applied], n: usize, prefix: &str) {
    let keys: std::collections::HashSet<&str> = applied.iter().map(|a| a.key.as_str()).collect();
    for i in 0..n {
        assert!(
            keys.contains(format!("{prefix}-{i}").as_str()),
            "{prefix}-{i} was never applied"
        );
    }
    assert_eq!(applied.len(), n, "applied more writes than were sent");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for a in applied {
        let prev = last.insert(&a.account, a.seq).unwrap_or(0);
        assert!(a.seq > prev, "{} applied seq {} after {prev}", a.account, a.seq);
    }
}

async fn admin_metrics(f: &Ficus) -> String {
    get(&f.admin_url("/metrics")).await.text()
}

fn counter(text: &str, name: &str) -> f64 {
    metric(text, &format!("{name}{{route=\"orders\"}}")).unwrap_or(0.0)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_while_legacy_is_down_are_applied_once_in_order_per_key_when_it_is_back() {
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let base = format!("http://{}", f.addr);
    let locations = queue_writes(&base, 60, 4, "k").await;

    // Still down: the status says queued.
    let st = get(&f.url(&locations[0])).await;
    assert_eq!(st.status, 200, "{}", st.text());
    assert!(
        matches!(st.json()["state"].as_str(), Some("queued" | "replaying")),
        "{}",
        st.text()
    );

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(
        eventually(Duration::from_secs(30), || async { up.applied().len() >= 60 }).await,
        "only {} of 60 applied",
        up.applied().len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_complete_and_ordered(&up.applied(), 60, "k");
    assert_eq!(up.deliveries(), 60, "a write was sent twice");

    // Its status shows the final answer.
    let done = eventually(Duration::from_secs(5), || async {
        get(&f.url(&locations[0])).await.json()["state"] == "done"
    })
    .await;
    assert!(done);
    let st = get(&f.url(&locations[0])).await.json();
    assert_eq!(st["result"]["status"], 201, "{st}");
    assert_eq!(st["result"]["body"], "{\"order\":\"k-0\"}", "{st}");

    // Healthy now: a write goes straight through and is not queued.
    let a = send(
        &client(),
        write(
            f.url("/orders"),
            Some("live-1"),
            "acct-0",
            "{\"seq\":1000}".into(),
        ),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let m = admin_metrics(&f).await;
    assert_eq!(counter(&m, "ficus_writes_queued_total"), 60.0, "{m}");
    assert_eq!(counter(&m, "ficus_writes_succeeded_total"), 60.0, "{m}");
    assert_eq!(counter(&m, "ficus_writes_dead_lettered_total"), 0.0, "{m}");
    let drained = eventually(Duration::from_secs(5), || async {
        counter(&admin_metrics(&f).await, "ficus_writes_queue_depth") == 0.0
    })
    .await;
    assert!(drained);
    f.shutdown().await;
}

/// A legacy SOAP service on a fixed port: keeps what it received (path, SOAPAction, body) and
/// answers a CreateOrderResponse envelope, or a `Client.NotFound` Fault (HTTP 500, as SOAP 1.1
/// does) for an order of an unknown account.
async fn soap_backend(
    port: u16,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let action = req
                            .headers()
                            .get("soapaction")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        seen.lock().push((path, action, body.clone()));
                        let env = |inner: &str| {
                            format!(
                                "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
                            )
                        };
                        let (status, xml) = if body.contains("<account>nobody</account>") {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                env("<soap:Fault><faultcode>soap:Client.NotFound</faultcode><faultstring>no such account</faultstring></soap:Fault>"),
                            )
                        } else {
                            (
                                StatusCode::OK,
                                env("<CreateOrderResponse xmlns=\"urn:orders\"><OrderId>77</OrderId></CreateOrderResponse>"),
                            )
                        };
                        let mut r = Response::new(full(xml));
                        *r.status_mut() = status;
                        r.headers_mut()
                            .insert("content-type", "text/xml; charset=utf-8".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_soap_route_is_queued_translated_and_its_answer_translated_back() {
    let redis = Redis::start().await;
    let port = free_port();
    let yaml = config(port, &redis.url, "    transform: soap\n", "")
        + "transforms:\n  soap:\n    request:\n      path: /OrderService.asmx\n      ops:\n\
           \x20       - soap_wrap: { version: '1.1', action: 'urn:orders#CreateOrder', body_element: CreateOrder, namespace: 'urn:orders' }\n\
           \x20   response:\n      content_types: [text/xml]\n      ops:\n\
           \x20       - soap_unwrap: { fault_status: { Client.NotFound: 404 } }\n";
    let f = Ficus::start(&yaml).await;
    let c = client();
    let mut locations = Vec::new();
    for (key, account) in [("soap-1", "acct-1"), ("soap-2", "nobody")] {
        let body = format!("{{\"account\":\"{account}\",\"seq\":1}}");
        let a = send(&c, write(f.url("/orders"), Some(key), account, body)).await;
        a.assert_problem(202, "write-queued");
        locations.push(a.headers["location"].to_str().unwrap().to_string());
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = soap_backend(port, seen.clone()).await;
    let finished = eventually(Duration::from_secs(30), || async {
        let mut all = true;
        for l in &locations {
            all &= get(&f.url(l)).await.json()["state"] == "done";
        }
        all
    })
    .await;
    assert!(finished, "{}", get(&f.url(&locations[1])).await.text());

    // The legacy service got the envelope, exactly once per write.
    let got = seen.lock().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    for (path, action, body) in &got {
        assert_eq!(path, "/OrderService.asmx");
        assert_eq!(action, "\"urn:orders#CreateOrder\"");
        assert!(body.contains("<CreateOrder xmlns=\"urn:orders\">"), "{body}");
    }
    // Two accounts, two partitions: replayed in either order.
    assert!(
        got.iter()
            .any(|(_, _, b)| b.contains("<account>acct-1</account>")),
        "{got:?}"
    );

    // Each status shows the answer as the client would have got it: JSON, and the Fault as
    // the 404 its fault_status says (a 4xx: done, not retried into the dead-letter queue).
    let ok = get(&f.url(&locations[0])).await.json();
    assert_eq!(ok["result"]["status"], 200, "{ok}");
    let body: serde_json::Value = serde_json::from_str(ok["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["OrderId"], "77", "{ok}");
    let fault = get(&f.url(&locations[1])).await.json();
    assert_eq!(fault["result"]["status"], 404, "{fault}");
    assert!(
        fault["result"]["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/problem+json")),
        "{fault}"
    );
    assert_eq!(fault["attempts"], 0, "{fault}");
    up.abort();
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_the_same_key_is_queued_once() {
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    let first = send(
        &c,
        write(f.url("/orders"), Some("same"), "a", "{\"seq\":1}".into()),
    )
    .await;
    let again = send(
        &c,
        write(f.url("/orders"), Some("same"), "a", "{\"seq\":1}".into()),
    )
    .await;
    first.assert_problem(202, "write-queued");
    again.assert_problem(202, "write-queued");
    assert_eq!(first.headers["location"], again.headers["location"]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(eventually(Duration::from_secs(20), || async { up.deliveries() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.deliveries(), 1);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_idempotency_key_is_refused_with_400_up_or_down() {
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    send(&c, write(f.url("/orders"), None, "a", "{}".into()))
        .await
        .assert_problem(400, "idempotency-key-missing");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    send(&c, write(f.url("/orders"), None, "a", "{}".into()))
        .await
        .assert_problem(400, "idempotency-key-missing");
    // Reads are not buffered and need no key.
    assert_eq!(get(&f.url("/orders/1")).await.status, 200);
    assert_eq!(up.deliveries(), 0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_a_write_must_be_queued_is_503_never_202() {
    let mut redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    redis.stop();
    let c = client();
    let a = send(
        &c,
        write(f.url("/orders"), Some("r-1"), "a", "{\"seq\":1}".into()),
    )
    .await;
    a.assert_problem(503, "write-queue-unavailable");
    assert!(a.headers.get("location").is_none());
    // A healthy upstream needs no Redis at all.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    let a = send(
        &c,
        write(f.url("/orders"), Some("r-2"), "a", "{\"seq\":2}".into()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(up.deliveries(), 1);
    f.shutdown().await;
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_resource_is_visible_only_to_the_principal_that_queued_the_write() {
    let redis = Redis::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "keys:\n  - {{ id: alice, owner: a, sha256: '{}' }}\n  - {{ id: bob, owner: b, sha256: '{}' }}\n",
        sha256_hex("alice-key"),
        sha256_hex("bob-key")
    );
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let yaml = config(port, &redis.url, "    identity: { api_keys: partners }\n", "")
        + "identity:\n  api_keys:\n    partners: { keys_file: keys.yaml }\n";
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let c = client();
    let mut req = write(f.url("/orders"), Some("p-1"), "a", "{\"seq\":1}".into());
    req.headers_mut()
        .insert("x-api-key", "alice-key".parse().unwrap());
    let a = send(&c, req).await;
    a.assert_problem(202, "write-queued");
    let loc = a.headers["location"].to_str().unwrap().to_string();
    let status_as = |key: Option<&'static str>| {
        let mut b = Request::get(f.url(&loc));
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        send(&c, b.body(empty()).unwrap())
    };
    let mine = status_as(Some("alice-key")).await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(mine.json()["route"], "orders");
    status_as(Some("bob-key"))
        .await
        .assert_problem(404, "write-not-found");
    status_as(None).await.assert_problem(404, "write-not-found");
    status_as(Some("wrong"))
        .await
        .assert_problem(404, "write-not-found");
    get(&f.url("/ficus/writes/0123456789abcdef0123456789abcdef"))
        .await
        .assert_problem(404, "write-not-found");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_write_is_dead_lettered_then_replayed_from_the_admin_api_after_the_fix() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    let poison = |key: &str| {
        write(
            f.url("/orders?token=t0p"),
            Some(key),
            "p",
            "{\"card\":\"4111-secret\",\"note\":\"poison\"}".into(),
        )
    };
    let a = send(&c, poison("bad-1")).await;
    a.assert_problem(202, "write-queued");
    let loc = a.headers["location"].to_str().unwrap().to_string();
    let id = loc.rsplit('/').next().unwrap().to_string();
    let b = send(&c, poison("bad-2")).await;
    let loc2 = b.headers["location"].to_str().unwrap().to_string();
    let id2 = loc2.rsplit('/').next().unwrap().to_string();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let fixed = Arc::new(AtomicBool::new(false));
    let up = Backend::start_on(port, Duration::ZERO, ledger, fixed.clone()).await;
    let dead = eventually(Duration::from_secs(20), || async {
        get(&f.url(&loc2)).await.json()["state"] == "dead_lettered"
    })
    .await;
    assert!(dead, "{}", get(&f.url(&loc2)).await.text());
    let st = get(&f.url(&loc)).await.json();
    assert_eq!(st["state"], "dead_lettered", "{st}");
    assert_eq!(st["attempts"], 3, "{st}");
    assert_eq!(st["errors"][2]["status"], 500, "{st}");

    let list = get(&f.admin_url("/admin/dlq?route=orders")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let doc = list.json();
    assert_eq!(doc["count"], 2, "{doc}");
    assert_eq!(doc["writes"][0]["id"], id.as_str(), "{doc}");
    assert_eq!(doc["writes"][0]["errors"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["writes"][0]["body"]["json"]["card"], "<a string>", "{doc}");
    for secret in ["4111-secret", "t0p", "poison"] {
        assert!(
            !list.text().contains(secret),
            "`{secret}` in the DLQ listing: {doc}"
        );
    }
    assert_eq!(get(&f.admin_url("/admin/dlq?route=nope")).await.status, 404);

    // Without the token: refused, and audited.
    let anon = send(
        &c,
        Request::post(f.admin_url(&format!("/admin/dlq/{id}/replay")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(anon.status, 401);

    fixed.store(true, Ordering::SeqCst);
    let admin = |path: String| {
        Request::post(f.admin_url(&path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(empty())
            .unwrap()
    };
    let r = send(&c, admin(format!("/admin/dlq/{id}/replay"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = eventually(Duration::from_secs(20), || async {
        get(&f.url(&loc)).await.json()["state"] == "done"
    })
    .await;
    assert!(done, "{}", get(&f.url(&loc)).await.text());
    assert_eq!(up.applied().len(), 1);
    assert_eq!(up.applied()[0].key, "bad-1");

    let d = send(&c, admin(format!("/admin/dlq/{id2}/drop"))).await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(get(&f.url(&loc2)).await.json()["state"], "dropped");
    assert_eq!(
        get(&f.admin_url("/admin/dlq?route=orders")).await.json()["count"],
        0
    );
    // Once gone, it is gone.
    assert_eq!(
        send(&c, admin(format!("/admin/dlq/{id2}/replay"))).await.status,
        404
    );

    let audit = std::fs::read_to_string(f.dir.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |action: &str, outcome: &str| {
        lines
            .iter()
            .any(|l| l["action"] == action && l["outcome"] == outcome)
    };
    assert!(find("dlq.replay", "denied"), "{audit}");
    assert!(find("dlq.replay", "ok"), "{audit}");
    assert!(find("dlq.drop", "ok"), "{audit}");
    let m = admin_metrics(&f).await;
    assert_eq!(counter(&m, "ficus_writes_dead_lettered_total"), 2.0, "{m}");
    f.shutdown().await;
}

/// Every partition stream of route `orders` (8 partitions in `config`).
fn queue_keys() -> Vec<String> {
    (0..8).map(|n| format!("ficus:writes:{{orders}}:q:{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_a_failed_enqueue_is_queued_and_applied() {
    let redis = Redis::start().await;
    let mut r = redis.conn().await;
    // Streams that cannot take an XADD: the dedupe key is taken, then queuing fails.
    for k in queue_keys() {
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg("not a stream")
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    let body = "{\"seq\":1}";
    send(&c, write(f.url("/orders"), Some("lost-1"), "a", body.into()))
        .await
        .assert_problem(503, "write-queue-unavailable");
    for k in queue_keys() {
        let _: () = redis::cmd("DEL").arg(&k).query_async(&mut r).await.unwrap();
    }
    // The retry is queued for real, not pointed at the write that never was.
    let again = send(&c, write(f.url("/orders"), Some("lost-1"), "a", body.into())).await;
    again.assert_problem(202, "write-queued");
    let loc = again.headers["location"].to_str().unwrap().to_string();
    let st = get(&f.url(&loc)).await;
    assert_eq!(st.status, 200, "{}", st.text());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(
        eventually(Duration::from_secs(20), || async { up.applied().len() == 1 }).await,
        "the retried write was never applied"
    );
    assert_eq!(up.applied()[0].key, "lost-1");
    let done = eventually(Duration::from_secs(5), || async {
        get(&f.url(&loc)).await.json()["state"] == "done"
    })
    .await;
    assert!(done, "{}", get(&f.url(&loc)).await.text());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_being_queued_gets_409_and_one_whose_write_is_gone_is_queued_afresh() {
    let redis = Redis::start().await;
    let mut r = redis.conn().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    let body = "{\"seq\":1}";
    // The dedupe key of (no principal, key) and the request's fingerprint, as ficus makes them.
    let dk = |key: &str| format!("ficus:writes:{{orders}}:k:{}", sha256_hex(&format!("\0{key}")));
    let fp = sha256_hex(&format!("POST\n/orders\n{body}"));

    let _: () = redis::cmd("SET")
        .arg(dk("busy-1"))
        .arg(format!("p 0123abcd {fp}"))
        .query_async(&mut r)
        .await
        .unwrap();
    send(&c, write(f.url("/orders"), Some("busy-1"), "a", body.into()))
        .await
        .assert_problem(409, "idempotency-key-in-flight");

    // A queued mark whose write has no status (expired, or never queued): not answered 202
    // with that id, but queued again.
    let _: () = redis::cmd("SET")
        .arg(dk("gone-1"))
        .arg(format!("0123abcd {fp}"))
        .query_async(&mut r)
        .await
        .unwrap();
    let a = send(&c, write(f.url("/orders"), Some("gone-1"), "a", body.into())).await;
    a.assert_problem(202, "write-queued");
    let loc = a.headers["location"].to_str().unwrap().to_string();
    assert!(!loc.ends_with("/0123abcd"), "{loc}");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(eventually(Duration::from_secs(20), || async { up.applied().len() == 1 }).await);
    assert_eq!(up.applied()[0].key, "gone-1");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_request_gets_422_and_is_not_queued() {
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", "")).await;
    let c = client();
    let first = send(
        &c,
        write(f.url("/orders"), Some("fp-1"), "a", "{\"seq\":1}".into()),
    )
    .await;
    first.assert_problem(202, "write-queued");
    send(
        &c,
        write(f.url("/orders"), Some("fp-1"), "a", "{\"seq\":2}".into()),
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    send(
        &c,
        write(f.url("/orders/other"), Some("fp-1"), "a", "{\"seq\":1}".into()),
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    let mut put = write(f.url("/orders"), Some("fp-1"), "a", "{\"seq\":1}".into());
    *put.method_mut() = http::Method::PUT;
    send(&c, put).await.assert_problem(422, "idempotency-key-reused");
    // The very same request still gets the first one's answer.
    let same = send(
        &c,
        write(f.url("/orders"), Some("fp-1"), "a", "{\"seq\":1}".into()),
    )
    .await;
    same.assert_problem(202, "write-queued");
    assert_eq!(first.headers["location"], same.headers["location"]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(eventually(Duration::from_secs(20), || async { up.deliveries() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.deliveries(), 1);
    assert_eq!(up.applied()[0].seq, 1);
    f.shutdown().await;
}

const SECRET_ENV: &str = "FICUS_TEST_WRITES_UPSTREAM_SECRET";
const SECRET: &str = "upstream-s3cret-value";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_listing_hides_upstream_credentials_and_honours_its_limit() {
    std::env::set_var(SECRET_ENV, SECRET);
    let redis = Redis::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "keys:\n  - {{ id: alice, owner: a, sha256: '{}' }}\n",
        sha256_hex("alice-key")
    );
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let route = format!(
        "    identity: {{ api_keys: partners, upstream_auth: {{ header: {{ name: x-api-secret, value_env: {SECRET_ENV} }} }} }}\n"
    );
    let yaml = config(port, &redis.url, &route, "")
        + "identity:\n  api_keys:\n    partners: { keys_file: keys.yaml }\n";
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let c = client();
    let mut locs = Vec::new();
    for i in 0..3 {
        let mut req = write(
            f.url("/orders"),
            Some(&format!("sec-{i}")),
            "p",
            "{\"note\":\"poison\"}".into(),
        );
        req.headers_mut()
            .insert("x-api-key", "alice-key".parse().unwrap());
        let a = send(&c, req).await;
        a.assert_problem(202, "write-queued");
        locs.push(a.headers["location"].to_str().unwrap().to_string());
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let _up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    let status = |loc: &str| {
        send(
            &c,
            Request::get(f.url(loc))
                .header("x-api-key", "alice-key")
                .body(empty())
                .unwrap(),
        )
    };
    for loc in &locs {
        let dead = eventually(Duration::from_secs(20), || async {
            status(loc).await.json()["state"] == "dead_lettered"
        })
        .await;
        assert!(dead, "{}", status(loc).await.text());
    }
    let list = get(&f.admin_url("/admin/dlq?route=orders")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(
        !list.text().contains(SECRET),
        "the upstream secret is listed: {}",
        list.text()
    );
    let doc = list.json();
    assert_eq!(doc["count"], 3, "{doc}");
    let headers = doc["writes"][0]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-api-secret" && h[1] == "[REDACTED]"),
        "{doc}"
    );

    let two = get(&f.admin_url("/admin/dlq?route=orders&limit=2")).await;
    assert_eq!(two.status, 200, "{}", two.text());
    assert_eq!(two.json()["count"], 2, "{}", two.text());
    for bad in ["0", "501", "many"] {
        get(&f.admin_url(&format!("/admin/dlq?route=orders&limit={bad}")))
            .await
            .assert_problem(400, "invalid-limit");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_action_with_the_wrong_method_is_405() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let redis = Redis::start().await;
    let f = Ficus::start(&config(free_port(), &redis.url, "", "")).await;
    let c = client();
    for action in ["replay", "drop"] {
        for method in [http::Method::GET, http::Method::PUT, http::Method::DELETE] {
            let r = send(
                &c,
                Request::builder()
                    .method(method.clone())
                    .uri(f.admin_url(&format!("/admin/dlq/0123abcd/{action}")))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
            r.assert_problem(405, "method-not-allowed");
        }
    }
    f.shutdown().await;
}

/// A write of `n` bytes of JSON (a string padded to size).
fn sized(url: String, key: &str, n: usize) -> Request<Body> {
    let pad = "x".repeat(n.saturating_sub(12));
    write(url, Some(key), "a", format!("{{\"pad\":\"{pad}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_goes_upstream_as_usual_and_is_never_queued() {
    let redis = Redis::start().await;
    let port = free_port();
    let f = Ficus::start(&config(port, &redis.url, "", ", max_body: 1KiB")).await;
    let c = client();
    // Down: not queued, the usual answer for an unreachable upstream.
    let down = send(&c, sized(f.url("/orders"), "big-1", 4096)).await;
    assert!(
        matches!(down.status.as_u16(), 502 | 503),
        "{} {}",
        down.status,
        down.text()
    );
    assert!(down.headers.get("location").is_none());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    let a = send(&c, sized(f.url("/orders"), "big-2", 4096)).await;
    assert_eq!(a.status, 201, "{}", a.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.deliveries(), 1, "the big write down was queued after all");
    let m = admin_metrics(&f).await;
    assert_eq!(counter(&m, "ficus_writes_queued_total"), 0.0, "{m}");
    f.shutdown().await;
}

/// A write of `n` bytes sent chunked: no Content-Length for ficus to check up front.
fn chunked(url: String, key: &str, n: usize) -> Request<Body> {
    let chunk = bytes::Bytes::from(vec![b'x'; n / 4]);
    let stream = futures_util::stream::iter(
        (0..4).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    Request::post(url)
        .header("x-account", "a")
        .header("idempotency-key", key)
        .body(http_body_util::StreamBody::new(stream).boxed_unsync())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_never_lifts_the_listener_body_limit() {
    let redis = Redis::start().await;
    let port = free_port();
    let yaml = config(port, &redis.url, "", ", max_body: 1MiB").replace(
        "bind: '127.0.0.1:0' }",
        "bind: '127.0.0.1:0', limits: { max_body_bytes: 1KiB } }",
    );
    let f = Ficus::start(&yaml).await;
    // A fresh client connection for each request: ficus closes a connection whose body it
    // refused unread, and a reused one could be handed out just as that close arrives.
    send(&client(), sized(f.url("/orders"), "over-1", 4096))
        .await
        .assert_problem(413, "body-too-large");
    // Down: a chunked body over the listener's limit is never queued.
    let down = send(&client(), chunked(f.url("/orders"), "over-2", 4096)).await;
    assert!(
        matches!(down.status.as_u16(), 413 | 502 | 503),
        "{} {}",
        down.status,
        down.text()
    );
    assert!(down.headers.get("location").is_none(), "{}", down.text());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    send(&client(), sized(f.url("/orders"), "over-3", 4096))
        .await
        .assert_problem(413, "body-too-large");
    send(&client(), chunked(f.url("/orders"), "over-4", 4096))
        .await
        .assert_problem(413, "body-too-large");
    let ok = send(&client(), sized(f.url("/orders"), "under-1", 512)).await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.deliveries(), 1);
    assert_eq!(
        counter(&admin_metrics(&f).await, "ficus_writes_queued_total"),
        0.0
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_replay_one_queue_each_write_once_in_order_per_key() {
    let redis = Redis::start().await;
    let port = free_port();
    let yaml = config(port, &redis.url, "", "");
    let a = Ficus::start(&yaml).await;
    let b = Ficus::start(&yaml).await;
    // Both instances queue: half the writes through each, alternating per request.
    let c = client();
    let n = 160;
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        let account = format!("acct-{}", i % 16);
        let s = seq.entry(account.clone()).or_default();
        *s += 1;
        let via = if i % 2 == 0 { &a } else { &b };
        let body = format!("{{\"seq\":{s}}}");
        send(
            &c,
            write(via.url("/orders"), Some(&format!("t-{i}")), &account, body),
        )
        .await
        .assert_problem(202, "write-queued");
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::from_millis(5), ledger, Arc::default()).await;
    assert!(
        eventually(Duration::from_secs(60), || async { up.applied().len() >= n }).await,
        "only {} of {n} applied",
        up.applied().len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_complete_and_ordered(&up.applied(), n, "t");
    assert_eq!(up.deliveries(), n, "a write was sent twice");
    let (ma, mb) = (admin_metrics(&a).await, admin_metrics(&b).await);
    let (ra, rb) = (
        counter(&ma, "ficus_writes_succeeded_total"),
        counter(&mb, "ficus_writes_succeeded_total"),
    );
    assert_eq!(ra + rb, n as f64);
    assert!(ra > 0.0 && rb > 0.0, "one instance did all the work: {ra} / {rb}");
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------- the real binary

const BIN: &str = env!("CARGO_BIN_EXE_ficus");

struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn run(config: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["fields"]["message"] == "listening" {
                    if let Some(a) = v["fields"]["addr"].as_str() {
                        let _ = tx.send(a.to_string());
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap().parse().unwrap();
        Self { child, addr }
    }

    fn kill9(&mut self) {
        // std's kill is SIGKILL: no drain, no goodbye to Redis.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ficus_killed_with_sigkill_mid_replay_then_restarted_loses_nothing_and_applies_nothing_twice() {
    let redis = Redis::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ficus.yaml");
    std::fs::write(&path, config(port, &redis.url, "", "")).unwrap();
    let mut first = Process::run(&path);
    let n = 40;
    queue_writes(&format!("http://{}", first.addr), n, 4, "s").await;

    // A slow backend: each write takes 100 ms, so the kill lands mid-replay.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let up = Backend::start_on(port, Duration::from_millis(100), ledger, Arc::default()).await;
    assert!(eventually(Duration::from_secs(20), || async { up.deliveries() >= 8 }).await);
    first.kill9();
    let at_kill = up.applied().len();
    assert!(at_kill < n, "the replay finished before the kill");

    let _second = Process::run(&path);
    assert!(
        eventually(Duration::from_secs(60), || async { up.applied().len() >= n }).await,
        "only {} of {n} applied after the restart",
        up.applied().len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_complete_and_ordered(&up.applied(), n, "s");
    // At most the writes in flight at the kill (one per partition) were delivered again, and
    // the backend's deduplication applied each once.
    let extra = up.deliveries() - n;
    assert!(extra <= 8, "{extra} writes delivered twice");
}

// ---------------------------------------------------------------- measurement

/// Not a check: the figures the README quotes. `cargo test --release --test writes measure --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_queued_write_latency_and_replay_throughput() {
    let redis = Redis::start().await;
    let port = free_port();
    let yaml = config(port, &redis.url, "", "").replace("partitions: 8", "partitions: 16");
    let f = Ficus::start(&yaml).await;
    let n = 2000;
    let c = client();
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let account = format!("acct-{}", i % 64);
        let req = write(
            f.url("/orders"),
            Some(&format!("m-{i}")),
            &account,
            format!("{{\"seq\":{i}}}"),
        );
        let t = Instant::now();
        let a = send(&c, req).await;
        lat.push(t.elapsed());
        assert_eq!(a.status, 202);
    }
    let queued_in = started.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "queued {n} writes in {queued_in:?} (one client, sequential): p50 {:?}, p99 {:?}, max {:?}",
        p(0.50),
        p(0.99),
        lat[lat.len() - 1]
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let t = Instant::now();
    let up = Backend::start_on(port, Duration::ZERO, ledger, Arc::default()).await;
    assert!(eventually(Duration::from_secs(300), || async { up.applied().len() >= n }).await);
    let took = t.elapsed();
    println!(
        "replayed {n} writes in {took:?}: {:.0} writes/s (16 partitions, 64 keys, one instance)",
        n as f64 / took.as_secs_f64()
    );
    f.shutdown().await;
}
