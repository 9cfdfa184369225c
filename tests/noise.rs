//! Noise learning and drift statistics on real upstreams: a field the serving side answers
//! differently each time (a timestamp, a per-answer id) is learned from the first sampled pair
//! and stops counting as a mismatch; a stable field never is, even where the two sides
//! disagree on it; drift counts what still mismatches, field by field and by kind, and its
//! metric holds at most the top ten fields of a route.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use support::*;

fn config(legacy: &str, modern: &str, shadow: &str) -> String {
    let shadow = format!("shadow: {{ {shadow} }}");
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &["modern_percent: 0", &shadow],
        ))
        .build()
}

/// A JSON upstream whose answer `body(n)` gets the number of the call (1, 2, ...), so that a
/// volatile field can differ between any two answers.
async fn counting_upstream(body: fn(u64) -> String) -> Upstream {
    let calls = Arc::new(AtomicU64::new(0));
    Upstream::start(move |_req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut r = Response::new(full(body(n)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
    .await
}

/// Legacy: `generated_at` and each item's `trace` change with every answer; `price`, the
/// `sku`s and `currency` never do.
fn legacy_order(n: u64) -> String {
    format!(
        r#"{{"id":7,"price":10,"currency":"EUR","generated_at":"2026-12-01T00:00:{n:02}.{n}Z","items":[{{"sku":"a","trace":"l-{n}-0"}},{{"sku":"b","trace":"l-{n}-1"}}]}}"#
    )
}

/// Modern: volatile in the same places, but its `price` disagrees with legacy's (a real
/// mismatch) and it lacks `currency` (a real one too, that no volatility explains).
fn modern_order(n: u64) -> String {
    format!(
        r#"{{"id":7,"price":11,"generated_at":"2026-12-01T00:00:{n:02}.{n}Z","items":[{{"sku":"a","trace":"m-{n}-0"}},{{"sku":"b","trace":"m-{n}-1"}}]}}"#
    )
}

/// Legacy's answer, with other volatile values than legacy's own at the same call count.
fn shifted_order(n: u64) -> String {
    legacy_order(n + 1000)
}

async fn comparisons(f: &Ficus, result: &str) -> f64 {
    let m = get(&f.admin_url("/metrics")).await.text();
    metric(
        &m,
        &format!("ficus_shadow_comparisons_total{{route=\"orders\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Sends `n` GETs one after the other and waits until all of them are compared.
async fn traffic(f: &Ficus, n: usize) {
    let before = comparisons(f, "match").await + comparisons(f, "mismatch").await;
    for _ in 0..n {
        assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    }
    let want = before + n as f64;
    assert!(
        eventually(Duration::from_secs(10), || async {
            comparisons(f, "match").await + comparisons(f, "mismatch").await >= want
        })
        .await,
        "{n} comparisons did not finish"
    );
}

fn learned(noise: &serde_json::Value) -> Vec<(String, u64, u64)> {
    noise["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["differed"].as_u64().unwrap(),
                f["of"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn fields(list: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    list.iter().map(|(p, d, o)| (p.to_string(), *d, *o)).collect()
}

fn drift_fields(drift: &serde_json::Value) -> Vec<String> {
    drift["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// The bound: at `sample: 100%`, a volatile field is classified by the first sampled pair, which
/// is compared before the request's own shadow comparison, so it never counts as a mismatch.
#[tokio::test]
async fn a_volatile_field_is_learned_from_the_first_pair_and_never_counts_as_a_mismatch() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(modern_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, record_values: true, noise: { sample: 100% }",
    ))
    .await;
    traffic(&f, 1).await;
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(noise["route"], "orders");
    assert_eq!(noise["sample_percent"], 100.0);
    assert_eq!(noise["samples"], 1, "{noise}");
    assert_eq!(
        learned(&noise),
        fields(&[("generated_at", 1, 1), ("items.*.trace", 1, 1)]),
        "{noise}"
    );
    assert!(noise["fields"][0]["since"].as_str().unwrap().starts_with("20"));
    // Already that first comparison leaves the noise out: only the real differences remain.
    let diffs = get(&f.admin_url("/admin/diffs?route=orders")).await.json();
    let paths: Vec<&str> = diffs["diffs"][0]["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["$.currency", "$.price"], "{diffs}");

    traffic(&f, 40).await;
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(noise["samples"], 41);
    assert_eq!(
        learned(&noise),
        fields(&[("generated_at", 41, 41), ("items.*.trace", 41, 41)]),
        "stable fields, even those the sides disagree on, are never learned: {noise}"
    );
    // The serving side got each request twice; the shadow side once.
    assert_eq!((legacy.hits(), modern.hits()), (82, 41));
    // What the real differences count, the volatile fields do not.
    assert_eq!(comparisons(&f, "mismatch").await, 41.0);
    let drift = get(&f.admin_url("/admin/drift?route=orders")).await.json();
    assert_eq!(drift["window_seconds"], 600);
    assert_eq!(
        (drift["comparisons"].as_u64(), drift["mismatched"].as_u64()),
        (Some(41), Some(41))
    );
    assert_eq!(drift_fields(&drift), ["currency", "price"], "{drift}");
    assert_eq!(drift["fields"][0]["kinds"]["missing_on_shadow"], 41);
    assert_eq!(drift["fields"][1]["kinds"]["value_differs"], 41);
    assert_eq!(drift["fields"][1]["rate"], 1.0);
    f.shutdown().await;
}

/// Without noise learning the volatile field is a mismatch on every request; with it the same
/// traffic matches, in the metric, the migration's diff rate and the drift window.
#[tokio::test]
async fn learned_noise_takes_the_volatile_field_out_of_the_diff_rate() {
    // Both sides agree on everything but the volatile fields.
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(shifted_order).await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), "percent: 100")).await;
    traffic(&f, 10).await;
    assert_eq!(comparisons(&f, "mismatch").await, 10.0);
    let drift = get(&f.admin_url("/admin/drift?route=orders")).await.json();
    assert_eq!(drift_fields(&drift), ["generated_at", "items.*.trace"], "{drift}");
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(
        (noise["sample_percent"].as_f64(), noise["samples"].as_u64()),
        (Some(0.0), Some(0))
    );
    f.shutdown().await;

    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, noise: { sample: 100 }",
    ))
    .await;
    traffic(&f, 10).await;
    assert_eq!(comparisons(&f, "match").await, 10.0);
    assert_eq!(comparisons(&f, "mismatch").await, 0.0);
    let migration = get(&f.admin_url("/admin/migration")).await.json();
    assert_eq!(migration["routes"][0]["shadow"]["diff_rate"], 0.0, "{migration}");
    let drift = get(&f.admin_url("/admin/drift?route=orders")).await.json();
    assert_eq!(
        (drift["comparisons"].as_u64(), drift["mismatched"].as_u64()),
        (Some(10), Some(0))
    );
    assert!(drift_fields(&drift).is_empty(), "{drift}");
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(noise["cleared_comparisons"], 10, "{noise}");
    f.shutdown().await;
}

#[tokio::test]
async fn an_ignore_rule_still_applies_and_what_it_ignores_is_not_learned() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(shifted_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, ignore: [generated_at], noise: { sample: 100% }",
    ))
    .await;
    traffic(&f, 3).await;
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(learned(&noise), fields(&[("items.*.trace", 3, 3)]), "{noise}");
    assert_eq!(comparisons(&f, "match").await, 3.0);
    f.shutdown().await;
}

/// A pair whose statuses differ says nothing about volatile fields: it is counted, not compared.
#[tokio::test]
async fn a_pair_with_different_statuses_is_not_compared() {
    let calls = Arc::new(AtomicU64::new(0));
    let legacy = Upstream::start(move |_req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            // The client's call gets 200, the second one 503, and so on.
            let mut r = Response::new(full(format!(r#"{{"n":{n}}}"#)));
            if n % 2 == 1 {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
    .await;
    let modern = counting_upstream(|_| r#"{"n":0}"#.to_string()).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, noise: { sample: 100% }",
    ))
    .await;
    // One at a time, so that calls alternate: the client's, then the second.
    for _ in 0..3 {
        traffic(&f, 1).await;
    }
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(noise["status_differed"], 3, "{noise}");
    assert_eq!(noise["samples"], 0);
    assert!(learned(&noise).is_empty());
    f.shutdown().await;
}

#[tokio::test]
async fn writes_are_sent_twice_only_when_the_shadow_allows_writes() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(legacy_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, allow_writes: true, noise: { sample: 100% }",
    ))
    .await;
    let post = |f: &Ficus| Request::post(f.url("/orders")).body(full("{}")).unwrap();
    assert_eq!(send(&client(), post(&f)).await.status, 200);
    assert!(eventually(Duration::from_secs(5), || async { legacy.hits() == 2 }).await);
    f.shutdown().await;

    // Without `allow_writes` a write is neither shadowed nor sent again.
    let legacy = counting_upstream(legacy_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, noise: { sample: 100% }",
    ))
    .await;
    assert_eq!(send(&client(), post(&f)).await.status, 200);
    // A later read's second call arriving shows the write's would have come first.
    traffic(&f, 1).await;
    assert_eq!(legacy.hits(), 3, "the write went once, the read twice");
    f.shutdown().await;
}

#[tokio::test]
async fn the_noise_sample_is_validated_and_shown_in_the_schema() {
    let bad = config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "noise: { sample: 150% }",
    );
    let err = Ficus::try_start(&bad).await.err().unwrap().to_string();
    assert!(
        err.contains("routes[0].migration.shadow.noise.sample: must be between 0% and 100%"),
        "{err}"
    );
    let bad = config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "noise: { sample: lots }",
    );
    let err = Ficus::try_start(&bad).await.err().unwrap().to_string();
    assert!(err.contains("is not a percentage"), "{err}");
    let schema =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ficus.schema.json")).unwrap();
    assert!(
        schema.contains("NoiseConfig"),
        "regenerate config/ficus.schema.json"
    );
}

#[tokio::test]
async fn unknown_routes_are_404_and_without_a_route_every_shadowed_route_is_listed() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(modern_order).await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), "percent: 100")).await;
    for path in ["/admin/noise?route=nope", "/admin/drift?route=nope"] {
        get(&f.admin_url(path)).await.assert_problem(404, "not-found");
    }
    for path in ["/admin/noise", "/admin/drift"] {
        let all = get(&f.admin_url(path)).await.json();
        assert_eq!(all["routes"][0]["route"], "orders", "{all}");
        assert_eq!(all["routes"].as_array().unwrap().len(), 1);
        let post = send(&client(), Request::post(f.admin_url(path)).body(empty()).unwrap()).await;
        assert_eq!(post.status, 405);
    }
    f.shutdown().await;
}

/// Learned noise and the drift window are the route's shadow state: a reload that leaves the
/// shadow as it was keeps them; one that changes it starts over.
#[tokio::test]
async fn learned_noise_outlives_a_reload_that_leaves_the_shadow_unchanged() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(modern_order).await;
    let shadow = "percent: 100, noise: { sample: 100% }";
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), shadow)).await;
    traffic(&f, 2).await;
    let samples = |n: serde_json::Value| n["samples"].as_u64().unwrap();
    assert_eq!(
        samples(get(&f.admin_url("/admin/noise?route=orders")).await.json()),
        2
    );

    // Another route added: the shadow is unchanged.
    let more = config(&legacy.url(), &modern.url(), shadow)
        + "  - name: other\n    match: { path_prefix: /other }\n    upstream: legacy\n";
    f.write_config(&more);
    f.gw().reload("test").await.unwrap();
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(samples(noise.clone()), 2, "{noise}");
    assert_eq!(learned(&noise).len(), 2);
    assert_eq!(
        get(&f.admin_url("/admin/drift?route=orders")).await.json()["comparisons"],
        2
    );

    f.write_config(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, noise: { sample: 50% }",
    ));
    f.gw().reload("test").await.unwrap();
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(
        (samples(noise.clone()), noise["sample_percent"].as_f64()),
        (0, Some(50.0))
    );
    f.shutdown().await;
}

/// Many differing fields: drift lists them all by kind, the metric only the top ten, and a
/// label value from the body is escaped.
#[tokio::test]
async fn drift_counts_fields_by_kind_and_the_metric_holds_only_the_top_ten() {
    fn side(extra: &str) -> String {
        let fields: Vec<String> = (0..15).map(|i| format!(r#""f{i:02}":{}"#, i)).collect();
        format!("{{{},{extra}}}", fields.join(","))
    }
    let legacy = counting_upstream(|_| side(r#""kind":1,"only_legacy":1,"q\"t":1"#)).await;
    let modern = counting_upstream(|n| {
        let fields: Vec<String> = (0..15).map(|i| format!(r#""f{i:02}":{}"#, i + 100 * n)).collect();
        format!(r#"{{{},"kind":"1","only_modern":1,"q\"t":2}}"#, fields.join(","))
    })
    .await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), "percent: 100")).await;
    traffic(&f, 3).await;
    let drift = get(&f.admin_url("/admin/drift?route=orders")).await.json();
    assert_eq!(drift["fields"].as_array().unwrap().len(), 19, "{drift}");
    let kinds = |path: &str| {
        let f = drift["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} in {drift}"));
        (f["mismatches"].as_u64().unwrap(), f["kinds"].clone())
    };
    let k = |p, s, t, v| serde_json::json!({"missing_on_primary": p, "missing_on_shadow": s, "type_changed": t, "value_differs": v});
    assert_eq!(kinds("kind"), (3, k(0, 0, 3, 0)));
    assert_eq!(kinds("only_legacy"), (3, k(0, 3, 0, 0)));
    assert_eq!(kinds("only_modern"), (3, k(3, 0, 0, 0)));
    assert_eq!(kinds("f07"), (3, k(0, 0, 0, 3)));

    let m = get(&f.admin_url("/metrics")).await.text();
    let series: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("ficus_shadow_drift_field_mismatches{"))
        .collect();
    assert_eq!(series.len(), 10, "{series:#?}");
    assert!(series.iter().all(|s| s.ends_with(" 3")), "{series:#?}");
    assert!(m.contains("# TYPE ficus_shadow_drift_field_mismatches gauge"));
    // Ties go by name: f00..f09 make the top ten, and the quoted key is escaped.
    assert_eq!(
        metric(
            &m,
            "ficus_shadow_drift_field_mismatches{route=\"orders\",field=\"f00\",kind=\"value_differs\"}"
        ),
        Some(3.0)
    );
    let labels = drift_fields(&drift);
    assert!(labels.contains(&"q\"t".to_string()), "{labels:?}");
    f.shutdown().await;
}

/// The rollout's diff-rate guard sees what the comparisons count: with the volatile field as
/// the only difference, it rolls back without noise learning and advances with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_guard_does_not_see_learned_noise() {
    use ficus::pipeline::rollout::ManualClock;
    let guards = "rollout: { step: 20, every: 1m, min_requests: 20, max_error_rate: 0.05, \
                  max_p99: 2s, max_diff_rate: 0.05, rollback_to_zero: true }";
    for (noise, want) in [("", 0.0), (", noise: { sample: 100% }", 70.0)] {
        let legacy = counting_upstream(|n| format!(r#"{{"v":1,"at":"l-{n}"}}"#)).await;
        let modern = counting_upstream(|n| format!(r#"{{"v":1,"at":"m-{n}"}}"#)).await;
        let shadow = format!("shadow: {{ percent: 100{noise} }}");
        let yaml = yaml::Config::new()
            .upstream("legacy", &legacy.url())
            .upstream("modern", &modern.url())
            .route(&yaml::migration_route(
                "orders",
                "/orders",
                &["modern_percent: 50", guards, &shadow],
            ))
            .build();
        let clock = Arc::new(ManualClock::default());
        let f = Ficus::start_with_clock(&yaml, clock.clone()).await;
        traffic(&f, 80).await;
        clock.advance(Duration::from_secs(60));
        let percent = || async {
            get(&f.admin_url("/admin/migration")).await.json()["routes"][0]["modern_percent"]
                .as_f64()
                .unwrap()
        };
        let reached = eventually(Duration::from_secs(5), || async { percent().await == want }).await;
        assert!(
            reached,
            "noise `{noise}`: modern_percent {} != {want}",
            percent().await
        );
        f.shutdown().await;
    }
}

/// After a fallback, legacy served: a second call to modern would pair answers of two sides,
/// so none is made.
#[tokio::test]
async fn after_a_fallback_the_serving_side_is_not_asked_again() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = Upstream::failing(http::StatusCode::SERVICE_UNAVAILABLE, "down").await;
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[
                "modern_percent: 100",
                "fallback_to_legacy: true",
                "shadow: { percent: 100, noise: { sample: 100% } }",
            ],
        ))
        .build();
    let f = Ficus::start(&yaml).await;
    assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    // Give a wrongly launched shadow task time to call out before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Modern: the failed call only; legacy: the fallback only. The shadow copy was made for
    // legacy (its headers, its dialect), which served: it is dropped, never sent to modern.
    assert_eq!((modern.hits(), legacy.hits()), (1, 1));
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"ficus_shadow_comparisons_total{route="orders",result="dropped"}"#
        ),
        Some(1.0),
        "{m}"
    );
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(
        (noise["samples"].as_u64(), noise["failed"].as_u64()),
        (Some(0), Some(0)),
        "{noise}"
    );
    f.shutdown().await;
}

/// The second call shares the shadow's concurrency bound: with one slot, taken by the shadow
/// copy, it is never made, and each one not made is counted.
#[tokio::test]
async fn the_second_call_needs_a_free_shadow_slot_and_is_counted_when_there_is_none() {
    let legacy = counting_upstream(legacy_order).await;
    let modern = counting_upstream(modern_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, max_concurrent: 1, noise: { sample: 100% }",
    ))
    .await;
    for _ in 0..3 {
        traffic(&f, 1).await;
    }
    let noise = get(&f.admin_url("/admin/noise?route=orders")).await.json();
    assert_eq!(
        (noise["dropped"].as_u64(), noise["samples"].as_u64()),
        (Some(3), Some(0)),
        "{noise}"
    );
    assert_eq!((legacy.hits(), modern.hits()), (3, 3));
    f.shutdown().await;
}

/// The second call runs in the shadow task: a slow second answer never delays the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_answer_never_delays_the_client() {
    let calls = Arc::new(AtomicU64::new(0));
    let legacy = Upstream::start(move |_req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            // The client's call (odd) answers at once, the second one (even) after a while.
            if n % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let mut r = Response::new(full(legacy_order(n)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
    .await;
    let modern = counting_upstream(modern_order).await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, noise: { sample: 100% }",
    ))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "the client waited {took:?}");
    // The comparison waits for the second answer, and learns from it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&f.admin_url("/admin/noise?route=orders")).await.json()["samples"] == 1
        })
        .await
    );
    f.shutdown().await;
}
