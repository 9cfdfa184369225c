//! Rollout analysis against a baseline, on real upstreams with a manual clock: modern is judged
//! against legacy over the same stage (p99 ratio, error-rate increase), a stage fails only after
//! `failure_threshold` failed checks in a row, an approval gate holds a step until the admin API
//! approves it, and decisions reach signed webhooks without ever slowing requests.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use ficus::pipeline::rollout::ManualClock;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

const TOKEN_ENV: &str = "FICUS_TEST_ANALYSIS_TOKEN";
const TOKEN: &str = "analysis-token";
const SECRET_ENV: &str = "FICUS_TEST_ANALYSIS_HOOK_SECRET";
const SECRET: &str = "hook-s3cret";

fn config(legacy: &str, modern: &str, percent: u32, rollout: &str) -> String {
    std::env::set_var(TOKEN_ENV, TOKEN);
    std::env::set_var(SECRET_ENV, SECRET);
    yaml::Config::new()
        .admin_extra(&format!("token_env: {TOKEN_ENV}, audit_log: audit.log"))
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[&format!("modern_percent: {percent}"), rollout],
        ))
        .build()
}

/// Answers after `delay_ms` (read at each request), with a 500 while `fail` is set.
async fn side(delay_ms: Arc<AtomicU32>, fail: Arc<AtomicU32>) -> Upstream {
    Upstream::start(move |_req: Request<Incoming>| {
        let (delay, fail) = (delay_ms.load(Ordering::SeqCst), fail.load(Ordering::SeqCst));
        async move {
            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
            let mut r = Response::new(full(r#"{"v":1}"#));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            if fail == 1 {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            r
        }
    })
    .await
}

fn knob(v: u32) -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(v))
}

async fn rollout(f: &Ficus) -> serde_json::Value {
    get(&f.admin_url("/admin/rollouts?route=orders")).await.json()
}

/// Sends keyless requests, four at a time, until each side has seen `n` more (or `8 n` went:
/// after a rollback to 0 % modern sees none, and the assertions that follow say so).
async fn drive_both(f: &Ficus, legacy: &Upstream, modern: &Upstream, n: usize) {
    let (lt, mt) = (legacy.hits() + n, modern.hits() + n);
    let c = client();
    for _ in 0..2 * n {
        if legacy.hits() >= lt && modern.hits() >= mt {
            return;
        }
        let batch = (0..4).map(|_| send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()));
        futures_util::future::join_all(batch).await;
    }
}

/// Sends keyless requests one at a time until modern has seen `n` more (legacy gets its share).
async fn drive_modern(f: &Ficus, modern: &Upstream, n: usize) {
    let target = modern.hits() + n;
    let c = client();
    for _ in 0..20 * n {
        if modern.hits() >= target {
            return;
        }
        send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
    }
}

fn events(view: &serde_json::Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

async fn admin_post(f: &Ficus, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::post(f.admin_url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(empty()).unwrap()).await
}

/// Every check on; each test adds `step` and `max_p99_ratio` (2 where latency is the point, 50
/// where 1 ms answers would make the ratio noise).
const BASELINE: &str = "every: 1m, min_requests: 20, max_error_rate: 0.5, max_p99: 10s, max_diff_rate: 1, \
                        max_error_rate_increase: 0.05";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_side_three_times_slower_than_legacy_is_rolled_back() {
    let (l, m) = (side(knob(30), knob(0)).await, side(knob(90), knob(0)).await);
    let clock = Arc::new(ManualClock::default());
    let ro = format!("rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 2, rollback_to_zero: true }}");
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock).await;
    drive_both(&f, &l, &m, 25).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["state"] == "rolled_back"
        })
        .await,
        "{}",
        rollout(&f).await
    );
    let v = rollout(&f).await;
    assert_eq!(v["percent"], 0.0, "{v}");
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "rollback", "{v}");
    assert_eq!(
        (last["from_percent"].clone(), last["to_percent"].clone()),
        (50.0.into(), 0.0.into())
    );
    assert!(last["reason"].as_str().unwrap().contains("p99 ratio"), "{last}");
    let ratio = last["figures"]["p99_ratio"].as_f64().unwrap();
    assert!(ratio > 2.0, "the figures the decision saw: {last}");
    assert!(
        last["figures"]["legacy"]["requests"].as_u64().unwrap() >= 20,
        "{last}"
    );
    assert!(
        last["figures"]["modern"]["p99_ms"].as_f64().unwrap() >= 90.0,
        "{last}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_side_as_fast_as_legacy_is_promoted() {
    let (l, m) = (side(knob(30), knob(0)).await, side(knob(30), knob(0)).await);
    let clock = Arc::new(ManualClock::default());
    let ro = format!("rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 2 }}");
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock.clone()).await;
    drive_both(&f, &l, &m, 25).await;
    let v = rollout(&f).await;
    assert_eq!(v["state"], "progressing", "{v}");
    assert!(v["analysis"]["legacy"]["requests"].as_u64().unwrap() >= 25, "{v}");
    assert!(v["analysis"]["modern"]["requests"].as_u64().unwrap() >= 25, "{v}");
    let ratio = v["analysis"]["p99_ratio"].as_f64().unwrap();
    assert!((0.5..=2.0).contains(&ratio), "{v}");
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["state"] == "promoted"
        })
        .await,
        "{}",
        rollout(&f).await
    );
    let v = rollout(&f).await;
    assert_eq!(v["percent"], 100.0);
    assert_eq!(events(&v), ["promote"], "{v}");
    assert!(
        v["history"][0]["figures"]["modern"]["requests"].as_u64().unwrap() >= 25,
        "{v}"
    );
    // Both listings carry it.
    let all = get(&f.admin_url("/admin/rollouts")).await.json();
    assert_eq!(all["routes"][0]["route"], "orders", "{all}");
    get(&f.admin_url("/admin/rollouts?route=nope"))
        .await
        .assert_problem(404, "not-found");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_check_does_not_roll_back_when_the_threshold_is_two_and_two_do() {
    let modern_fails = knob(1);
    let (l, m) = (
        side(knob(1), knob(0)).await,
        side(knob(1), modern_fails.clone()).await,
    );
    let clock = Arc::new(ManualClock::default());
    let ro = format!("rollout: {{ {BASELINE}, step: 20, max_p99_ratio: 50, failure_threshold: 2 }}");
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock.clone()).await;

    // 5xx from modern, one request at a time until a check fails: one failed check, which
    // starts a fresh window. Stopping there keeps the burst out of that window (a fixed count
    // of requests let its last few land in it, and they failed the next check too).
    let c = client();
    for _ in 0..400 {
        send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
        if rollout(&f).await["stage"]["failed_checks_in_a_row"] == 1 {
            break;
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["stage"]["failed_checks_in_a_row"] == 1
        })
        .await,
        "{}",
        rollout(&f).await
    );
    let v = rollout(&f).await;
    assert_eq!(v["state"], "progressing", "{v}");
    assert_eq!(events(&v), ["check_failed"], "{v}");
    assert!(
        v["history"][0]["reason"].as_str().unwrap().contains("1 of 2"),
        "{v}"
    );
    assert!(
        v["history"][0]["figures"]["error_rate_increase"]
            .as_f64()
            .unwrap()
            > 0.5,
        "{v}"
    );

    // Modern recovers: the next check passes, the count goes back to 0, and the stage steps.
    modern_fails.store(0, Ordering::SeqCst);
    drive_both(&f, &l, &m, 60).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["stage"]["failed_checks_in_a_row"] == 0
        })
        .await
    );
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["percent"] == 70.0
        })
        .await,
        "{}",
        rollout(&f).await
    );

    // Two failed checks in a row do roll back, to the last good stage.
    modern_fails.store(1, Ordering::SeqCst);
    drive_modern(&f, &m, 22).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["stage"]["failed_checks_in_a_row"] == 1
        })
        .await
    );
    drive_modern(&f, &m, 22).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["state"] == "rolled_back"
        })
        .await,
        "{}",
        rollout(&f).await
    );
    let v = rollout(&f).await;
    assert_eq!(v["percent"], 50.0);
    assert_eq!(
        events(&v),
        ["check_failed", "step", "check_failed", "rollback"],
        "{v}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gate_holds_the_step_until_the_admin_api_approves_it() {
    let (l, m) = (side(knob(1), knob(0)).await, side(knob(1), knob(0)).await);
    let clock = Arc::new(ManualClock::default());
    let ro = format!("rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 50, approval_before: [100] }}");
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock.clone()).await;

    admin_post(&f, "/admin/rollouts/orders/approve", Some(TOKEN))
        .await
        .assert_problem(409, "nothing-to-approve");
    drive_both(&f, &l, &m, 25).await;
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            rollout(&f).await["state"] == "awaiting_approval"
        })
        .await,
        "{}",
        rollout(&f).await
    );
    // Time passing changes nothing; the step waits.
    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v = rollout(&f).await;
    assert_eq!(
        (v["state"].clone(), v["percent"].clone()),
        ("awaiting_approval".into(), 50.0.into())
    );
    assert_eq!(v["awaiting_approval_percent"], 100.0);
    assert_eq!(events(&v), ["approval_needed"], "{v}");

    admin_post(&f, "/admin/rollouts/orders/approve", None)
        .await
        .assert_problem(401, "unauthorized");
    admin_post(&f, "/admin/rollouts/orders/approve", Some("wrong"))
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(
        rollout(&f).await["percent"],
        50.0,
        "a refused approval changed the stage"
    );

    let ok = admin_post(&f, "/admin/rollouts/orders/approve", Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let v = ok.json();
    assert_eq!(
        (v["state"].clone(), v["percent"].clone()),
        ("promoted".into(), 100.0.into()),
        "{v}"
    );
    assert_eq!(events(&v), ["approval_needed", "approve", "promote"], "{v}");

    // Pause, resume and rollback by hand, each recorded.
    for action in ["pause", "resume", "rollback"] {
        let a = admin_post(&f, &format!("/admin/rollouts/orders/{action}"), Some(TOKEN)).await;
        assert_eq!(a.status, 200, "{action}: {}", a.text());
    }
    let v = rollout(&f).await;
    assert_eq!(
        (v["state"].clone(), v["percent"].clone()),
        ("rolled_back".into(), 50.0.into()),
        "{v}"
    );
    assert_eq!(
        events(&v),
        [
            "approval_needed",
            "approve",
            "promote",
            "pause",
            "resume",
            "rollback"
        ]
    );
    admin_post(&f, "/admin/rollouts/orders/jump", Some(TOKEN))
        .await
        .assert_problem(404, "not-found");
    let get_on_post = get(&f.admin_url("/admin/rollouts/orders/approve")).await;
    get_on_post.assert_problem(405, "method-not-allowed");

    // Each write, refused or not, left an audit line naming the route and the action.
    let audit = std::fs::read_to_string(f.dir.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let approvals: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "rollout.approve")
        .collect();
    assert_eq!(approvals.len(), 4, "{audit}");
    assert_eq!(approvals[1]["outcome"], "denied", "{audit}");
    assert_eq!(approvals[3]["outcome"], "ok", "{audit}");
    assert_eq!(approvals[3]["target"], "orders", "{audit}");
    assert!(lines.iter().any(|l| l["action"] == "rollout.rollback"), "{audit}");
    f.shutdown().await;
}

/// What a webhook receiver saw: one entry per attempt.
#[derive(Clone, Default)]
struct Received(Arc<parking_lot::Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>);

/// A real receiver on 127.0.0.1:0 that answers 503 to its first `fail_first` attempts, and
/// holds every answer for `hang` (to stand for a receiver that never answers).
async fn receiver(fail_first: usize, hang: Duration) -> (Upstream, Received) {
    let got = Received::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let up = Upstream::start(move |req: Request<Incoming>| {
        let (g, seen) = (g.clone(), seen.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            g.0.lock().push((parts.headers, body));
            tokio::time::sleep(hang).await;
            let mut r = Response::new(empty());
            if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    (up, got)
}

fn verify(headers: &http::HeaderMap, body: &[u8]) {
    let ts = headers["x-ficus-timestamp"].to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(ts.parse::<u64>().unwrap()) < 60,
        "stale timestamp {ts}"
    );
    let sig = headers["x-ficus-signature"].to_str().unwrap();
    let hex = sig.strip_prefix("sha256=").unwrap();
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = [ts.as_bytes(), b".", body].concat();
    hmac::verify(&key, &signed, &tag).expect("a valid signature over timestamp.body");
    // The wrong key, or a different body, does not verify.
    let other = hmac::Key::new(hmac::HMAC_SHA256, b"another");
    assert!(hmac::verify(&other, &signed, &tag).is_err());
    assert!(hmac::verify(&key, &[ts.as_bytes(), b".{}"].concat(), &tag).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_a_failing_receiver_gets_retries() {
    let (l, m) = (side(knob(1), knob(0)).await, side(knob(1), knob(0)).await);
    let (hook, got) = receiver(2, Duration::ZERO).await;
    let (all_hook, all_got) = receiver(0, Duration::ZERO).await;
    let clock = Arc::new(ManualClock::default());
    let ro = format!(
        "rollout:\n  {{ {BASELINE}, step: 50, max_p99_ratio: 50, approval_before: [100], webhooks: [\n    \
         {{ url: '{}/hook', secret_env: {SECRET_ENV}, events: [approval_needed], max_attempts: 4 }},\n    \
         {{ url: '{}/all', secret_env: {SECRET_ENV} }} ] }}",
        hook.url(),
        all_hook.url()
    );
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock.clone()).await;
    drive_both(&f, &l, &m, 25).await;
    clock.advance(Duration::from_secs(60));

    // Two 503s, then a 2xx: three attempts of one delivery, the retries spaced by backoff.
    assert!(
        eventually(Duration::from_secs(10), || async { got.0.lock().len() >= 3 }).await,
        "{} attempts",
        got.0.lock().len()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let attempts = got.0.lock().clone();
    assert_eq!(attempts.len(), 3, "no attempt after the delivery succeeded");
    let ids: Vec<_> = attempts
        .iter()
        .map(|(h, _)| h["x-ficus-delivery"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery, retried: {ids:?}"
    );
    for (headers, body) in &attempts {
        verify(headers, body);
        assert_eq!(headers["x-ficus-event"], "approval_needed");
        assert_eq!(headers["content-type"], "application/json");
        let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(doc["route"], "orders", "{doc}");
        assert_eq!(doc["event"], "approval_needed", "{doc}");
        assert_eq!(doc["state"], "awaiting_approval", "{doc}");
        assert_eq!(
            (doc["from_percent"].clone(), doc["to_percent"].clone()),
            (50.0.into(), 100.0.into())
        );
        assert!(
            doc["figures"]["modern"]["requests"].as_u64().unwrap() >= 25,
            "{doc}"
        );
    }

    // The receiver without an event filter hears every decision: the approval, the promotion
    // and the operator's pause and rollback.
    assert_eq!(
        admin_post(&f, "/admin/rollouts/orders/approve", Some(TOKEN))
            .await
            .status,
        200
    );
    assert_eq!(
        admin_post(&f, "/admin/rollouts/orders/pause", Some(TOKEN))
            .await
            .status,
        200
    );
    assert_eq!(
        admin_post(&f, "/admin/rollouts/orders/rollback", Some(TOKEN))
            .await
            .status,
        200
    );
    let want = ["approval_needed", "approve", "promote", "pause", "rollback"];
    assert!(
        eventually(Duration::from_secs(5), || async {
            all_got.0.lock().len() >= want.len()
        })
        .await
    );
    let mut seen: Vec<String> = all_got
        .0
        .lock()
        .iter()
        .map(|(h, b)| {
            verify(h, b);
            h["x-ficus-event"].to_str().unwrap().to_string()
        })
        .collect();
    seen.sort();
    let mut want = want.map(String::from).to_vec();
    want.sort();
    assert_eq!(seen, want);
    // A delivery is counted once its 2xx is read, a moment after the receiver kept the body.
    let delivered = r#"ficus_rollout_webhooks_total{route="orders",outcome="delivered"}"#;
    let counted = eventually(Duration::from_secs(5), || async {
        metric(&get(&f.admin_url("/metrics")).await.text(), delivered) == Some(6.0)
    })
    .await;
    let metrics = get(&f.admin_url("/metrics")).await.text();
    assert!(counted, "{metrics}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_receiver_never_slows_requests_or_decisions() {
    let (l, m) = (side(knob(0), knob(0)).await, side(knob(0), knob(0)).await);
    let (hook, got) = receiver(0, Duration::from_secs(3600)).await;
    let clock = Arc::new(ManualClock::default());
    let ro = format!(
        "rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 50, webhooks: [ {{ url: '{}/hang', secret_env: {SECRET_ENV}, timeout: 30s }} ] }}",
        hook.url()
    );
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &ro), clock).await;
    let c = client();
    // 300 pause/resume pairs: 600 decisions for a receiver that never answers, more than the
    // queue holds. Each admin call answers at once, and so does traffic in between.
    let mut slowest_admin = Duration::ZERO;
    let mut slowest_request = Duration::ZERO;
    for i in 0..300 {
        for action in ["pause", "resume"] {
            let t = Instant::now();
            let a = admin_post(&f, &format!("/admin/rollouts/orders/{action}"), Some(TOKEN)).await;
            assert_eq!(a.status, 200);
            slowest_admin = slowest_admin.max(t.elapsed());
        }
        if i % 10 == 0 {
            let t = Instant::now();
            let a = send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
            assert_eq!(a.status, 200);
            slowest_request = slowest_request.max(t.elapsed());
        }
    }
    assert!(
        slowest_admin < Duration::from_millis(500),
        "an admin call took {slowest_admin:?}"
    );
    assert!(
        slowest_request < Duration::from_millis(500),
        "a request took {slowest_request:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { !got.0.lock().is_empty() }).await,
        "the receiver was called"
    );
    let metrics = get(&f.admin_url("/metrics")).await.text();
    let dropped = metric(
        &metrics,
        r#"ficus_rollout_webhooks_total{route="orders",outcome="dropped"}"#,
    );
    assert!(
        dropped.unwrap_or(0.0) >= 300.0,
        "a full queue drops and counts: {dropped:?}"
    );
    assert_eq!(
        rollout(&f).await["history"].as_array().unwrap().len(),
        200,
        "the history is bounded"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_check_settings_are_validated_at_load() {
    std::env::remove_var("FICUS_TEST_ANALYSIS_UNSET");
    let ro = format!(
        "rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 0.5, failure_threshold: 0, approval_before: [150], \
         webhooks: [ {{ url: 'ftp://x', secret_env: {SECRET_ENV} }}, \
         {{ url: 'http://127.0.0.1:9/h', secret_env: FICUS_TEST_ANALYSIS_UNSET }} ] }}"
    );
    let err = match Ficus::try_start(&config("http://127.0.0.1:9", "http://127.0.0.1:9", 10, &ro)).await {
        Ok(_) => panic!("a bad rollout section loaded"),
        Err(e) => e.to_string(),
    };
    for want in [
        "routes[0].migration.rollout.max_p99_ratio: must be at least 1",
        "routes[0].migration.rollout.failure_threshold: must be at least 1",
        "routes[0].migration.rollout.approval_before[0]: must be a percent",
        "routes[0].migration.rollout.webhooks[0]: url: must be an absolute http:// or https:// URL",
        "routes[0].migration.rollout.webhooks[1]: environment variable FICUS_TEST_ANALYSIS_UNSET is not set",
    ] {
        assert!(err.contains(want), "{want}\nnot in:\n{err}");
    }
}

/// With `state_store`, the awaited approval is part of the shared stage: an approval gate reached
/// by one instance shows on the other, and an approval given to either applies to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_given_to_one_instance_applies_to_all_sharing_redis() {
    let redis = Redis::start().await;
    let (l, m) = (side(knob(1), knob(0)).await, side(knob(1), knob(0)).await);
    let ro = format!("rollout: {{ {BASELINE}, step: 50, max_p99_ratio: 50, approval_before: [100] }}");
    let yaml = format!(
        "{}state_store: {{ redis_url: '{}', key_prefix: 'analysis:' }}\n",
        config(&l.url(), &m.url(), 50, &ro),
        redis.url
    );
    let (clock_a, clock_b) = (Arc::new(ManualClock::default()), Arc::new(ManualClock::default()));
    let a = Ficus::start_with_clock(&yaml, clock_a.clone()).await;
    let b = Ficus::start_with_clock(&yaml, clock_b).await;
    drive_both(&a, &l, &m, 25).await;
    clock_a.advance(Duration::from_secs(60));
    for f in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                rollout(f).await["state"] == "awaiting_approval"
            })
            .await,
            "{}",
            rollout(f).await
        );
    }
    let ok = admin_post(&b, "/admin/rollouts/orders/approve", Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    for f in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                let v = rollout(f).await;
                v["state"] == "promoted" && v["percent"] == 100.0
            })
            .await,
            "{}",
            rollout(f).await
        );
    }
    // The decision was A's, the approval B's: each instance's history says which it took.
    assert!(events(&rollout(&a).await).contains(&"approval_needed".to_string()));
    assert!(events(&rollout(&b).await).contains(&"approve".to_string()));
    a.shutdown().await;
    b.shutdown().await;
}
