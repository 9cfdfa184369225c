//! The strangler-fig split: ratio, stickiness across percent raises, cohorts, and fallback from
//! modern to legacy.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::collections::HashMap;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

fn migration_config(legacy: &str, modern: &str, migration: &[&str]) -> String {
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route("orders", "/orders", migration))
        .build()
}

async fn side_of(c: &H1Client, url: String, user: Option<&str>) -> String {
    let mut b = Request::get(url);
    if let Some(u) = user {
        b = b.header("x-user", u);
    }
    send(c, b.body(empty()).unwrap()).await.echoed().name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_requests_split_at_the_configured_ratio() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &modern.url(),
        &["modern_percent: 30"],
    ))
    .await;
    let c = client();
    for _ in 0..1000 {
        side_of(&c, f.url("/orders/1"), None).await;
    }
    // Binomial(1000, 0.3): standard deviation 14.5; 250..350 is beyond 3.4 of them.
    assert!(
        (250..350).contains(&modern.hits()),
        "modern served {} of 1000",
        modern.hits()
    );
    assert_eq!(legacy.hits() + modern.hits(), 1000);
    let m = get(&f.admin_url("/metrics")).await.text();
    let served = metric(
        &m,
        "ficus_requests_total{route=\"orders\",upstream=\"modern\",method=\"GET\",status_class=\"2xx\"}",
    );
    assert_eq!(served, Some(modern.hits() as f64), "{m}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percent_moves_sticky_users_only_from_legacy_to_modern() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let yaml = |p: u32| {
        migration_config(
            &legacy.url(),
            &modern.url(),
            &[&format!("modern_percent: {p}"), "sticky: header:x-user"],
        )
    };
    let f = Ficus::start(&yaml(20)).await;
    let c = client();
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut before = HashMap::new();
    for u in &users {
        let side = side_of(&c, f.url("/orders"), Some(u)).await;
        // Sticky: the same user lands on the same side every time.
        for _ in 0..2 {
            assert_eq!(
                side_of(&c, f.url("/orders/x"), Some(u)).await,
                side,
                "{u} moved without a change"
            );
        }
        before.insert(u.clone(), side);
    }
    let modern_before = before.values().filter(|s| *s == "modern").count();
    assert!(
        (20..=60).contains(&modern_before),
        "{modern_before} of 200 on modern at 20%"
    );

    f.write_config(&yaml(50));
    f.gw().reload("test").await.unwrap();
    let mut moved = 0;
    for u in &users {
        let now = side_of(&c, f.url("/orders"), Some(u)).await;
        if before[u] == "modern" {
            assert_eq!(now, "modern", "{u} went back to legacy when the percent rose");
        } else if now == "modern" {
            moved += 1;
        }
    }
    let modern_after = modern_before + moved;
    assert!(
        moved > 0 && (70..=130).contains(&modern_after),
        "{modern_after} of 200 on modern at 50%"
    );
    f.shutdown().await;
}

/// Deterministic: the same 1000 sticky keys land in the same buckets on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_split_ratio_is_within_tolerance_and_reported_per_backend() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &modern.url(),
        &["modern_percent: 30", "sticky: header:x-user"],
    ))
    .await;
    let c = client();
    for i in 0..1000 {
        side_of(&c, f.url("/orders"), Some(&format!("seeded-user-{i}"))).await;
    }
    // Within five points of 30% (a binomial spread of 1000 keys has a 1.45-point deviation).
    assert!(
        (250..=350).contains(&modern.hits()),
        "modern served {} of 1000 keys at 30%",
        modern.hits()
    );
    let st = get(&f.admin_url("/admin/migration")).await.json();
    let minute = &st["routes"][0]["last_minute"];
    assert_eq!(minute["modern"]["requests"], modern.hits() as u64, "{st}");
    assert_eq!(minute["legacy"]["requests"], legacy.hits() as u64, "{st}");
    assert_eq!(minute["modern"]["error_rate"], 0.0);
    assert!(minute["legacy"]["p99_ms"].as_f64().unwrap() > 0.0);
    f.shutdown().await;
}

#[tokio::test]
async fn cohort_members_are_always_served_by_modern() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &modern.url(),
        &[
            "modern_percent: 0",
            "sticky: header:x-user",
            "cohorts: [beta-tester, tenant-9]",
        ],
    ))
    .await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(side_of(&c, f.url("/orders"), Some("beta-tester")).await, "modern");
        assert_eq!(side_of(&c, f.url("/orders"), Some("tenant-9")).await, "modern");
        assert_eq!(side_of(&c, f.url("/orders"), Some("someone")).await, "legacy");
        assert_eq!(side_of(&c, f.url("/orders"), None).await, "legacy");
    }
    f.shutdown().await;
}

/// `client-ip` was the sticky spelling before keys were spelled alike everywhere: it still
/// loads and splits by the client address, and the config's warnings name the new spelling.
#[tokio::test]
async fn the_old_client_ip_spelling_still_splits_and_warns() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &modern.url(),
        &["modern_percent: 0", "sticky: client-ip", "cohorts: ['127.0.0.1']"],
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            side_of(&c, f.url("/orders"), None).await,
            "modern",
            "127.0.0.1 is a cohort"
        );
    }
    let routes = get(&f.admin_url("/admin/routes")).await.json();
    let warnings: Vec<&str> = routes["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        warnings.iter().any(|w| w.ends_with(
            ":15: routes[0].migration.sticky: `client-ip` is the old spelling; write `client_ip`"
        )),
        "{warnings:?}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn failed_modern_calls_fall_back_to_legacy_for_retryable_requests() {
    let legacy = Upstream::echo_named("legacy").await;
    let broken = Upstream::failing(StatusCode::SERVICE_UNAVAILABLE, "modern is down").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &broken.url(),
        &["modern_percent: 100", "fallback_to_legacy: true"],
    ))
    .await;
    let c = client();
    let a = send(&c, Request::get(f.url("/orders/7")).body(empty()).unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.echoed().name, "legacy");
    // A PUT with a body is resent whole to legacy.
    let put = send(
        &c,
        Request::put(f.url("/orders/7"))
            .body(full("{\"qty\":2}"))
            .unwrap(),
    )
    .await;
    assert_eq!((put.status.as_u16(), put.echoed().body_len), (200, 9));
    // A POST that modern received is never resent: the client sees modern's answer.
    let post = send(&c, Request::post(f.url("/orders")).body(full("{}")).unwrap()).await;
    assert_eq!(post.status, 503);
    assert_eq!(broken.hits(), 3);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_fallbacks_total{route=\"orders\",reason=\"5xx\"}"),
        Some(2.0),
        "{m}"
    );
    f.shutdown().await;

    // An unreachable modern side falls back too.
    let dead = free_port();
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &format!("http://127.0.0.1:{dead}"),
        &["modern_percent: 100", "fallback_to_legacy: true"],
    ))
    .await;
    assert_eq!(side_of(&client(), f.url("/orders"), None).await, "legacy");
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            "ficus_fallbacks_total{route=\"orders\",reason=\"connect-error\"}"
        ),
        Some(1.0),
        "{m}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn without_fallback_the_modern_failure_reaches_the_client() {
    let legacy = Upstream::echo_named("legacy").await;
    let dead = free_port();
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &format!("http://127.0.0.1:{dead}"),
        &["modern_percent: 100"],
    ))
    .await;
    get(&f.url("/orders"))
        .await
        .assert_problem(502, "upstream-unreachable");
    assert_eq!(legacy.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn migration_config_errors_are_located() {
    let yaml = migration_config(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &["modern_percent: 120", "sticky: 'jwt'"],
    )
    .replace("modern: { upstream: modern }", "modern: { upstream: nowhere }");
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("routes[0].migration.modern.upstream: no upstream named `nowhere`"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].migration.modern_percent: must be between 0 and 100"),
        "{err}"
    );
    assert!(err.contains("routes[0].migration.sticky: `jwt`"), "{err}");
    let both = migration_config("http://127.0.0.1:9", "http://127.0.0.1:9", &[])
        .replace("    migration:", "    upstream: legacy\n    migration:");
    let err = Ficus::try_start(&both).await.err().expect("refused").to_string();
    assert!(
        err.contains("routes[0].upstream: set `upstream` or `migration`, not both"),
        "{err}"
    );
}

#[tokio::test]
async fn open_breaker_on_modern_falls_back_to_legacy() {
    let legacy = Upstream::echo_named("legacy").await;
    let broken = Upstream::start(|_req: Request<Incoming>| async move {
        let mut r = Response::new(full("down"));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    })
    .await;
    let yaml = migration_config(&legacy.url(), &broken.url(), &["modern_percent: 100", "fallback_to_legacy: true"])
        .replace(
            &format!("modern: {{ endpoints: ['{}'] }}", broken.url()),
            &format!(
                "modern: {{ endpoints: ['{}'], circuit_breaker: {{ min_requests: 3, failure_rate: 0.5, open_for: 30s }} }}",
                broken.url()
            ),
        );
    let f = Ficus::start(&yaml).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(side_of(&c, f.url("/orders"), None).await, "legacy");
    }
    assert_eq!(
        broken.hits(),
        3,
        "once open, the breaker keeps requests off modern"
    );
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_fallbacks_total{route=\"orders\",reason=\"5xx\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ficus_fallbacks_total{route=\"orders\",reason=\"circuit-open\"}"
        ),
        Some(7.0),
        "{m}"
    );
    f.shutdown().await;
}

/// A backend that ignores `Idempotency-Key` would execute the write twice: once on modern, once
/// on legacy. The client gets modern's answer instead.
#[tokio::test]
async fn post_is_not_replayed_on_legacy_when_modern_answers_5xx() {
    let legacy = Upstream::echo_named("legacy").await;
    let broken = Upstream::failing(StatusCode::SERVICE_UNAVAILABLE, "modern is down").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &broken.url(),
        &["modern_percent: 100", "fallback_to_legacy: true"],
    ))
    .await;
    let c = client();
    let keyed = Request::post(f.url("/orders"))
        .header("idempotency-key", "order-1")
        .body(full("{}"))
        .unwrap();
    let a = send(&c, keyed).await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (503, "modern is down"));
    assert_eq!((broken.hits(), legacy.hits()), (1, 0));
    // A GET still falls back.
    assert_eq!(side_of(&c, f.url("/orders/1"), None).await, "legacy");
    f.shutdown().await;
}

/// A write that reached modern once (503), then failed to connect on its retry, did leave ficus:
/// the fallback must not send it to legacy as well.
#[tokio::test]
async fn a_retried_post_whose_retry_cannot_connect_is_not_replayed_on_legacy() {
    let legacy = Upstream::echo_named("legacy").await;
    let broken = Upstream::failing(StatusCode::SERVICE_UNAVAILABLE, "modern is down").await;
    let dead = free_port();
    let yaml = migration_config(
        &legacy.url(),
        &broken.url(),
        &["modern_percent: 100", "fallback_to_legacy: true"],
    )
    .replace(
        &format!("modern: {{ endpoints: ['{}'] }}", broken.url()),
        &format!(
            "modern: {{ endpoints: ['{}', 'http://127.0.0.1:{dead}'], retry: {{ attempts: 1, backoff: 1ms, max_backoff: 2ms, non_idempotent: true }} }}",
            broken.url()
        ),
    );
    assert!(yaml.contains("non_idempotent"), "{yaml}");
    let f = Ficus::start(&yaml).await;
    let c = client();
    for _ in 0..4 {
        let a = send(&c, Request::post(f.url("/orders")).body(full("{}")).unwrap()).await;
        assert_eq!(a.status.as_u16(), 503, "{}", a.text());
    }
    assert_eq!(legacy.hits(), 0, "a write modern had seen was replayed on legacy");
    // A GET may be replayed: legacy is reachable through the same fallback.
    assert_reaches(&legacy, get(&f.url("/orders"))).await;
    f.shutdown().await;
}

/// A refused connection to modern proves the POST never left ficus: legacy may serve it.
#[tokio::test]
async fn post_falls_back_to_legacy_when_modern_is_unreachable() {
    let legacy = Upstream::echo_named("legacy").await;
    let dead = free_port();
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &format!("http://127.0.0.1:{dead}"),
        &["modern_percent: 100", "fallback_to_legacy: true"],
    ))
    .await;
    let a = send(
        &client(),
        Request::post(f.url("/orders")).body(full("{\"q\":1}")).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let e = a.echoed();
    assert_eq!((e.name.as_str(), e.body_len), ("legacy", 7));
    f.shutdown().await;
}

#[tokio::test]
async fn post_falls_back_on_5xx_when_the_route_opts_in() {
    let legacy = Upstream::echo_named("legacy").await;
    let broken = Upstream::failing(StatusCode::SERVICE_UNAVAILABLE, "modern is down").await;
    let f = Ficus::start(&migration_config(
        &legacy.url(),
        &broken.url(),
        &[
            "modern_percent: 100",
            "fallback_to_legacy: true",
            "fallback_non_idempotent: true",
        ],
    ))
    .await;
    let a = send(
        &client(),
        Request::post(f.url("/orders")).body(full("{}")).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.echoed().name, "legacy");
    assert_eq!((broken.hits(), legacy.hits()), (1, 1));
    f.shutdown().await;
}

#[tokio::test]
async fn the_non_idempotent_fallback_opt_in_needs_the_fallback() {
    let yaml = migration_config(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &["fallback_non_idempotent: true"],
    );
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("routes[0].migration.fallback_non_idempotent: needs `fallback_to_legacy: true`"),
        "{err}"
    );
}

/// The request duration is labelled by the side that served: legacy and modern separately on a
/// migration route, `none` on a route without a migration.
#[tokio::test]
async fn request_duration_is_labelled_by_the_side_that_served() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let yaml = migration_config(&legacy.url(), &modern.url(), &["modern_percent: 50"]).replace(
        "routes:\n",
        "routes:\n  - name: plain\n    match: { path_prefix: /plain }\n    upstream: legacy\n",
    );
    let f = Ficus::start(&yaml).await;
    let c = client();
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        *served
            .entry(side_of(&c, f.url("/orders/1"), None).await)
            .or_default() += 1;
    }
    assert_eq!(side_of(&c, f.url("/plain"), None).await, "legacy");
    // Binomial(40, 0.5): both sides serve, but for a chance of 2 in 10^12.
    assert!(served.len() == 2, "{served:?}");

    let m = get(&f.admin_url("/metrics")).await.text();
    let count = |route: &str, side: &str| {
        metric(
            &m,
            &format!("ficus_request_duration_seconds_count{{route=\"{route}\",side=\"{side}\"}}"),
        )
    };
    assert_eq!(count("orders", "legacy"), Some(served["legacy"] as f64), "{m}");
    assert_eq!(count("orders", "modern"), Some(served["modern"] as f64), "{m}");
    assert_eq!(count("plain", "none"), Some(1.0), "{m}");
    assert_eq!(
        count("orders", "none"),
        None,
        "a migration route has no `none` side: {m}"
    );
    assert!(
        !m.contains("ficus_request_duration_seconds_count{route=\"orders\"}"),
        "no series merges the sides: {m}"
    );
    f.shutdown().await;
}
