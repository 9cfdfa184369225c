//! Guarded rollout, driven by a manual clock: it advances on healthy traffic, rolls back when
//! errors, latency or diffs break a guard, obeys the admin API, and keeps its stage across a
//! reload that leaves the migration unchanged.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ficus::pipeline::rollout::ManualClock;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

const TOKEN_ENV: &str = "FICUS_TEST_ROLLOUT_TOKEN";

fn config(legacy: &str, modern: &str, percent: u32, rollout: &str, shadow: &str) -> String {
    let percent = format!("modern_percent: {percent}");
    let rollout = format!("rollout: {{ {rollout} }}");
    yaml::Config::new()
        .admin_extra(&format!("token_env: {TOKEN_ENV}"))
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[&percent, &rollout, shadow],
        ))
        .build()
}

/// Modern behaves as `mode` says: 0 healthy, 1 answers 500, 2 answers slowly, 3 answers other JSON.
async fn modern(mode: Arc<AtomicU32>) -> Upstream {
    Upstream::start(move |_req: Request<Incoming>| {
        let m = mode.load(Ordering::SeqCst);
        async move {
            if m == 2 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let mut r = Response::new(full(if m == 3 { r#"{"v":2}"# } else { r#"{"v":1}"# }));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            if m == 1 {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            r
        }
    })
    .await
}

async fn legacy() -> Upstream {
    Upstream::start(|_req: Request<Incoming>| async move {
        let mut r = Response::new(full(r#"{"v":1}"#));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    })
    .await
}

async fn status(f: &Ficus) -> serde_json::Value {
    get(&f.admin_url("/admin/migration")).await.json()["routes"][0].clone()
}

/// Sends keyless requests until modern has seen at least `n` more (or 2000 were sent: a
/// rollback to 0% stops modern's share, and the assertions that follow say what happened).
async fn drive_modern(f: &Ficus, modern: &Upstream, n: usize) {
    let target = modern.hits() + n;
    let c = client();
    for _ in 0..2000 {
        if modern.hits() >= target {
            return;
        }
        send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
    }
}

const GUARDS: &str =
    "step: 20, every: 1m, min_requests: 20, max_error_rate: 0.05, max_p99: 100ms, max_diff_rate: 0.05";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_advances_on_healthy_traffic_and_rolls_back_on_errors() {
    let mode = Arc::new(AtomicU32::new(0));
    let (l, m) = (legacy().await, modern(mode.clone()).await);
    let clock = Arc::new(ManualClock::default());
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 20, GUARDS, ""), clock.clone()).await;

    drive_modern(&f, &m, 25).await;
    assert_eq!(
        status(&f).await["modern_percent"],
        20.0,
        "no step before `every` has passed"
    );
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 40.0
        })
        .await
    );

    // Modern starts failing: the error guard breaks, back to the last good stage, paused.
    mode.store(1, Ordering::SeqCst);
    drive_modern(&f, &m, 25).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 20.0
        })
        .await
    );
    let st = status(&f).await;
    assert_eq!(st["rollout"]["paused"], true, "{st}");
    assert!(
        st["rollout"]["last_event"]
            .as_str()
            .unwrap()
            .contains("error rate"),
        "{st}"
    );
    // Paused: time passing does nothing.
    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&f).await["modern_percent"], 20.0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_guard_rolls_back() {
    let mode = Arc::new(AtomicU32::new(2));
    let (l, m) = (legacy().await, modern(mode).await);
    let clock = Arc::new(ManualClock::default());
    let rollout = format!("{GUARDS}, rollback_to_zero: true");
    let f = Ficus::start_with_clock(&config(&l.url(), &m.url(), 50, &rollout, ""), clock).await;
    drive_modern(&f, &m, 25).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 0.0
        })
        .await
    );
    assert!(status(&f).await["rollout"]["last_event"]
        .as_str()
        .unwrap()
        .contains("p99"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_guard_rolls_back() {
    let mode = Arc::new(AtomicU32::new(3));
    let (l, m) = (legacy().await, modern(mode).await);
    let clock = Arc::new(ManualClock::default());
    let rollout = format!("{GUARDS}, rollback_to_zero: true");
    let yaml = config(&l.url(), &m.url(), 50, &rollout, "shadow: { percent: 100 }");
    let f = Ficus::start_with_clock(&yaml, clock).await;
    // Modern sees both its own share and the shadow copies of legacy's: drive enough of each.
    drive_modern(&f, &m, 80).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 0.0
        })
        .await
    );
    assert!(status(&f).await["rollout"]["last_event"]
        .as_str()
        .unwrap()
        .contains("diff rate"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_pauses_resumes_and_sets_the_stage_which_survives_a_reload() {
    std::env::set_var(TOKEN_ENV, "roll");
    let mode = Arc::new(AtomicU32::new(0));
    let (l, m) = (legacy().await, modern(mode).await);
    let clock = Arc::new(ManualClock::default());
    let yaml = config(&l.url(), &m.url(), 10, GUARDS, "");
    let f = Ficus::start_with_clock(&yaml, clock.clone()).await;
    let act = |body: &'static str| {
        Request::post(f.admin_url("/admin/routes/orders/rollout"))
            .header("authorization", "Bearer roll")
            .body(full(body))
            .unwrap()
    };
    let c = client();
    assert_eq!(
        send(&c, act(r#"{"action":"set","percent":60}"#)).await.status,
        200
    );
    assert_eq!(status(&f).await["modern_percent"], 60.0);
    assert_eq!(
        send(&c, act(r#"{"action":"pause"}"#)).await.json()["paused"],
        true
    );
    drive_modern(&f, &m, 25).await;
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&f).await["modern_percent"], 60.0, "paused");

    // A reload that leaves the migration unchanged keeps the stage.
    let more = format!("{yaml}  - {{ name: other, match: {{ path: /other }}, upstream: legacy }}\n");
    f.write_config(&more);
    f.gw().reload("test").await.unwrap();
    assert_eq!(status(&f).await["modern_percent"], 60.0);

    assert_eq!(
        send(&c, act(r#"{"action":"resume"}"#)).await.json()["paused"],
        false
    );
    drive_modern(&f, &m, 25).await;
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 80.0
        })
        .await
    );

    send(&c, act(r#"{"action":"jump"}"#))
        .await
        .assert_problem(400, "invalid-rollout-action");
    let no_token = Request::post(f.admin_url("/admin/routes/orders/rollout"))
        .body(full("{}"))
        .unwrap();
    send(&c, no_token).await.assert_problem(401, "unauthorized");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_agree_on_the_stage() {
    std::env::set_var(TOKEN_ENV, "roll");
    let redis = Redis::start().await;
    let mode = Arc::new(AtomicU32::new(0));
    let (l, m) = (legacy().await, modern(mode).await);
    let yaml = format!(
        "{}state_store: {{ redis_url: '{}', key_prefix: 'test:' }}\n",
        config(&l.url(), &m.url(), 10, GUARDS, ""),
        redis.url
    );
    let (clock_a, clock_b) = (Arc::new(ManualClock::default()), Arc::new(ManualClock::default()));
    let a = Ficus::start_with_clock(&yaml, clock_a.clone()).await;
    let b = Ficus::start_with_clock(&yaml, clock_b).await;
    let set = Request::post(a.admin_url("/admin/routes/orders/rollout"))
        .header("authorization", "Bearer roll")
        .body(full(r#"{"action":"set","percent":45}"#))
        .unwrap();
    assert_eq!(send(&client(), set).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&b).await["modern_percent"] == 45.0
        })
        .await
    );

    // A decision taken by one instance (an advance on A's healthy traffic) reaches the other.
    drive_modern(&a, &m, 25).await;
    clock_a.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&b).await["modern_percent"] == 65.0
        })
        .await
    );
    assert_eq!(status(&a).await["modern_percent"], 65.0);
    a.shutdown().await;
    b.shutdown().await;
}

/// What defines a rollout is its guards, its start and its two sides. Changing anything else
/// keeps the stage it reached; a refused reload changes nothing, even the state a later reload
/// inherits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_its_stage_across_shadow_edits_and_refused_reloads() {
    let (l, m) = (legacy().await, modern(Arc::new(AtomicU32::new(0))).await);
    let clock = Arc::new(ManualClock::default());
    let yaml = |shadow: u32, step: u32| {
        let guards = GUARDS.replace("step: 20", &format!("step: {step}"));
        config(
            &l.url(),
            &m.url(),
            20,
            &guards,
            &format!("shadow: {{ percent: {shadow} }}"),
        )
    };
    let f = Ficus::start_with_clock(&yaml(10, 20), clock.clone()).await;
    // Modern's hits include the shadow copies, which the stage does not count: drive enough.
    drive_modern(&f, &m, 60).await;
    clock.advance(Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&f).await["modern_percent"] == 40.0
        })
        .await
    );

    f.write_config(&yaml(50, 20));
    f.gw().reload("shadow edit").await.unwrap();
    assert_eq!(
        status(&f).await["modern_percent"],
        40.0,
        "a shadow edit restarted the rollout"
    );

    // Refused: the rollout changes, but an unknown upstream spoils the config.
    let broken = format!(
        "{}  - {{ name: bad, match: {{ path: /bad }}, upstream: nowhere }}\n",
        yaml(50, 30)
    );
    f.write_config(&broken);
    assert!(f.gw().reload("broken").await.is_err());
    assert_eq!(status(&f).await["modern_percent"], 40.0);
    // The next good reload finds the running rollout, not the one the refused config built.
    let more = format!(
        "{}  - {{ name: other, match: {{ path: /other }}, upstream: legacy }}\n",
        yaml(50, 20)
    );
    f.write_config(&more);
    f.gw().reload("good").await.unwrap();
    assert_eq!(
        status(&f).await["modern_percent"],
        40.0,
        "a refused reload reset the rollout"
    );

    // The stage is observed: a change to the rollout itself does start it again.
    f.write_config(&yaml(50, 30));
    f.gw().reload("new rollout").await.unwrap();
    assert_eq!(status(&f).await["modern_percent"], 20.0);
    f.shutdown().await;
}
