//! Hot reload: through the admin API (with its token), on file change, refused when invalid,
//! in-flight requests finishing on their snapshot, and 20 reloads under load with zero failures.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use support::*;

/// A config whose single route goes to `upstream`, with the admin token read from `token_env`.
fn config(upstream: &str, token_env: &str, watch: bool) -> String {
    basic_config(upstream)
        .replace(
            "admin:\n  bind: 127.0.0.1:0",
            &format!("admin:\n  bind: 127.0.0.1:0\n  token_env: {token_env}"),
        )
        .replace(
            "reload: { watch: false }",
            &format!("reload: {{ watch: {watch}, debounce: 50ms }}"),
        )
}

fn post_reload(f: &Ficus, token: Option<&str>) -> Request<Body> {
    let mut b = Request::post(f.admin_url("/admin/reload"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(empty()).unwrap()
}

#[tokio::test]
async fn admin_reload_applies_a_valid_config() {
    std::env::set_var("FICUS_TEST_TOKEN_VALID", "t0k3n");
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_TOKEN_VALID", false)).await;
    assert_eq!(get(&f.url("/")).await.echoed().name, "a");
    let before = get(&f.admin_url("/admin/config")).await.json();
    assert_eq!(before["version"], 1);

    f.write_config(&config(&b.url(), "FICUS_TEST_TOKEN_VALID", false));
    let ans = send(&client(), post_reload(&f, Some("t0k3n"))).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    assert_eq!(get(&f.url("/")).await.echoed().name, "b");

    let after = get(&f.admin_url("/admin/config")).await.json();
    assert_eq!(after["version"], 2);
    assert_ne!(after["hash"], before["hash"]);
    assert!(after["last_error"].is_null());
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_config_reloads_total{result=\"success\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "ficus_config_last_reload_success"), Some(1.0), "{m}");
    f.shutdown().await;
}

#[tokio::test]
async fn invalid_config_is_refused_and_the_old_one_keeps_serving() {
    std::env::set_var("FICUS_TEST_TOKEN_INVALID", "t0k3n");
    let a = Upstream::echo_named("a").await;
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_TOKEN_INVALID", false)).await;
    let good = config(&a.url(), "FICUS_TEST_TOKEN_INVALID", false);
    // Line 15 becomes a route to an upstream that does not exist.
    let bad = good.replace("    upstream: app", "    upstream: missing");
    let line = bad.lines().position(|l| l.contains("upstream: missing")).unwrap() + 1;
    f.write_config(&bad);

    let ans = send(&client(), post_reload(&f, Some("t0k3n"))).await;
    ans.assert_problem(422, "config-invalid");
    let expected = format!(
        "{}:{line}: routes[0].upstream: no upstream named `missing`",
        f.config_path.display()
    );
    let problems = ans.json()["problems"].clone();
    assert!(
        problems
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with(&expected)),
        "{problems}"
    );

    assert_eq!(
        get(&f.url("/")).await.echoed().name,
        "a",
        "the old config must keep serving"
    );
    let status = get(&f.admin_url("/admin/config")).await.json();
    assert_eq!(status["version"], 1);
    assert_eq!(status["reloads_failed"], 1);
    assert!(
        status["last_error"]["text"][0]
            .as_str()
            .unwrap()
            .starts_with(&expected),
        "{status}"
    );
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(&m, "ficus_config_reloads_total{result=\"failure\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "ficus_config_last_reload_success"), Some(0.0), "{m}");

    // A syntax error is refused the same way.
    f.write_config("listeners: [\n");
    send(&client(), post_reload(&f, Some("t0k3n")))
        .await
        .assert_problem(422, "config-invalid");
    assert_eq!(get(&f.url("/")).await.status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn admin_reload_needs_the_bearer_token() {
    std::env::set_var("FICUS_TEST_TOKEN_AUTH", "right");
    let a = Upstream::echo().await;
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_TOKEN_AUTH", false)).await;
    let c = client();
    let no = send(&c, post_reload(&f, None)).await;
    no.assert_problem(401, "unauthorized");
    assert!(no.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    send(&c, post_reload(&f, Some("wrong")))
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(send(&c, post_reload(&f, Some("right"))).await.status, 200);
    // Reading needs no token; changing state is POST only.
    let get_reload = send(
        &c,
        Request::get(f.admin_url("/admin/reload")).body(empty()).unwrap(),
    )
    .await;
    get_reload.assert_problem(405, "method-not-allowed");
    f.shutdown().await;

    // With no token configured, state-changing calls are disabled outright.
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_TOKEN_UNSET_NOWHERE", false)).await;
    send(&c, post_reload(&f, Some("anything")))
        .await
        .assert_problem(403, "admin-token-not-configured");
    f.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness_endpoints_answer() {
    let a = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&a.url())).await;
    assert_eq!(get(&f.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&f.admin_url("/readyz")).await.json()["status"], "ready");
    get(&f.admin_url("/nope")).await.assert_problem(404, "not-found");
    f.shutdown().await;
}

/// DNS rebinding: a page on evil.example re-points its name at 127.0.0.1, and the browser then
/// reads the admin API as same-origin, but still sends `Host: evil.example`.
#[tokio::test]
async fn admin_answers_only_ip_literals_localhost_and_allowed_host_names() {
    let a = Upstream::echo().await;
    let yaml = basic_config(&a.url()).replace(
        "admin:\n  bind: 127.0.0.1:0",
        "admin:\n  bind: 127.0.0.1:0\n  allowed_hosts: [ficus-admin.internal]",
    );
    let f = Ficus::start(&yaml).await;
    let port = f.admin.port();
    let c = client();
    let with_host = |path: &str, host: &str| {
        Request::get(f.admin_url(path))
            .header("host", host)
            .body(empty())
            .unwrap()
    };
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
        "ficus-admin.internal.evil.example".to_string(),
        "2130706433".to_string(),
    ] {
        for path in ["/admin/config", "/metrics", "/admin/ui"] {
            let r = send(&c, with_host(path, &host)).await;
            r.assert_problem(421, "misdirected-request");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
        format!("Ficus-Admin.internal:{port}"),
    ] {
        let r = send(&c, with_host("/admin/config", &host)).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // Two Host headers: whichever one something reads, refuse.
    let raw_answer = raw(
        f.admin,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw_answer), 421, "{raw_answer}");
    f.shutdown().await;
}

#[tokio::test]
async fn changed_config_file_is_reloaded_by_the_watcher() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let f = Ficus::start(&config(&a.url(), "UNUSED_TOKEN", true)).await;
    assert_eq!(get(&f.url("/")).await.echoed().name, "a");
    f.write_config(&config(&b.url(), "UNUSED_TOKEN", true));
    let switched = eventually(Duration::from_secs(10), || async {
        get(&f.url("/")).await.echoed().name == "b"
    })
    .await;
    assert!(switched, "the watcher did not pick up the new file");

    // A broken file is refused; the running config stays.
    f.write_config("routes: 17\n");
    let refused = eventually(Duration::from_secs(10), || async {
        get(&f.admin_url("/admin/config")).await.json()["reloads_failed"] == 1
    })
    .await;
    assert!(refused);
    assert_eq!(get(&f.url("/")).await.echoed().name, "b");
    f.shutdown().await;
}

#[tokio::test]
async fn listener_changes_are_refused_on_reload() {
    let a = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&a.url())).await;
    f.write_config(&basic_config(&a.url()).replace("name: main", "name: renamed"));
    let err = f.gw().reload("test").await.unwrap_err().to_string();
    assert!(
        err.contains("listeners: adding, removing, renaming or re-binding listeners needs a restart"),
        "{err}"
    );
    assert_eq!(get(&f.url("/")).await.status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn in_flight_request_finishes_on_the_snapshot_it_started_with() {
    let slow = Upstream::start(|req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        echo_response(req, "old").await
    })
    .await;
    let new = Upstream::echo_named("new").await;
    let f = Ficus::start(&basic_config(&slow.url())).await;
    let url = f.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // The request is at the old upstream, so it was routed on the old snapshot.
    assert!(eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await);
    f.write_config(&basic_config(&new.url()));
    f.gw().reload("test").await.unwrap();
    assert_eq!(get(&f.url("/")).await.echoed().name, "new");
    let old = in_flight.await.unwrap();
    assert_eq!(old.status, 200);
    assert_eq!(old.echoed().name, "old");
    f.shutdown().await;
}

/// The acceptance test for hot reload: clients hammer ficus on keep-alive connections while it
/// goes through 20 reloads, valid and invalid mixed, and not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let f = Ficus::start(&basic_config(&a.url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = f.url(&format!("/load/{i}"));
        let c = if i % 2 == 0 { client() } else { h2c_client() };
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::post(&url).body(full("payload")).unwrap();
                match c.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => {
                        eprintln!("status {}", resp.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("error {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let (mut applied, mut refused) = (0, 0);
    // Before each reload, and before stopping, the clients get through more requests, so every
    // config in turn serves load (and the reloads are not all bunched before the first request).
    let load_moves_on = |ok: Arc<AtomicUsize>| async move {
        let before = ok.load(Ordering::Relaxed);
        let moved = eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) >= before + 20
        })
        .await;
        assert!(moved, "the load stalled at {before} requests");
    };
    for i in 0..20 {
        load_moves_on(ok.clone()).await;
        let yaml = match i % 4 {
            0 => basic_config(&b.url()),
            1 => "listeners: [ {{ broken\n".to_string(),
            2 => basic_config(&a.url()),
            _ => basic_config(&a.url()).replace("upstream: app", "upstream: nowhere"),
        };
        f.write_config(&yaml);
        match f.gw().reload("load test").await {
            Ok(_) => applied += 1,
            Err(_) => refused += 1,
        }
    }
    load_moves_on(ok.clone()).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!((applied, refused), (10, 10));
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both configs served: a={} b={}",
        a.hits(),
        b.hits()
    );
    let status = get(&f.admin_url("/admin/config")).await.json();
    assert_eq!(status["version"], 11);
    f.shutdown().await;
}

#[tokio::test]
async fn status_page_is_served_self_contained() {
    let a = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&a.url())).await;
    let page = get(&f.admin_url("/admin/ui")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    assert!(
        html.contains("/admin/migration")
            && html.contains("/admin/upstreams")
            && html.contains("/admin/diffs")
    );
    // The SVG namespace is a name for createElementNS, never fetched; any other URL would be.
    let html = html.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN, nothing external"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn an_admin_allowed_host_with_a_port_is_a_config_error() {
    let yaml = basic_config("http://127.0.0.1:9").replace(
        "admin:\n  bind: 127.0.0.1:0",
        "admin:\n  bind: 127.0.0.1:0\n  allowed_hosts: [ok.internal, 'admin.internal:9901']",
    );
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("admin.allowed_hosts[1]: `admin.internal:9901` is not a host name"),
        "{err}"
    );
    assert!(!err.contains("allowed_hosts[0]"), "{err}");
}

/// A refused reload must change nothing that runs, including the state the next good reload
/// inherits: before reloads were staged, the refused config's new breaker replaced the live
/// one in the state kept across reloads, and the next good reload closed an open breaker.
#[tokio::test]
async fn a_refused_reload_leaves_a_live_breaker_open() {
    let up = Upstream::failing(http::StatusCode::SERVICE_UNAVAILABLE, "down").await;
    let breaker = "circuit_breaker: { window: 10s, min_requests: 5, failure_rate: 0.5, open_for: 30s }";
    let yaml = basic_config(&up.url()).replace(
        &format!("    endpoints: [\"{}\"]", up.url()),
        &format!("    endpoints: [\"{}\"]\n    {breaker}", up.url()),
    );
    assert!(yaml.contains("circuit_breaker"), "{yaml}");
    let f = Ficus::start(&yaml).await;
    for _ in 0..5 {
        get(&f.url("/")).await;
    }
    get(&f.url("/")).await.assert_problem(503, "circuit-open");

    let broken = format!(
        "{}  - {{ name: bad, match: {{ path: /bad }}, upstream: nowhere }}\n",
        yaml.replace("min_requests: 5", "min_requests: 6")
    );
    f.write_config(&broken);
    assert!(f.gw().reload("broken").await.is_err());
    get(&f.url("/")).await.assert_problem(503, "circuit-open");

    let more = format!("{yaml}  - {{ name: extra, match: {{ path: /extra }}, upstream: app }}\n");
    f.write_config(&more);
    f.gw().reload("good").await.unwrap();
    let hits = up.hits();
    get(&f.url("/")).await.assert_problem(503, "circuit-open");
    assert_eq!(up.hits(), hits, "the open breaker let a request through");

    // What is watched is observed: a changed breaker is a new one, closed, and calls the upstream.
    f.write_config(&more.replace("min_requests: 5", "min_requests: 6"));
    f.gw().reload("new breaker").await.unwrap();
    assert_eq!(get(&f.url("/")).await.status, 503);
    assert_eq!(up.hits(), hits + 1);
    f.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as a folder: `ficus.yaml -> ..data/ficus.yaml`, `..data -> ..<ts>`.
/// An update writes a new `..<ts>` folder and renames a new `..data` link over the old one, so the
/// path ficus was given never changes. (Mount the folder, not a `subPath`: a `subPath` mount never
/// updates.)
#[tokio::test]
async fn a_kubernetes_configmap_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, upstream: &Upstream| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(
            folder.join("ficus.yaml"),
            config(&upstream.url(), "UNUSED_TOKEN", true),
        )
        .unwrap();
    };
    version("..2026_11_30_10_00_00.1", &a);
    symlink("..2026_11_30_10_00_00.1", dir.path().join("..data")).unwrap();
    symlink("..data/ficus.yaml", dir.path().join("ficus.yaml")).unwrap();
    let gw = ficus::gateway::Gateway::start(ficus::config::ConfigSource::File(dir.path().join("ficus.yaml")))
        .await
        .unwrap();
    let url = format!("http://{}/", gw.addr("main").unwrap());
    assert_eq!(get(&url).await.echoed().name, "a");

    // The kubelet's swap: a new folder, a new link beside the old one, renamed over it.
    version("..2026_11_30_10_05_00.2", &b);
    symlink("..2026_11_30_10_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_11_30_10_00_00.1")).unwrap();
    let switched = eventually(Duration::from_secs(10), || async {
        get(&url).await.echoed().name == "b"
    })
    .await;
    assert!(switched, "the ..data swap was not picked up");
    gw.shutdown().await;
}
