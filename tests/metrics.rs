//! What `/metrics` shows a dashboard after real traffic: the OpenTelemetry HTTP histograms with
//! their standard buckets, labelled by migration side, the split's gauges, and label values that
//! come from the config only, never from what a client sends.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::collections::BTreeSet;

use http::{Method, Request};
use support::*;

fn migration_config(legacy: &str, modern: &str) -> String {
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .upstream("plain", legacy)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &["modern_percent: 50"],
        ))
        .route("  - name: other\n    match: { path_prefix: /other }\n    upstream: plain\n")
        .build()
}

/// Every label value of `label` on the samples of `metric`.
fn label_values(text: &str, metric: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semconv_histograms_have_side_labels_and_the_otel_buckets() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(&legacy.url(), &modern.url())).await;
    let c = client();
    for i in 0..60 {
        send(
            &c,
            Request::get(f.url(&format!("/orders/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
    }
    send(&c, Request::post(f.url("/other/x")).body(full("{}")).unwrap()).await;
    assert!(legacy.hits() > 0 && modern.hits() > 0, "both sides served");
    let m = get(&f.admin_url("/metrics")).await.text();

    for (side, hits) in [("legacy", legacy.hits() - 1), ("modern", modern.hits())] {
        let series = format!(
            "http_server_request_duration_seconds_count{{http_route=\"orders\",side=\"{side}\",\
             http_request_method=\"GET\",http_response_status_code=\"200\"}}"
        );
        assert_eq!(metric(&m, &series), Some(hits as f64), "{series}\n{m}");
        let bucket = format!(
            "http_server_request_duration_seconds_bucket{{http_route=\"orders\",side=\"{side}\",\
             http_request_method=\"GET\",http_response_status_code=\"200\",le=\"7.5\"}}"
        );
        assert_eq!(metric(&m, &bucket), Some(hits as f64), "{bucket}\n{m}");
        let client = format!(
            "http_client_request_duration_seconds_count{{server_address=\"{side}\",\
             http_request_method=\"GET\",http_response_status_code=\"200\"}}"
        );
        assert_eq!(metric(&m, &client), Some(hits as f64), "{client}\n{m}");
    }
    assert!(m.contains(
        "http_server_request_duration_seconds_count{http_route=\"other\",side=\"none\",\
         http_request_method=\"POST\",http_response_status_code=\"200\"} 1"
    ));
    let les = label_values(&m, "http_server_request_duration_seconds_bucket", "le");
    let want: BTreeSet<String> = [
        "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5", "7.5",
        "10", "+Inf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(les, want);
    assert_eq!(
        metric(&m, "ficus_migration_modern_percent{route=\"orders\"}"),
        Some(50.0)
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_paths_and_methods_do_not_create_label_values() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&migration_config(&legacy.url(), &modern.url())).await;
    let c = client();
    send(&c, Request::get(f.url("/orders/1")).body(empty()).unwrap()).await;
    send(&c, Request::get(f.url("/nowhere")).body(empty()).unwrap()).await;
    let before = get(&f.admin_url("/metrics")).await.text();
    let count = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .count()
    };
    for i in 0..20 {
        let method = Method::from_bytes(format!("X-EVIL-{i}").as_bytes()).unwrap();
        for path in [format!("/orders/unique-{i}"), format!("/nowhere/unique-{i}")] {
            send(
                &c,
                Request::builder()
                    .method(method.clone())
                    .uri(f.url(&path))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        }
    }
    let after = get(&f.admin_url("/metrics")).await.text();
    assert!(!after.contains("X-EVIL") && !after.contains("unique-"), "{after}");
    let methods = label_values(
        &after,
        "http_server_request_duration_seconds_count",
        "http_request_method",
    );
    assert_eq!(
        methods,
        ["GET", "_OTHER"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    let routes = label_values(&after, "http_server_request_duration_seconds_count", "http_route");
    assert_eq!(
        routes,
        ["orders"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    // Forty requests with new methods and paths add at most one `_OTHER` series per side and
    // one for the unmatched requests, whatever their number.
    assert!(count(&after) <= count(&before) + 3, "{after}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_shows_in_the_split_gauge_stage_and_events_with_errors_by_side() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::failing(http::StatusCode::INTERNAL_SERVER_ERROR, "down").await;
    let rollout = "rollout: { step: 20, every: 1h, min_requests: 20, max_error_rate: 0.05, \
                   rollback_to_zero: true }";
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &["modern_percent: 50", rollout],
        ))
        .build();
    let f = Ficus::start(&yaml).await;
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_migration_modern_percent{route=\"orders\"}"),
        Some(50.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ficus_rollout_stage{route=\"orders\"}"),
        Some(0.0),
        "{m}"
    );

    let c = client();
    for _ in 0..2000 {
        if modern.hits() >= 25 {
            break;
        }
        send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
    }
    let rolled_back = eventually(std::time::Duration::from_secs(5), || async {
        let m = get(&f.admin_url("/metrics")).await.text();
        metric(&m, "ficus_rollout_stage{route=\"orders\"}") == Some(2.0)
    })
    .await;
    let m = get(&f.admin_url("/metrics")).await.text();
    assert!(rolled_back, "{m}");
    assert_eq!(
        metric(&m, "ficus_migration_modern_percent{route=\"orders\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ficus_rollout_events_total{route=\"orders\",reason=\"rollback_error_rate\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ficus_rollout_events_total{route=\"orders\",reason=\"advanced\"}"
        ),
        Some(0.0),
        "{m}"
    );
    // The errors are the modern side's; legacy's answers stay 2xx.
    let errors = metric(
        &m,
        "http_server_request_duration_seconds_count{http_route=\"orders\",side=\"modern\",\
         http_request_method=\"GET\",http_response_status_code=\"500\"}",
    );
    assert!(errors.is_some_and(|n| n >= 20.0), "{m}");
    assert!(
        !m.lines()
            .any(|l| l.contains("side=\"legacy\"") && l.contains("http_response_status_code=\"5")),
        "{m}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_call_without_response_is_labelled_by_error_type_not_status() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let f = Ficus::start(&basic_config(&url)).await;
    let answer = get(&f.url("/x")).await;
    assert_eq!(answer.status, http::StatusCode::BAD_GATEWAY);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            "http_client_request_duration_seconds_count{server_address=\"app\",\
             http_request_method=\"GET\",error_type=\"connect\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds")
                && l.contains("http_response_status_code")),
        "{m}"
    );
    // ficus's own answer is what the server histogram shows.
    assert_eq!(
        metric(
            &m,
            "http_server_request_duration_seconds_count{http_route=\"all\",side=\"none\",\
             http_request_method=\"GET\",http_response_status_code=\"502\"}"
        ),
        Some(1.0),
        "{m}"
    );
    f.shutdown().await;
}
