//! Shadow traffic: copies go to the side that is not serving, answers are compared (ignore rules
//! honoured), mismatches are recorded field by field, and a hanging shadow never slows or fails
//! the primary.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::time::{Duration, Instant};

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

/// Answers every request with this JSON.
async fn json_upstream(body: &'static str) -> Upstream {
    Upstream::start(move |_req: Request<Incoming>| async move {
        let mut r = Response::new(full(body));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    })
    .await
}

async fn comparisons(f: &Ficus, result: &str) -> f64 {
    let m = get(&f.admin_url("/metrics")).await.text();
    metric(
        &m,
        &format!("ficus_shadow_comparisons_total{{route=\"orders\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn equal_answers_count_as_matches() {
    let legacy = json_upstream(r#"{"id":7,"total":10}"#).await;
    let modern = json_upstream(r#"{"total":10.0,"id":7}"#).await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), "percent: 100")).await;
    for _ in 0..5 {
        assert_eq!(get(&f.url("/orders/7")).await.text(), r#"{"id":7,"total":10}"#);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "match").await == 5.0
        })
        .await
    );
    assert_eq!(modern.hits(), 5, "the shadow side got a copy of each request");
    assert_eq!(comparisons(&f, "mismatch").await, 0.0);
    f.shutdown().await;
}

#[tokio::test]
async fn mismatches_are_recorded_field_by_field_and_ignore_rules_hold() {
    let legacy = json_upstream(r#"{"id":7,"total":10,"generatedAt":"2026-01-01"}"#).await;
    let modern = json_upstream(r#"{"id":7,"total":11,"generatedAt":"2026-11-25"}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diffs.jsonl");
    let shadow = format!(
        "percent: 100, ignore: [generatedAt], record_values: true, diff_log: '{}'",
        log.display()
    );
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), &shadow)).await;
    let req = Request::get(f.url("/orders/7"))
        .header("x-request-id", "diff-1")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "mismatch").await == 1.0
        })
        .await
    );

    let diffs = get(&f.admin_url("/admin/diffs?route=orders")).await.json();
    let d = &diffs["diffs"][0];
    assert_eq!(d["request_id"], "diff-1", "{diffs}");
    assert_eq!(d["primary"], "legacy");
    assert_eq!(d["path"], "/orders/7");
    assert_eq!(
        d["diffs"].as_array().unwrap().len(),
        1,
        "generatedAt is ignored: {diffs}"
    );
    assert_eq!(d["diffs"][0]["path"], "$.total");
    assert_eq!(d["diffs"][0]["primary"], "10");
    assert_eq!(d["diffs"][0]["shadow"], "11");
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
        })
        .await
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["diffs"][0]["path"], "$.total");
    // Another route's name filters it out.
    assert_eq!(
        get(&f.admin_url("/admin/diffs?route=other")).await.json()["diffs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    f.shutdown().await;
}

#[tokio::test]
async fn the_old_ignore_spelling_still_ignores_and_check_names_the_new_one() {
    let legacy = json_upstream(r#"{"id":7,"items":[{"id":1,"n":1}],"generatedAt":"a"}"#).await;
    let modern = json_upstream(r#"{"id":7,"items":[{"id":2,"n":1}],"generatedAt":"b"}"#).await;
    let shadow = "percent: 100, ignore: ['$.generatedAt', '$.items[*].id']";
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), shadow)).await;
    assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "match").await == 1.0
        })
        .await,
        "both answers differ only where the old-spelling rules ignore"
    );
    assert_eq!(comparisons(&f, "mismatch").await, 0.0);
    let warnings = get(&f.admin_url("/admin/routes")).await.json()["warnings"].to_string();
    assert!(
        warnings.contains(
            "routes[0].migration.shadow.ignore[1]: `$.items[*].id` is the old spelling; write `items.*.id`"
        ),
        "{warnings}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["check", "--config"])
        .arg(&f.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "the old spelling still loads");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("routes[0].migration.shadow.ignore[0]: warning: `$.generatedAt` is the old spelling; write `generatedAt`"),
        "{text}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn writes_are_not_shadowed_unless_allowed() {
    let legacy = json_upstream("{}").await;
    let watched = json_upstream("{}").await;
    let f = Ficus::start(&config(&legacy.url(), &watched.url(), "percent: 100")).await;
    let c = client();
    let read = || Request::get(f.url("/orders")).body(empty()).unwrap();
    // Reads are shadowed: copies are seen arriving where a copy of the write would land.
    send(&c, read()).await;
    assert!(eventually(Duration::from_secs(5), || async { watched.hits() == 1 }).await);
    send(&c, Request::post(f.url("/orders")).body(full("{}")).unwrap()).await;
    // Once the copy of a later read has arrived, the write's copy had its turn before it.
    send(&c, read()).await;
    assert!(eventually(Duration::from_secs(5), || async { watched.hits() >= 2 }).await);
    assert_eq!(watched.hits(), 2, "the write was shadowed");
    f.shutdown().await;

    let modern = json_upstream("{}").await;

    let f = Ficus::start(&config(
        &legacy.url(),
        &modern.url(),
        "percent: 100, allow_writes: true",
    ))
    .await;
    send(
        &client(),
        Request::post(f.url("/orders")).body(full("{}")).unwrap(),
    )
    .await;
    assert!(eventually(Duration::from_secs(5), || async { modern.hits() == 1 }).await);
    f.shutdown().await;
}

/// The shadow side accepts and never answers. The primary must stay fast and successful; the
/// shadow times out, and once its slots are taken, copies are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_slows_or_fails_the_primary() {
    let legacy = json_upstream(r#"{"ok":true}"#).await;
    let hang = Upstream::start(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Response::new(empty())
    })
    .await;
    let f = Ficus::start(&config(
        &legacy.url(),
        &hang.url(),
        "percent: 100, timeout: 3s, max_concurrent: 2",
    ))
    .await;
    let c = client();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let a = send(&c, Request::get(f.url("/orders/1")).body(empty()).unwrap()).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), r#"{"ok":true}"#);
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a primary request took {slowest:?}"
    );
    assert_eq!(
        comparisons(&f, "dropped").await,
        18.0,
        "two slots, twenty requests"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "timeout").await == 2.0
        })
        .await
    );
    f.shutdown().await;
}

/// Response values may be personal data: by default a diff sample keeps where the answers differ
/// and what kind of value each side had, not the values, in the admin API and the diff log.
#[tokio::test]
async fn diff_samples_show_no_values_unless_the_shadow_records_them() {
    let legacy = json_upstream(r#"{"email":"alice@example.com","total":10,"vip":true}"#).await;
    let modern = json_upstream(r#"{"email":"bob@example.org","total":11,"vip":false,"note":null}"#).await;
    for record in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("diffs.jsonl");
        let shadow = format!(
            "percent: 100, record_values: {record}, diff_log: '{}'",
            log.display()
        );
        let f = Ficus::start(&config(&legacy.url(), &modern.url(), &shadow)).await;
        assert_eq!(get(&f.url("/orders/7")).await.status, 200);
        assert!(
            eventually(Duration::from_secs(5), || async {
                comparisons(&f, "mismatch").await == 1.0
                    && std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
            })
            .await
        );
        let page = get(&f.admin_url("/admin/diffs?route=orders")).await;
        let diffs = page.json();
        let d = &diffs["diffs"][0]["diffs"];
        let by_path = |p: &str| {
            d.as_array()
                .unwrap()
                .iter()
                .find(|x| x["path"] == p)
                .unwrap_or_else(|| panic!("no {p} in {d}"))
                .clone()
        };
        let paths: Vec<&str> = d
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["$.email", "$.note", "$.total", "$.vip"], "{diffs}");
        let logged = std::fs::read_to_string(&log).unwrap();
        if record {
            assert_eq!(by_path("$.email")["primary"], "\"alice@example.com\"");
            assert_eq!(by_path("$.total")["shadow"], "11");
            assert!(logged.contains("alice@example.com"), "{logged}");
        } else {
            let first: serde_json::Value = serde_json::from_str(logged.lines().next().unwrap()).unwrap();
            for (text, what) in [(d.to_string(), "admin"), (first["diffs"].to_string(), "diff log")] {
                for value in ["alice", "bob", "10", "11", "true", "false"] {
                    assert!(!text.contains(value), "{what} shows `{value}`: {text}");
                }
            }
            assert_eq!(by_path("$.email")["primary"], "<string, 17 chars>");
            assert_eq!(by_path("$.email")["shadow"], "<string, 15 chars>");
            assert_eq!(by_path("$.total")["primary"], "<number>");
            assert_eq!(by_path("$.vip")["shadow"], "<boolean>");
            // Present on one side only: that much is kept.
            assert_eq!(by_path("$.note")["primary"], serde_json::Value::Null);
            assert_eq!(by_path("$.note")["shadow"], "null");
        }
        f.shutdown().await;
    }
}

#[tokio::test]
async fn configured_redact_json_paths_show_the_marker_in_stored_diffs_even_with_record_values() {
    let legacy = json_upstream(r#"{"customer":{"email":"alice@example.com"},"total":10}"#).await;
    let modern = json_upstream(r#"{"customer":{"email":"bob@example.org"},"total":11}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diffs.jsonl");
    let shadow = format!("percent: 100, record_values: true, diff_log: '{}'", log.display());
    let yaml = format!(
        "redact: {{ json_paths: [customer.email] }}\n{}",
        config(&legacy.url(), &modern.url(), &shadow)
    );
    let f = Ficus::start(&yaml).await;
    assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "mismatch").await == 1.0
                && std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
        })
        .await
    );
    let diffs = get(&f.admin_url("/admin/diffs?route=orders")).await.json();
    let d = diffs["diffs"][0]["diffs"].as_array().unwrap().clone();
    let email = d.iter().find(|x| x["path"] == "$.customer.email").unwrap();
    assert_eq!(email["primary"], "[REDACTED]", "{diffs}");
    assert_eq!(email["shadow"], "[REDACTED]", "{diffs}");
    // Fields not listed keep their values (record_values: true).
    let total = d.iter().find(|x| x["path"] == "$.total").unwrap();
    assert_eq!(total["shadow"], "11");
    let logged = std::fs::read_to_string(&log).unwrap();
    for text in [diffs.to_string(), logged] {
        assert!(!text.contains("alice@example.com"), "{text}");
        assert!(!text.contains("bob@example.org"), "{text}");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn a_compared_set_cookie_shows_the_marker_not_the_cookie() {
    let side = |cookie: &'static str| {
        Upstream::start(move |_req: Request<Incoming>| async move {
            let mut r = Response::new(full("{}"));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut().insert("set-cookie", cookie.parse().unwrap());
            r
        })
    };
    let legacy = side("session=legacy-cookie-value").await;
    let modern = side("session=modern-cookie-value").await;
    let shadow = "percent: 100, record_values: true, compare_headers: [content-type, set-cookie]";
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), shadow)).await;
    assert_eq!(get(&f.url("/orders/7")).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            comparisons(&f, "mismatch").await == 1.0
        })
        .await
    );
    let diffs = get(&f.admin_url("/admin/diffs?route=orders")).await.json();
    let d = &diffs["diffs"][0]["diffs"][0];
    assert_eq!(d["path"], "header set-cookie", "{diffs}");
    assert_eq!(d["primary"], "[REDACTED]", "{diffs}");
    assert_eq!(d["shadow"], "[REDACTED]", "{diffs}");
    assert!(!diffs.to_string().contains("cookie-value"), "{diffs}");
    f.shutdown().await;
}
