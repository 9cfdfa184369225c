//! Route matchers: templates, regexes, headers, query parameters and cookies; the compiled table
//! at `/admin/routes`; and `ficus check` warning about routes an earlier one makes unreachable.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use http::Request;
use support::*;

fn config(routes: &str, a: &Upstream, b: &Upstream) -> String {
    yaml::Config::new()
        .upstream("a", &a.url())
        .upstream("b", &b.url())
        .route(routes)
        .build()
}

async fn who(c: &H1Client, req: Request<Body>) -> String {
    let a = send(c, req).await;
    if a.status == 404 {
        return "none".into();
    }
    a.echoed().name
}

fn get_req(url: String) -> http::request::Builder {
    Request::get(url)
}

#[tokio::test]
async fn templates_and_regexes_match_whole_paths() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let routes = "  - { name: order, match: { path_template: '/orders/{id}' }, upstream: a }
  - { name: files, match: { path_template: '/files/{*rest}' }, upstream: a }
  - { name: health, match: { path_regex: '/v[0-9]+/health' }, upstream: b }
";
    let f = Ficus::start(&config(routes, &a, &b)).await;
    let c = client();
    let go = |p: &str| get_req(f.url(p)).body(empty()).unwrap();
    assert_eq!(who(&c, go("/orders/7")).await, "a");
    assert_eq!(who(&c, go("/orders/7/items")).await, "none");
    assert_eq!(who(&c, go("/files/a/b/c.txt")).await, "a");
    assert_eq!(who(&c, go("/v2/health")).await, "b");
    assert_eq!(
        who(&c, go("/v2/health/deep")).await,
        "none",
        "regexes are anchored"
    );
    assert_eq!(who(&c, go("/x/v2/health")).await, "none");
    f.shutdown().await;
}

#[tokio::test]
async fn header_query_and_cookie_conditions_select_routes_in_order() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let routes = "  - name: tenant-acme
    match: { path_prefix: /api, headers: [ { name: X-Tenant, equals: acme } ] }
    upstream: b
  - name: canary-cookie
    match: { path_prefix: /api, cookies: [ { name: canary, equals: 'yes' } ] }
    upstream: b
  - name: debug-query
    match: { path_prefix: /api, query: [ { name: debug, present: true } ] }
    upstream: b
  - name: curl
    match: { path_prefix: /api, headers: [ { name: user-agent, regex: '^curl/' } ] }
    upstream: b
  - name: rest
    match: { path_prefix: /api, headers: [ { name: x-blocked, present: false } ] }
    upstream: a
";
    let f = Ficus::start(&config(routes, &a, &b)).await;
    let c = client();
    let api = || get_req(f.url("/api/x"));
    assert_eq!(
        who(&c, api().header("x-tenant", "acme").body(empty()).unwrap()).await,
        "b"
    );
    assert_eq!(
        who(&c, api().header("x-tenant", "other").body(empty()).unwrap()).await,
        "a"
    );
    assert_eq!(
        who(
            &c,
            api().header("cookie", "a=1; canary=yes").body(empty()).unwrap()
        )
        .await,
        "b"
    );
    assert_eq!(
        who(&c, api().header("cookie", "canary=no").body(empty()).unwrap()).await,
        "a"
    );
    assert_eq!(
        who(&c, get_req(f.url("/api/x?debug")).body(empty()).unwrap()).await,
        "b"
    );
    assert_eq!(
        who(&c, get_req(f.url("/api/x?verbose=1")).body(empty()).unwrap()).await,
        "a"
    );
    assert_eq!(
        who(&c, api().header("user-agent", "curl/8.0").body(empty()).unwrap()).await,
        "b"
    );
    assert_eq!(
        who(&c, api().header("x-blocked", "1").body(empty()).unwrap()).await,
        "none"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn admin_routes_shows_the_compiled_table_in_order() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let routes = "  - { name: first, match: { hosts: ['*.example.com'], path_template: '/o/{id}', methods: [GET] }, upstream: a }
  - { name: second, match: { headers: [ { name: x-v, equals: '2' } ] }, upstream: b }
";
    let f = Ficus::start(&config(routes, &a, &b)).await;
    let t = get(&f.admin_url("/admin/routes")).await.json();
    assert_eq!(t["routes"][0]["name"], "first");
    assert_eq!(t["routes"][0]["order"], 0);
    assert_eq!(t["routes"][0]["path"], "template /o/{id}");
    assert_eq!(t["routes"][0]["hosts"][0], "*.example.com");
    assert_eq!(t["routes"][0]["methods"][0], "GET");
    assert_eq!(t["routes"][1]["headers"][0], "x-v = 2");
    assert_eq!(t["routes"][1]["upstream"], "b");
    f.shutdown().await;
}

#[tokio::test]
async fn check_warns_about_routes_made_unreachable_by_earlier_ones() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let routes = "  - { name: api, match: { path_prefix: /api }, upstream: a }
  - { name: api-orders, match: { path_prefix: /api/orders, methods: [POST] }, upstream: b }
  - { name: tenant, match: { path_prefix: /t, headers: [ { name: x-t, present: true } ] }, upstream: a }
  - { name: t-sub, match: { path: /t/x }, upstream: b }
";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ficus.yaml");
    std::fs::write(&path, config(routes, &a, &b)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "warnings do not fail the check");
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "{}:10: routes[1]: warning: unreachable: every request it matches is taken by the earlier route `api` (routes[0])",
        path.display()
    );
    assert!(
        text.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{text}"
    );
    // A route behind a conditional one is still reachable.
    assert!(!text.contains("routes[3]"), "{text}");
}

#[tokio::test]
async fn invalid_matchers_are_config_errors() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let routes = "  - { name: r1, match: { path_regex: '(' }, upstream: a }
  - { name: r2, match: { path: /a, path_template: '/b/{x}' }, upstream: a }
  - { name: r3, match: { headers: [ { name: x, equals: '1', regex: '1' } ] }, upstream: a }
";
    let err = Ficus::try_start(&config(routes, &a, &b))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("routes[0].match.path_regex:"), "{err}");
    assert!(
        err.contains("routes[1].match: set one of `path`, `path_prefix`, `path_template`, `path_regex`"),
        "{err}"
    );
    assert!(
        err.contains("routes[2].match.headers[0]: set exactly one of `present`, `equals`, `regex`"),
        "{err}"
    );
}
