//! Resilience against misbehaving upstreams: the circuit breaker trips, answers 503 with
//! `Retry-After` while open, recovers through half-open, and keeps its state across reloads.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn breaker_trips_on_503s_and_recovers_through_half_open() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = flapping(failing.clone()).await;
    let f = Ficus::start(&with_breaker(&up.url(), BREAKER)).await;

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
    tokio::time::sleep(Duration::from_millis(350)).await;
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
    let f = Ficus::start(&with_breaker(&up.url(), BREAKER)).await;
    for _ in 0..5 {
        get(&f.url("/")).await;
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        get(&f.url("/")).await.status,
        503,
        "the probe reaches the still-failing upstream"
    );
    assert_eq!(up.hits(), 6);
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    let status = get(&f.admin_url("/admin/upstreams")).await.json();
    assert_eq!(status["upstreams"][0]["circuit_breaker"]["trips"], 2, "{status}");
    f.shutdown().await;
}

#[tokio::test]
async fn refused_connections_trip_the_breaker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
