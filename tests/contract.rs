//! The contract report: the JSON shape each side answers with, learned from shadow comparisons and
//! from sampled served traffic, the breaking differences between legacy and modern in
//! `GET /admin/contract`, and `ficus contract` exit codes for CI.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ficus");

/// Answers each request with `body(n)` (n counts requests), as JSON.
async fn json_upstream(body: fn(usize) -> Value) -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_req: Request<Incoming>| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut r = Response::new(full(body(i).to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
    .await
}

fn legacy_order(i: usize) -> Value {
    json!({"id": i, "total": 10, "currency": "EUR", "state": (["open", "paid"][i % 2])})
}

/// Drops `currency`, sends `total` as a string, and says `refunded`, which legacy never does.
fn breaking_order(i: usize) -> Value {
    json!({"id": i, "total": "10.00", "state": (["open", "paid", "refunded"][i % 3])})
}

/// Agrees with legacy, and adds a field (which breaks no client).
fn compatible_order(i: usize) -> Value {
    json!({"id": i, "total": 12, "currency": "EUR", "state": (["paid", "open"][i % 2]), "links": {"self": "/x"}})
}

/// Every request shadowed: both answers to each feed the contract.
fn shadowed(legacy: &str, modern: &str) -> String {
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &["modern_percent: 0", "shadow: { percent: 100 }"],
        ))
        .build()
}

/// A split without shadow: each side serves half, and every served answer is sampled.
fn sampled_split(legacy: &str, modern: &str) -> String {
    let mut route = yaml::migration_route("orders", "/orders", &["modern_percent: 50"]);
    route.push_str("    contract: { sample_percent: 100, max_body_bytes: 64KiB }\n");
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&route)
        .route("  - name: plain\n    match: { path_prefix: /plain }\n    upstream: legacy\n")
        .build()
}

async fn report(f: &Ficus, route: &str) -> Answer {
    get(&f.admin_url(&format!("/admin/contract?route={route}"))).await
}

/// Waits until both sides have learned from at least `n` 2xx JSON bodies.
async fn learned(f: &Ficus, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = report(f, "orders").await.json();
        let enough = ["legacy", "modern"]
            .iter()
            .all(|s| r[s]["samples"]["json_2xx"].as_u64().unwrap_or(0) >= n);
        if enough {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both sides learned {n} bodies: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn find<'a>(r: &'a Value, kind: &str, path: &str) -> &'a Value {
    r["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == kind && d["path"] == path)
        .unwrap_or_else(|| panic!("no {kind} at {path} in {:#}", r["differences"]))
}

fn assert_validates(schema: &Value, doc: &Value) {
    assert!(jsonschema::draft202012::meta::is_valid(schema), "{schema:#}");
    let v = jsonschema::draft202012::new(schema).unwrap();
    let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{doc} against {schema:#}: {errors:?}");
}

#[tokio::test]
async fn shadowed_modern_that_drops_a_field_changes_a_type_and_adds_an_enum_value_is_reported_breaking() {
    let legacy = json_upstream(legacy_order).await;
    let modern = json_upstream(breaking_order).await;
    let f = Ficus::start(&shadowed(&legacy.url(), &modern.url())).await;
    for _ in 0..30 {
        assert_eq!(get(&f.url("/orders/1")).await.status, 200);
    }
    let r = learned(&f, 30).await;
    assert_eq!(r["route"], "orders");
    assert_eq!(r["legacy"]["statuses"], json!([200]));
    assert_eq!(r["modern"]["statuses"], json!([200]));
    let l = &r["legacy"]["response_schema"];
    assert_eq!(l["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(l["required"], json!(["currency", "id", "state", "total"]));
    assert_eq!(l["properties"]["state"]["enum"], json!(["open", "paid"]));
    assert_eq!(l["properties"]["total"]["type"], "integer");
    assert_validates(l, &legacy_order(3));
    assert_validates(&r["modern"]["response_schema"], &breaking_order(5));

    let missing = find(&r, "missing_on_modern", "currency");
    assert_eq!(missing["breaking"], true);
    let typed = find(&r, "type_changed", "total");
    assert_eq!(
        (&typed["legacy"], &typed["modern"]),
        (&json!(["integer"]), &json!(["string"]))
    );
    assert_eq!(typed["breaking"], true);
    let value = find(&r, "new_enum_value", "state");
    assert_eq!(value["modern"], json!(["refunded"]));
    assert_eq!(value["breaking"], true);
    assert_eq!(r["breaking"], 3, "{:#}", r["differences"]);
    f.shutdown().await;
}

#[tokio::test]
async fn sampled_served_answers_of_agreeing_sides_show_no_breaking_difference() {
    let legacy = json_upstream(legacy_order).await;
    let modern = json_upstream(compatible_order).await;
    let f = Ficus::start(&sampled_split(&legacy.url(), &modern.url())).await;
    let c = client();
    for i in 0..80 {
        let req = Request::post(f.url("/orders"))
            .header("content-type", "application/json")
            .body(full(json!({"sku": format!("s{i}"), "qty": i}).to_string()))
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(a.status, 200);
    }
    let r = learned(&f, 10).await;
    assert_eq!(r["breaking"], 0, "{:#}", r["differences"]);
    let added = find(&r, "new_field_on_modern", "links");
    assert_eq!(added["breaking"], false);
    // Served answers are learned as the client got them, request bodies too.
    let req = &r["legacy"]["request_schema"];
    assert_eq!(req["required"], json!(["qty", "sku"]));
    assert_validates(req, &json!({"sku": "x", "qty": 1}));
    assert_validates(&r["modern"]["response_schema"], &compatible_order(1));
    assert_eq!(
        legacy.hits() + modern.hits(),
        80,
        "sampling sends nothing extra upstream"
    );

    // A route with neither shadow nor sampling learns nothing; an unknown route is not found.
    report(&f, "plain").await.assert_problem(404, "no-contract");
    report(&f, "nope").await.assert_problem(404, "not-found");
    let all = get(&f.admin_url("/admin/contract")).await.json();
    assert_eq!(all["routes"].as_array().unwrap().len(), 1);
    f.shutdown().await;
}

/// `ficus contract` against a running gateway's admin API: (exit code, stdout, stderr).
async fn contract_cli(args: Vec<String>) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("contract")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(admin: &str, route: &str, more: &[&str]) -> Vec<String> {
    let mut a = vec!["--admin".into(), admin.into(), "--route".into(), route.into()];
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

#[tokio::test]
async fn the_contract_subcommand_exits_0_when_compatible_1_when_breaking_and_2_when_unreachable() {
    // One legacy per gateway: each must see the whole cycle of legacy's states.
    let (legacy_a, legacy_b) = (
        json_upstream(legacy_order).await,
        json_upstream(legacy_order).await,
    );
    let breaking = json_upstream(breaking_order).await;
    let compatible = json_upstream(compatible_order).await;
    let bad = Ficus::start(&shadowed(&legacy_a.url(), &breaking.url())).await;
    let good = Ficus::start(&shadowed(&legacy_b.url(), &compatible.url())).await;
    for _ in 0..25 {
        get(&bad.url("/orders/1")).await;
        get(&good.url("/orders/1")).await;
    }
    learned(&bad, 25).await;
    learned(&good, 25).await;

    let (code, out, _) = contract_cli(args(&good.admin_url(""), "orders", &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 breaking"), "{out}");

    let (code, out, _) = contract_cli(args(&bad.admin_url(""), "orders", &[])).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BREAKING missing_on_modern"), "{out}");
    assert!(out.contains("currency"), "{out}");

    let (code, out, _) = contract_cli(args(&bad.admin_url(""), "orders", &["--json"])).await;
    assert_eq!(code, 1);
    let raw: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw["breaking"], 3);

    let (code, _, err) = contract_cli(args(&bad.admin_url(""), "nope", &[])).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("404") && err.contains("no route with that name"),
        "{err}"
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (code, _, err) = contract_cli(args(&format!("http://127.0.0.1:{port}"), "orders", &[])).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    bad.shutdown().await;
    good.shutdown().await;
}

#[tokio::test]
async fn a_shadowed_answer_that_is_also_sampled_is_learned_once() {
    let legacy = json_upstream(legacy_order).await;
    let modern = json_upstream(legacy_order).await;
    let mut route = yaml::migration_route(
        "orders",
        "/orders",
        &["modern_percent: 0", "shadow: { percent: 100 }"],
    );
    route.push_str("    contract: { sample_percent: 100 }\n");
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&route)
        .build();
    let f = Ficus::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(get(&f.url("/orders/1")).await.status, 200);
    }
    let r = learned(&f, 10).await;
    // Give a second copy time to arrive, were there one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r2 = report(&f, "orders").await.json();
    assert_eq!(r2["legacy"]["samples"]["responses"], 10, "{:#}", r2["legacy"]);
    assert_eq!(r["breaking"], 0);
    f.shutdown().await;
}

#[tokio::test]
async fn contract_config_errors_are_located() {
    let mut route = yaml::migration_route("orders", "/orders", &["modern_percent: 0"]);
    route.push_str("    contract: { sample_percent: 150, max_body_bytes: 0 }\n");
    let yaml = yaml::Config::new()
        .upstream("legacy", "http://127.0.0.1:9")
        .upstream("modern", "http://127.0.0.1:9")
        .route(&route)
        .build();
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("routes[0].contract.sample_percent: must be between 0 and 100"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].contract.max_body_bytes: must be greater than zero"),
        "{err}"
    );
}

#[tokio::test]
async fn what_was_learned_survives_a_reload_while_the_sides_stay_the_same() {
    let legacy = json_upstream(legacy_order).await;
    let modern = json_upstream(breaking_order).await;
    let other = json_upstream(legacy_order).await;
    let yaml = shadowed(&legacy.url(), &modern.url());
    let f = Ficus::start(&yaml).await;
    for _ in 0..5 {
        get(&f.url("/orders/1")).await;
    }
    learned(&f, 5).await;
    // A shadow edit keeps the sides: what was learned stays.
    f.write_config(&yaml.replace("percent: 100", "percent: 99"));
    f.gw().reload("shadow edit").await.unwrap();
    let r = report(&f, "orders").await.json();
    assert_eq!(r["legacy"]["samples"]["json_2xx"], 5, "{r:#}");
    // Another modern side is another contract: learning starts afresh.
    let moved = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .upstream("next", &other.url())
        .route(
            &yaml::migration_route(
                "orders",
                "/orders",
                &["modern_percent: 0", "shadow: { percent: 100 }"],
            )
            .replace("upstream: modern", "upstream: next"),
        )
        .build();
    f.write_config(&moved);
    f.gw().reload("new modern").await.unwrap();
    let r = report(&f, "orders").await.json();
    assert_eq!(r["legacy"]["samples"]["responses"], 0, "{r:#}");
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_answers_are_learned_after_translation_as_clients_get_them() {
    let legacy = json_upstream(|i| json!({"ORDER_NO": i, "total": 10})).await;
    let modern = json_upstream(|i| json!({"id": i, "total": 10})).await;
    let route = "  - name: orders\n    match: { path_prefix: /orders }\n    migration:\n      \
                 legacy: { upstream: legacy, transform: renamed }\n      modern: { upstream: modern }\n      \
                 modern_percent: 50\n    contract: { sample_percent: 100 }\n";
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(route)
        .section(
            "transforms:\n  renamed:\n    response:\n      ops: [{ rename: { path: ORDER_NO, to: id } }]\n",
        )
        .build();
    let f = Ficus::start(&yaml).await;
    for _ in 0..60 {
        let a = get(&f.url("/orders/1")).await;
        assert!(a.json().get("id").is_some(), "{}", a.text());
    }
    let r = learned(&f, 5).await;
    assert_eq!(
        r["legacy"]["response_schema"]["required"],
        json!(["id", "total"]),
        "{:#}",
        r["legacy"]
    );
    assert_eq!(r["differences"], json!([]));
    f.shutdown().await;
}
