//! Resilience against misbehaving upstreams: the circuit breaker trips, answers 503 with
//! `Retry-After` while open, recovers through half-open, and keeps its state across reloads.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ficus::pipeline::rollout::ManualClock;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

fn with_breaker(upstream: &str, breaker: &str) -> String {
    basic_config(upstream).replace(
        &format!("    endpoints: [\"{upstream}\"]"),
        &format!("    endpoints: [\"{upstream}\"]\n    circuit_breaker: {{ {breaker} }}"),
    )
}

const BREAKER: &str = "window: 10s, min_requests: 5, failure_rate: 0.5, open_for: 300ms, half_open_probes: 2";

/// An upstream that answers 503 while `failing` is set, 200 otherwise.
async fn flapping(failing: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |_req: Request<Incoming>| {
        let failing = failing.clone();
        async move {
            let mut r = Response::new(full("x"));
            if failing.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await
}

#[tokio::test]
async fn breaker_trips_on_503s_and_recovers_through_half_open() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = flapping(failing.clone()).await;
    let clock = Arc::new(ManualClock::default());
    let f = Ficus::start_with_clock(&with_breaker(&up.url(), BREAKER), clock.clone()).await;

    for _ in 0..5 {
        assert_eq!(
            get(&f.url("/")).await.status,
            503,
            "the upstream's own 503 passes through"
        );
    }
    assert_eq!(up.hits(), 5);
    let open = get(&f.url("/")).await;
    open.assert_problem(503, "circuit-open");
    let retry_after: u64 = open.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(up.hits(), 5, "an open breaker does not call the upstream");

    let status = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(
        status["upstreams"][0]["circuit_breaker"]["state"], "open",
        "{status}"
    );
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_circuit_state{upstream=\"app\"}"),
        Some(1.0),
        "{m}"
    );

    // The upstream heals; after open_for the probes go through and close the breaker.
    failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_millis(299));
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    assert_eq!(up.hits(), 5, "still open 1 ms before open_for");
    clock.advance(Duration::from_millis(1));
    assert_eq!(get(&f.url("/")).await.status, 200);
    let status = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(
        status["upstreams"][0]["circuit_breaker"]["state"], "half-open",
        "{status}"
    );
    assert_eq!(get(&f.url("/")).await.status, 200);
    let status = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(
        status["upstreams"][0]["circuit_breaker"]["state"], "closed",
        "{status}"
    );

    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_circuit_state{upstream=\"app\"}"),
        Some(0.0),
        "{m}"
    );
    for to in ["open", "half-open", "closed"] {
        let series = format!("ficus_circuit_transitions_total{{upstream=\"app\",to=\"{to}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{series}: {m}");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn failed_probe_reopens_the_breaker() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = flapping(failing.clone()).await;
    let clock = Arc::new(ManualClock::default());
    let f = Ficus::start_with_clock(&with_breaker(&up.url(), BREAKER), clock.clone()).await;
    for _ in 0..5 {
        get(&f.url("/")).await;
    }
    clock.advance(Duration::from_millis(300));
    assert_eq!(
        get(&f.url("/")).await.status,
        503,
        "the probe reaches the still-failing upstream"
    );
    assert_eq!(up.hits(), 6);
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    let status = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(status["upstreams"][0]["circuit_breaker"]["trips"], 2, "{status}");
    // The second trip opens for twice open_for.
    clock.advance(Duration::from_millis(599));
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    clock.advance(Duration::from_millis(1));
    assert_eq!(get(&f.url("/")).await.status, 503, "the next probe goes through");
    assert_eq!(up.hits(), 7);
    f.shutdown().await;
}

#[tokio::test]
async fn refused_connections_trip_the_breaker() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let f = Ficus::start(&with_breaker(&url, BREAKER)).await;
    for _ in 0..5 {
        get(&f.url("/")).await.assert_problem(502, "upstream-unreachable");
    }
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    f.shutdown().await;
}

#[tokio::test]
async fn breaker_state_survives_a_reload_that_keeps_the_upstream() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = flapping(failing.clone()).await;
    let yaml = with_breaker(&up.url(), &BREAKER.replace("300ms", "30s"));
    let f = Ficus::start(&yaml).await;
    for _ in 0..5 {
        get(&f.url("/")).await;
    }
    get(&f.url("/")).await.assert_problem(503, "circuit-open");

    // Same upstream, one more route: the breaker stays open.
    let more = format!("{yaml}  - name: extra\n    match: {{ path: /extra }}\n    upstream: app\n");
    f.write_config(&more);
    f.gw().reload("test").await.unwrap();
    get(&f.url("/")).await.assert_problem(503, "circuit-open");

    // A changed breaker config is a new breaker, closed.
    f.write_config(&more.replace("min_requests: 5", "min_requests: 6"));
    f.gw().reload("test").await.unwrap();
    failing.store(false, Ordering::SeqCst);
    assert_eq!(get(&f.url("/")).await.status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn invalid_breaker_settings_are_config_errors() {
    let yaml = with_breaker("http://127.0.0.1:9", "failure_rate: 1.5, half_open_probes: 0");
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("upstreams.app.circuit_breaker.failure_rate: must be above 0 and at most 1"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.app.circuit_breaker.half_open_probes: must be at least 1"),
        "{err}"
    );
}

fn with_retry(upstream_line: &str, endpoints: &str, retry: &str) -> String {
    basic_config(upstream_line).replace(
        &format!("    endpoints: [\"{upstream_line}\"]"),
        &format!("    endpoints: [{endpoints}]\n    retry: {{ {retry} }}"),
    )
}

/// An upstream whose first `fail_first` calls answer 503 (then 200), echoing what it got.
async fn fails_first(fail_first: usize) -> Upstream {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Upstream::start(move |req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = echo_response(req, "").await;
            if n < fail_first {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await
}

const FAST: &str = "attempts: 2, backoff: 1ms, max_backoff: 5ms";

#[tokio::test]
async fn idempotent_request_is_retried_until_it_succeeds() {
    let up = fails_first(2).await;
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), FAST)).await;
    let a = get(&f.url("/r")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.hits(), 3);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_upstream_retries_total{upstream=\"app\"}"),
        Some(2.0),
        "{m}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn retries_stop_after_the_configured_attempts() {
    let up = fails_first(100).await;
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), FAST)).await;
    assert_eq!(
        get(&f.url("/r")).await.status,
        503,
        "the last upstream answer reaches the client"
    );
    assert_eq!(up.hits(), 3);
    f.shutdown().await;
}

/// An `Idempotency-Key` is a promise the backend may not keep: ficus does not resend a POST
/// the upstream may have received, key or not.
#[tokio::test]
async fn post_with_an_idempotency_key_is_sent_once_to_an_upstream_that_answers_503() {
    let up = fails_first(1).await;
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), FAST)).await;
    let c = client();
    let keyed = Request::post(f.url("/p"))
        .header("idempotency-key", "k-1")
        .body(full("0123456789"))
        .unwrap();
    assert_eq!(
        send(&c, keyed).await.status,
        503,
        "modern's answer, not a retry's"
    );
    assert_eq!(up.hits(), 1);
    let plain = send(&c, Request::post(f.url("/p")).body(full("0123456789")).unwrap()).await;
    assert_eq!(
        plain.status, 200,
        "the upstream now answers 200 (the first call failed)"
    );
    assert_eq!(up.hits(), 2, "a POST without a key is not retried either");
    f.shutdown().await;
}

/// An upstream that reads the request and then resets the connection (RST), counting accepts.
async fn resetting() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
            drop(tcp);
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn post_with_an_idempotency_key_is_sent_once_to_an_upstream_that_resets() {
    let (url, accepted) = resetting().await;
    let f = Ficus::start(&with_retry(&url, &format!("'{url}'"), FAST)).await;
    let keyed = Request::post(f.url("/p"))
        .header("idempotency-key", "k-1")
        .body(full("0123456789"))
        .unwrap();
    send(&client(), keyed)
        .await
        .assert_problem(502, "upstream-failed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the reset POST is not resent");
    // A GET is still retried after a reset.
    get(&f.url("/g")).await.assert_problem(502, "upstream-failed");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "a GET: the first try and two retries"
    );
    f.shutdown().await;
}

/// A refused connection proves that nothing was sent: any method is retried on another endpoint.
#[tokio::test]
async fn post_to_an_unreachable_endpoint_is_retried_on_a_working_one() {
    let up = Upstream::echo().await;
    let dead = free_port();
    let endpoints = format!("'http://127.0.0.1:{dead}', '{}'", up.url());
    let f = Ficus::start(&with_retry(&up.url(), &endpoints, FAST)).await;
    let c = client();
    for _ in 0..4 {
        let a = send(&c, Request::post(f.url("/p")).body(full("0123456789")).unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.echoed().body_len, 10, "the retry carries the whole body");
    }
    assert_eq!(up.hits(), 4);
    f.shutdown().await;
}

#[tokio::test]
async fn post_is_retried_after_a_503_when_the_upstream_opts_in() {
    let up = fails_first(1).await;
    let retry = format!("{FAST}, non_idempotent: true");
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), &retry)).await;
    let a = send(
        &client(),
        Request::post(f.url("/p")).body(full("0123456789")).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.echoed().body_len, 10, "the retry carries the whole body again");
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

#[tokio::test]
async fn bodies_above_the_retry_bound_are_not_retried() {
    let up = fails_first(1).await;
    let yaml = with_retry(
        &up.url(),
        &format!("'{}'", up.url()),
        &format!("{FAST}, max_body_bytes: 1KiB"),
    );
    let f = Ficus::start(&yaml).await;
    let big = send(
        &client(),
        Request::put(f.url("/big")).body(full(vec![b'x'; 4096])).unwrap(),
    )
    .await;
    assert_eq!(big.status, 503);
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn connect_errors_are_retried_on_the_next_endpoint() {
    let up = Upstream::echo().await;
    let dead = free_port();
    let endpoints = format!("'http://127.0.0.1:{dead}', '{}'", up.url());
    let f = Ficus::start(&with_retry(&up.url(), &endpoints, FAST)).await;
    for _ in 0..6 {
        assert_eq!(get(&f.url("/")).await.status, 200);
    }
    assert_eq!(up.hits(), 6);
    f.shutdown().await;
}

#[tokio::test]
async fn a_try_that_times_out_is_retried_within_the_request_timeout() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let up = Upstream::start(move |req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            echo_response(req, "").await
        }
    })
    .await;
    let retry = format!("{FAST}, per_try_timeout: 200ms, on: [timeout, 503]");
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), &retry)).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&f.url("/slow-once")).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

/// A retried request's body is read in before its first try; that upload is the client's time,
/// not the try's: a healthy upstream is not timed out (and retried) because the client was slow.
#[tokio::test]
async fn a_slow_upload_does_not_use_up_the_first_tries_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::echo().await;
    let retry = "attempts: 1, backoff: 1ms, max_backoff: 2ms, per_try_timeout: 300ms, on: [timeout]";
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), retry)).await;
    let mut tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"PUT /slow-upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(b"hello").await.unwrap();
    let a = read_all(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&a), 200, "{a}");
    assert_eq!(up.hits(), 1);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_upstream_retries_total").unwrap_or(0.0),
        0.0,
        "the first try was not timed out: {m}"
    );
    f.shutdown().await;
}

/// Against an upstream that always fails, retries stay within the budget: 20% of requests plus
/// the floor (here 1/s over a 10 s window), however many attempts each request may make.
#[tokio::test]
async fn retry_budget_caps_amplification_against_a_dead_upstream() {
    let up = fails_first(usize::MAX).await;
    let retry =
        "attempts: 3, backoff: 1ms, max_backoff: 2ms, budget: 0.2, budget_min_per_sec: 1, budget_window: 10s";
    let f = Ficus::start(&with_retry(&up.url(), &format!("'{}'", up.url()), retry)).await;
    let c = client();
    for _ in 0..200 {
        send(&c, Request::get(f.url("/")).body(empty()).unwrap()).await;
    }
    let hits = up.hits();
    // Without a budget: 200 × 4 = 800 calls. With it: 200 + 0.2 × 200 + 1 × 10 = 250 at most.
    assert!(hits <= 250, "the upstream saw {hits} calls for 200 requests");
    assert!(hits >= 240, "retries did happen within the budget: {hits}");
    let m = get(&f.admin_url("/metrics")).await.text();
    assert!(
        metric(&m, "ficus_retry_budget_exhausted_total{upstream=\"app\"}").is_some_and(|v| v > 0.0),
        "{m}"
    );
    f.shutdown().await;
}

/// An upstream that sends a response head and part of the body, then resets: the client must see
/// a broken response, never a truncated one passed off as complete, and no retry happens.
#[tokio::test]
async fn reset_mid_body_reaches_the_client_as_an_aborted_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                .await;
            // A hard reset (RST), not a polite close. The deprecation is about blocking on drop,
            // which a zero linger does not do.
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
            drop(tcp);
        }
    });
    let url = format!("http://{addr}");
    let f = Ficus::start(&with_retry(&url, &format!("'{url}'"), FAST)).await;
    let resp = client()
        .request(Request::get(f.url("/")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the head had already been sent");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "a truncated body must surface as an error, not as success"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no retry once the response has started"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn invalid_retry_settings_are_config_errors() {
    let yaml = with_retry(
        "http://127.0.0.1:9",
        "'http://127.0.0.1:9'",
        "on: [sometimes, 700], budget: 2",
    );
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("upstreams.app.retry.on[0]: `sometimes` is not a retry condition"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.app.retry.on[1]: 700 is not an HTTP status"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.app.retry.budget: must be between 0 and 1"),
        "{err}"
    );
}

fn multi(endpoints: &[&Upstream], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|u| format!("'{}'", u.url())).collect();
    let first = endpoints[0].url();
    basic_config(&first).replace(
        &format!("    endpoints: [\"{first}\"]"),
        &format!("    endpoints: [{}]\n{extra}", list.join(", ")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_endpoint_with_fewer_requests_in_flight() {
    let slow = Upstream::start(|req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        echo_response(req, "slow").await
    })
    .await;
    let fast = Upstream::echo_named("fast").await;
    let f = Ficus::start(&multi(&[&slow, &fast], "    balance: least-request")).await;
    let mut tasks = Vec::new();
    for _ in 0..80 {
        let url = f.url("/");
        tasks.push(tokio::spawn(async move { get(&url).await.status }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Round robin would send 40 to each; two random choices keep the slow one near a quarter.
    assert!(slow.hits() < 32, "slow endpoint got {} of 80", slow.hits());
    f.shutdown().await;
}

#[tokio::test]
async fn consistent_hash_pins_each_key_to_one_endpoint() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let c = Upstream::echo_named("c").await;
    let f = Ficus::start(&multi(
        &[&a, &b, &c],
        "    balance: consistent-hash\n    hash_on: 'header:x-user'",
    ))
    .await;
    let cl = client();
    let mut seen = std::collections::HashSet::new();
    for user in 0..12 {
        let mut names = std::collections::HashSet::new();
        for _ in 0..4 {
            let req = Request::get(f.url("/"))
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            names.insert(send(&cl, req).await.echoed().name);
        }
        assert_eq!(names.len(), 1, "user-{user} was spread over {names:?}");
        seen.extend(names);
    }
    assert!(seen.len() >= 2, "keys spread over endpoints: {seen:?}");
    f.shutdown().await;
}

#[tokio::test]
async fn failing_endpoint_is_ejected_by_outlier_detection() {
    let bad = Upstream::start(|_req: Request<Incoming>| async move {
        let mut r = Response::new(full("boom"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let good = Upstream::echo_named("good").await;
    let extra = "    outlier: { consecutive_failures: 3, base_ejection: 30s, max_ejected_percent: 50 }";
    let f = Ficus::start(&multi(&[&bad, &good], extra)).await;
    for _ in 0..20 {
        get(&f.url("/")).await;
    }
    assert_eq!(bad.hits(), 3, "ejected after three 500s in a row");
    assert_eq!(good.hits(), 17);
    let st = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(st["upstreams"][0]["endpoints"][0]["ejected"], true, "{st}");
    let m = get(&f.admin_url("/metrics")).await.text();
    let series = format!(
        "ficus_outlier_ejections_total{{upstream=\"app\",endpoint=\"{}\"}}",
        bad.url()
    );
    assert_eq!(metric(&m, &series), Some(1.0), "{m}");
    f.shutdown().await;
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let a = Upstream::start(move |req: Request<Incoming>| {
        let sick = flag.load(Ordering::SeqCst);
        async move {
            if req.uri().path() == "/health" && sick {
                let mut r = Response::new(full("sick"));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            echo_response(req, "a").await
        }
    })
    .await;
    let b = Upstream::echo_named("b").await;
    let extra = "    health_check: { path: /health, interval: 50ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 2 }";
    let f = Ficus::start(&multi(&[&a, &b], extra)).await;
    sick.store(true, Ordering::SeqCst);
    let out = eventually(Duration::from_secs(5), || async {
        get(&f.admin_url("/admin/upstreams")).await.json()["upstreams"][0]["endpoints"][0]["healthy"] == false
    })
    .await;
    assert!(out, "the sick endpoint was not marked unhealthy");
    for _ in 0..10 {
        assert_eq!(get(&f.url("/")).await.echoed().name, "b");
    }
    let ready = get(&f.admin_url("/readyz")).await.json();
    assert_eq!(ready["upstreams"]["app"]["available"], 1, "{ready}");
    let m = get(&f.admin_url("/metrics")).await.text();
    let series = format!(
        "ficus_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"{}\"}}",
        a.url()
    );
    assert_eq!(metric(&m, &series), Some(0.0), "{m}");

    sick.store(false, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async {
        let mut names = std::collections::HashSet::new();
        for _ in 0..4 {
            names.insert(get(&f.url("/")).await.echoed().name);
        }
        names.contains("a")
    })
    .await;
    assert!(back, "the healed endpoint got no traffic again");
    f.shutdown().await;
}

#[tokio::test]
async fn upstream_that_accepts_and_never_answers_gives_504() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            keep.lock().push(tcp);
        }
    });
    let url = format!("http://{addr}");
    let yaml = basic_config(&url).replace("endpoints:", "timeouts: { request: 300ms }\n    endpoints:");
    let f = Ficus::start(&yaml).await;
    get(&f.url("/")).await.assert_problem(504, "upstream-timeout");
    assert_eq!(held.lock().len(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_503s_is_absorbed_by_retries_on_another_endpoint() {
    let burst = fails_first(5).await;
    let good = Upstream::echo_named("good").await;
    let f = Ficus::start(&multi(&[&burst, &good], &format!("    retry: {{ {FAST} }}"))).await;
    for _ in 0..10 {
        assert_eq!(get(&f.url("/")).await.status, 200);
    }
    f.shutdown().await;
}

#[tokio::test]
async fn per_endpoint_breaker_takes_out_only_the_failing_endpoint() {
    let failing = Arc::new(AtomicBool::new(true));
    let bad = flapping(failing).await;
    let good = Upstream::echo_named("good").await;
    let extra = "    circuit_breaker: { per_endpoint: true, window: 10s, min_requests: 3, failure_rate: 0.5, open_for: 30s }";
    let f = Ficus::start(&multi(&[&bad, &good], extra)).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let a = get(&f.url("/")).await;
        assert_ne!(
            a.headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/problem+json")
        );
        statuses.push(a.status.as_u16());
    }
    assert_eq!(
        bad.hits(),
        3,
        "the failing endpoint's breaker opened after min_requests: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 3);
    let st = get(&f.admin_url("/admin/upstreams")).await.json();
    let per = &st["upstreams"][0]["circuit_breaker"]["per_endpoint"];
    assert_eq!(per[bad.url()]["state"], "open", "{st}");
    assert_eq!(per[good.url()]["state"], "closed", "{st}");
    let m = get(&f.admin_url("/metrics")).await.text();
    let series = format!(
        "ficus_circuit_state{{upstream=\"app\",endpoint=\"{}\"}}",
        bad.url()
    );
    assert_eq!(metric(&m, &series), Some(1.0), "{m}");
    f.shutdown().await;
}

/// Three echo upstreams `a`, `b`, `c`, each answering 503 while its flag is set.
async fn three_that_fail_on_demand() -> (Vec<Upstream>, Vec<Arc<AtomicBool>>) {
    let mut ups = Vec::new();
    let mut flags = Vec::new();
    for name in ["a", "b", "c"] {
        let failing = Arc::new(AtomicBool::new(false));
        let flag = failing.clone();
        ups.push(
            Upstream::start(move |req: Request<Incoming>| {
                let failing = flag.load(Ordering::SeqCst);
                async move {
                    let mut r = echo_response(req, name).await;
                    if failing {
                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    r
                }
            })
            .await,
        );
        flags.push(failing);
    }
    (ups, flags)
}

async fn as_user(cl: &H1Client, f: &Ficus, user: &str) -> Answer {
    let req = Request::get(f.url("/"))
        .header("x-user", user)
        .body(empty())
        .unwrap();
    send(cl, req).await
}

/// The endpoint a key is pinned to, found while every endpoint is healthy.
async fn home_of(cl: &H1Client, f: &Ficus, user: &str) -> usize {
    let name = as_user(cl, f, user).await.echoed().name;
    ["a", "b", "c"].iter().position(|n| *n == name).unwrap()
}

#[tokio::test]
async fn consistent_hash_retry_goes_to_another_endpoint_than_the_one_that_failed() {
    let (ups, flags) = three_that_fail_on_demand().await;
    let refs: Vec<&Upstream> = ups.iter().collect();
    let extra =
        format!("    balance: consistent-hash\n    hash_on: 'header:x-user'\n    retry: {{ {FAST} }}");
    let f = Ficus::start(&multi(&refs, &extra)).await;
    let cl = client();
    for user in ["user-1", "user-2", "user-3", "user-4"] {
        let home = home_of(&cl, &f, user).await;
        flags[home].store(true, Ordering::SeqCst);
        let before = ups[home].hits();
        let mut served_by = std::collections::HashSet::new();
        for _ in 0..3 {
            let a = as_user(&cl, &f, user).await;
            assert_eq!(a.status, 200, "{user}: the retry was not served elsewhere");
            served_by.insert(a.echoed().name);
        }
        assert_eq!(
            ups[home].hits() - before,
            3,
            "{user}: one try per request on the failing endpoint, the retry went elsewhere"
        );
        assert_eq!(
            served_by.len(),
            1,
            "{user}: the fallback endpoint is stable: {served_by:?}"
        );
        flags[home].store(false, Ordering::SeqCst);
    }
    f.shutdown().await;
}

#[tokio::test]
async fn consistent_hash_passes_over_an_endpoint_whose_breaker_is_open() {
    let (ups, flags) = three_that_fail_on_demand().await;
    let refs: Vec<&Upstream> = ups.iter().collect();
    let extra = "    balance: consistent-hash\n    hash_on: 'header:x-user'\n    \
        circuit_breaker: { per_endpoint: true, window: 10s, min_requests: 3, failure_rate: 0.5, open_for: 30s }";
    let f = Ficus::start(&multi(&refs, extra)).await;
    let cl = client();
    let home = home_of(&cl, &f, "user-1").await;
    flags[home].store(true, Ordering::SeqCst);
    let breaker_open = || async {
        let st = get(&f.admin_url("/admin/upstreams")).await.json();
        st["upstreams"][0]["circuit_breaker"]["per_endpoint"][ups[home].url()]["state"] == "open"
    };
    let mut failures = 0;
    while !breaker_open().await {
        assert!(failures < 5, "the failing endpoint's breaker never opened");
        let a = as_user(&cl, &f, "user-1").await;
        assert_eq!(
            a.status, 503,
            "no retry configured: the endpoint's 503 passes through"
        );
        failures += 1;
    }
    let hits = ups[home].hits();
    for _ in 0..5 {
        let a = as_user(&cl, &f, "user-1").await;
        assert_eq!(a.status, 200, "the open breaker's endpoint is passed over");
        assert_ne!(a.echoed().name, ["a", "b", "c"][home]);
    }
    assert_eq!(ups[home].hits(), hits, "an open breaker's endpoint is not called");
    f.shutdown().await;
}

fn with_limit(upstream: &str, limit: &str) -> String {
    basic_config(upstream).replace(
        &format!("    endpoints: [\"{upstream}\"]"),
        &format!("    endpoints: [\"{upstream}\"]\n{limit}"),
    )
}

/// A slow upstream under the test's control: each request announces its arrival on `arrived`
/// and is answered only once the test adds a permit to `release`.
struct Held {
    up: Upstream,
    arrived: Arc<tokio::sync::Semaphore>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn held() -> Held {
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (a, r) = (arrived.clone(), release.clone());
    let up = Upstream::start(move |_req: Request<Incoming>| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.add_permits(1);
            r.acquire().await.unwrap().forget();
            Response::new(full("slow"))
        }
    })
    .await;
    Held { up, arrived, release }
}

impl Held {
    /// Waits until `n` more requests have reached the upstream.
    async fn reached(&self, n: u32) {
        tokio::time::timeout(Duration::from_secs(5), self.arrived.acquire_many(n))
            .await
            .expect("the requests reached the upstream")
            .unwrap()
            .forget();
    }
}

fn spawn_get(url: String) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(async move { get(&url).await })
}

fn shed(m: &str, reason: &str) -> Option<f64> {
    metric(
        m,
        &format!("ficus_upstream_shed_total{{upstream=\"app\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn a_request_over_max_concurrent_with_no_queue_gets_503_upstream_overloaded() {
    let h = held().await;
    let f = Ficus::start(&with_limit(
        &h.up.url(),
        "    max_concurrent: 1\n    max_queue: 0",
    ))
    .await;
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        shed(&m, "queue-full"),
        Some(0.0),
        "the counter is registered: {m}"
    );

    let first = spawn_get(f.url("/first"));
    h.reached(1).await;
    let second = get(&f.url("/second")).await;
    second.assert_problem(503, "upstream-overloaded");
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(h.up.hits(), 1, "the shed request never reached the upstream");

    h.release.add_permits(1);
    assert_eq!(
        first.await.unwrap().status,
        200,
        "the request in flight is unaffected"
    );
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(shed(&m, "queue-full"), Some(1.0), "{m}");
    assert_eq!(shed(&m, "queue-timeout"), Some(0.0), "{m}");

    // The place is free again.
    let third = spawn_get(f.url("/third"));
    h.reached(1).await;
    h.release.add_permits(1);
    assert_eq!(third.await.unwrap().status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn a_queued_request_waits_for_a_place_and_one_beyond_the_queue_is_shed() {
    let h = held().await;
    let f = Ficus::start(&with_limit(
        &h.up.url(),
        "    max_concurrent: 1\n    max_queue: 1\n    queue_timeout: 10s",
    ))
    .await;
    let first = spawn_get(f.url("/first"));
    h.reached(1).await;
    let queued = spawn_get(f.url("/queued"));
    let admin = f.admin_url("/metrics");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = get(&admin).await.text();
            metric(&m, "ficus_upstream_queued{upstream=\"app\"}") == Some(1.0)
        })
        .await,
        "the second request waits in the queue"
    );
    // One in flight, one queued: the next is shed at once.
    get(&f.url("/third"))
        .await
        .assert_problem(503, "upstream-overloaded");
    assert_eq!(h.up.hits(), 1, "the queued request waits at ficus");
    h.release.add_permits(1);
    h.reached(1).await;
    h.release.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        queued.await.unwrap().status,
        200,
        "the queued request got its place"
    );
    assert_eq!(h.up.hits(), 2);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(shed(&m, "queue-full"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "ficus_upstream_queued{upstream=\"app\"}"),
        Some(0.0),
        "{m}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_request_that_waits_longer_than_queue_timeout_is_shed() {
    let h = held().await;
    let f = Ficus::start(&with_limit(
        &h.up.url(),
        "    max_concurrent: 1\n    max_queue: 1\n    queue_timeout: 50ms",
    ))
    .await;
    let first = spawn_get(f.url("/first"));
    h.reached(1).await;
    get(&f.url("/second"))
        .await
        .assert_problem(503, "upstream-overloaded");
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(shed(&m, "queue-timeout"), Some(1.0), "{m}");
    assert_eq!(shed(&m, "queue-full"), Some(0.0), "{m}");
    h.release.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn invalid_concurrency_settings_are_config_errors() {
    let err = Ficus::try_start(&with_limit("http://127.0.0.1:9", "    max_concurrent: 0"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("upstreams.app.max_concurrent: must be at least 1"),
        "{err}"
    );
    let err = Ficus::try_start(&with_limit("http://127.0.0.1:9", "    max_queue: 5"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("upstreams.app.max_queue: only with max_concurrent"),
        "{err}"
    );
}

/// A shed request never reached the upstream: it is not retried (that would add load where
/// there is too much) and the breaker learns nothing from it.
#[tokio::test]
async fn a_shed_request_is_neither_retried_nor_held_against_the_breaker() {
    let h = held().await;
    let f = Ficus::start(&with_limit(
        &h.up.url(),
        "    max_concurrent: 1\n    retry: { attempts: 2, backoff: 1ms, max_backoff: 2ms }\n    circuit_breaker: { window: 10s, min_requests: 1, failure_rate: 0.5, open_for: 30s }",
    ))
    .await;
    let first = spawn_get(f.url("/first"));
    h.reached(1).await;
    for _ in 0..3 {
        get(&f.url("/shed"))
            .await
            .assert_problem(503, "upstream-overloaded");
    }
    h.release.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(h.up.hits(), 1);

    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(shed(&m, "queue-full"), Some(3.0), "{m}");
    assert_eq!(
        metric(&m, "ficus_upstream_retries_total{upstream=\"app\"}"),
        Some(0.0),
        "{m}"
    );
    let st = get(&f.admin_url("/admin/upstreams")).await.json();
    let breaker = &st["upstreams"][0]["circuit_breaker"];
    assert_eq!(breaker["state"], "closed", "{st}");
    assert_eq!(
        breaker["window_requests"], 1,
        "only the served request counts: {st}"
    );
    f.shutdown().await;
}
