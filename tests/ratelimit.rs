//! Rate limits end to end: accuracy under 3x the limit (one instance with the in-process store,
//! two instances sharing a real Redis), Redis killed and restarted mid-test, key isolation,
//! exemptions, the response headers, and one Redis round trip per decision.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

/// `basic_config` with `rate_limits` appended and the catch-all route limited by `policies`.
fn limited(upstream: &str, policies: &str, section: &str) -> String {
    basic_config(upstream).replace(
        "    upstream: app\n",
        &format!("    upstream: app\n    rate_limit: [{policies}]\n"),
    ) + "rate_limits:\n"
        + section
}

fn get_req(url: String) -> Request<Body> {
    Request::get(url).body(empty()).unwrap()
}

/// Decisions the policy's store made itself (`allowed` + `limited`; fallbacks are counted apart).
async fn store_decisions(f: &Ficus, policy: &str) -> f64 {
    let m = get(&f.admin_url("/metrics")).await.text();
    ["allowed", "limited"]
        .iter()
        .map(|r| {
            let series = format!(r#"ficus_ratelimit_decisions_total{{policy="{policy}",result="{r}"}}"#);
            metric(&m, &series).unwrap_or(0.0)
        })
        .sum()
}

/// Sends probes to `path` until the store (Redis, connected in the background) has decided more
/// than `before` requests itself.
async fn store_decides(f: &Ficus, path: &str, policy: &str, before: f64, within: Duration) -> bool {
    eventually(within, || async {
        let _ = send(&client(), get_req(f.url(path))).await;
        store_decisions(f, policy).await > before
    })
    .await
}

/// Offers `per_second` requests a second for `secs`, spread over `urls` in turn, and returns
/// (admitted, refused, other statuses, the span from the first send to the last answer).
async fn offer(urls: &[String], per_second: u64, secs: u64) -> (usize, usize, Vec<u16>, Duration) {
    let c = client();
    let total = per_second * secs;
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let others = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total as usize {
        tick.tick().await;
        let (c, ok, limited, others) = (c.clone(), ok.clone(), limited.clone(), others.clone());
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let a = send(&c, get_req(url)).await;
            match a.status.as_u16() {
                200 => ok.fetch_add(1, Ordering::Relaxed),
                429 => limited.fetch_add(1, Ordering::Relaxed),
                s => {
                    others.lock().push(s);
                    0
                }
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let span = started.elapsed();
    let others = others.lock().clone();
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        others,
        span,
    )
}

/// At most `rate * span + burst`, and no more than 1% below it: the limit neither leaks nor
/// starves.
fn assert_accurate(admitted: usize, rate: f64, burst: f64, span: Duration) {
    let bound = rate * span.as_secs_f64() + burst;
    assert!(
        admitted as f64 <= bound,
        "admitted {admitted} > bound {bound:.1} over {span:?}"
    );
    assert!(
        admitted as f64 >= bound * 0.99 - 2.0,
        "admitted {admitted} is more than 1% below the bound {bound:.1} over {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_gcra_admits_rate_times_time_plus_burst_under_three_times_the_limit() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "per-ip",
        "  policies:\n    per-ip: { key: client_ip, rate: 100/s, burst: 20 }\n",
    ))
    .await;
    let (ok, refused, others, span) = offer(&[f.url("/x")], 300, 4).await;
    assert!(others.is_empty(), "unexpected statuses {others:?}");
    assert_eq!(ok + refused, 1200);
    assert_accurate(ok, 100.0, 20.0, span);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"ficus_ratelimit_decisions_total{policy="per-ip",result="allowed"}"#
        ),
        Some(ok as f64)
    );
    assert_eq!(
        metric(
            &m,
            r#"ficus_ratelimit_decisions_total{policy="per-ip",result="limited"}"#
        ),
        Some(refused as f64)
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_hold_the_total_to_the_limit() {
    let redis = Redis::start().await;
    let up = Upstream::echo().await;
    let yaml = limited(
        &up.url(),
        "per-ip",
        &format!(
            "  store: {{ redis_urls: ['{}'], timeout: 500ms }}\n  policies:\n    per-ip: {{ key: client_ip, rate: 100/s, burst: 20 }}\n",
            redis.url
        ),
    );
    let a = Ficus::start(&yaml).await;
    let b = Ficus::start(&yaml).await;
    // Both connect in the background; wait until each decides through Redis.
    for f in [&a, &b] {
        assert!(
            store_decides(f, "/warm", "per-ip", 0.0, Duration::from_secs(10)).await,
            "ficus never reached Redis"
        );
    }
    // A fresh bucket for the measurement.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let (ok, refused, others, span) = offer(&[a.url("/x"), b.url("/x")], 300, 4).await;
    assert!(others.is_empty(), "unexpected statuses {others:?}");
    assert_eq!(ok + refused, 1200);
    assert_accurate(ok, 100.0, 20.0, span);
    for f in [&a, &b] {
        let m = get(&f.admin_url("/metrics")).await.text();
        assert_eq!(
            metric(
                &m,
                r#"ficus_ratelimit_store_errors_total{policy="per-ip",reason="timeout"}"#
            ),
            Some(0.0)
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_applies_the_fallback_without_500s_and_limiting_recovers() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace(
        "routes:\n",
        "routes:\n  - name: local\n    match: { path_prefix: /local }\n    upstream: app\n    rate_limit: [fb-local]\n  - name: allow\n    match: { path_prefix: /allow }\n    upstream: app\n    rate_limit: [fb-allow]\n  - name: deny\n    match: { path_prefix: /deny }\n    upstream: app\n    rate_limit: [fb-deny]\n",
    ) + &format!(
        "rate_limits:\n  store: {{ redis_urls: ['{}'], timeout: 100ms, on_error: local }}\n  policies:\n    fb-local: {{ rate: 5/10s }}\n    fb-allow: {{ rate: 5/10s }}\n    fb-deny: {{ rate: 5/10s }}\n",
        redis.url
    );
    // on_error is per store, so the allow and deny fallbacks run in their own instances.
    let f = Ficus::start(&yaml).await;
    let fa = Ficus::start(&yaml.replace("on_error: local", "on_error: allow")).await;
    let fd = Ficus::start(&yaml.replace("on_error: local", "on_error: deny")).await;
    let metrics_of = |f: &Ficus| f.admin_url("/metrics");
    assert!(store_decides(&f, "/local", "fb-local", 0.0, Duration::from_secs(15)).await);

    redis.stop();
    let c = client();
    // Local fallback: each instance limits alone; never a 5xx.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(send(&c, get_req(f.url("/local"))).await.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    let all_ok = |f: &Ficus, path: &'static str| {
        let url = f.url(path);
        let c = c.clone();
        async move {
            let mut v = Vec::new();
            for _ in 0..12 {
                v.push(send(&c, get_req(url.clone())).await.status.as_u16());
            }
            v
        }
    };
    let allowed = all_ok(&fa, "/allow").await;
    assert!(allowed.iter().all(|s| *s == 200), "allow fallback: {allowed:?}");
    let denied = all_ok(&fd, "/deny").await;
    assert!(denied.iter().all(|s| *s == 429), "deny fallback: {denied:?}");

    let m = get(&metrics_of(&f)).await.text();
    let errors: f64 = ["unavailable", "timeout", "error", "circuit_open"]
        .iter()
        .map(|r| {
            metric(
                &m,
                &format!(r#"ficus_ratelimit_store_errors_total{{policy="fb-local",reason="{r}"}}"#),
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(errors >= 12.0, "store errors counted: {errors}");
    assert!(
        metric(
            &m,
            r#"ficus_ratelimit_decisions_total{policy="fb-local",result="fallback_limited"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Redis comes back on the same port: decisions go through it again, by themselves.
    let _redis = Redis::start_on(port).await;
    let before = store_decisions(&f, "fb-local").await;
    assert!(
        store_decides(&f, "/local", "fb-local", before + 1.0, Duration::from_secs(20)).await,
        "limiting did not go back to Redis"
    );
    for g in [f, fa, fd] {
        g.shutdown().await;
    }
}

/// Seconds-long store timeout: a request that waited on the dead Redis would take that long, so
/// a sub-second answer proves the breaker (not a timeout) sent it to the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_opens_the_store_breaker_so_requests_stop_waiting_and_it_closes_when_redis_returns() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "shared",
        &format!(
            "  store: {{ redis_urls: ['{}'], timeout: 2s, on_error: allow, breaker: {{ failures: 3, open_for: 200ms, max_open_for: 800ms }} }}\n  policies:\n    shared: {{ rate: 1000/s }}\n",
            redis.url
        ),
    ))
    .await;
    assert!(store_decides(&f, "/warm", "shared", 0.0, Duration::from_secs(10)).await);
    let metrics = || async { get(&f.admin_url("/metrics")).await.text() };
    let m = metrics().await;
    assert_eq!(
        metric(&m, r#"ficus_ratelimit_store_breaker_state{store="redis"}"#),
        Some(0.0),
        "closed while Redis answers"
    );

    redis.stop();
    let c = client();
    // Spread over about three seconds, so the breaker goes half-open several times meanwhile:
    // its probes must not hold up requests either.
    let mut slow = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        let a = send(&c, get_req(f.url("/x"))).await;
        let took = started.elapsed();
        assert_eq!(a.status, 200, "the allow fallback decides");
        if i >= 3 && took >= Duration::from_secs(1) {
            slow.push((i, took));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slow.is_empty(),
        "requests that waited on the dead Redis: {slow:?}"
    );
    let m = metrics().await;
    let fallbacks = metric(
        &m,
        r#"ficus_ratelimit_decisions_total{policy="shared",result="fallback_allowed"}"#,
    )
    .unwrap_or(0.0);
    assert!(fallbacks >= 30.0, "fallback decisions: {fallbacks}");
    assert!(
        metric(
            &m,
            r#"ficus_ratelimit_store_errors_total{policy="shared",reason="circuit_open"}"#
        )
        .unwrap_or(0.0)
            >= 25.0,
        "decisions the open breaker sent to the fallback"
    );
    assert!(
        metric(
            &m,
            r#"ficus_ratelimit_store_breaker_transitions_total{store="redis",to="open"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let state = metric(&m, r#"ficus_ratelimit_store_breaker_state{store="redis"}"#);
    assert!(
        matches!(state, Some(s) if s >= 1.0),
        "open or half-open: {state:?}"
    );

    // Redis comes back on the same port: a probe closes the breaker and Redis decides again.
    let _redis = Redis::start_on(port).await;
    let before = store_decisions(&f, "shared").await;
    assert!(
        store_decides(&f, "/x", "shared", before + 1.0, Duration::from_secs(20)).await,
        "limiting did not go back to Redis"
    );
    let m = metrics().await;
    assert_eq!(
        metric(&m, r#"ficus_ratelimit_store_breaker_state{store="redis"}"#),
        Some(0.0)
    );
    assert!(
        metric(
            &m,
            r#"ficus_ratelimit_store_breaker_transitions_total{store="redis",to="closed"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_six_kib_header_key_becomes_a_bounded_redis_key_and_still_limits() {
    let redis = Redis::start().await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "per-tenant",
        &format!(
            "  store: {{ redis_urls: ['{}'], timeout: 1s, on_error: deny }}\n  policies:\n    per-tenant: {{ key: header:x-tenant, rate: 2/m }}\n",
            redis.url
        ),
    ))
    .await;
    let c = client();
    let ask = |tenant: &str| {
        Request::get(f.url("/x"))
            .header("x-tenant", tenant)
            .body(empty())
            .unwrap()
    };
    // `deny` on error: a 200 proves Redis decided. Wait for the background connection.
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = ask("warm-up");
            let c = c.clone();
            async move { send(&c, r).await.status.as_u16() == 200 }
        })
        .await
    );
    let long = "t".repeat(6 * 1024);
    // Same 6 KiB but the last byte: a key must be the whole value, not a prefix of it.
    let other = format!("{}u", &long[1..]);
    let mut seen = Vec::new();
    for t in [&long, &long, &long, &other, &other, &other] {
        seen.push(send(&c, ask(t)).await.status.as_u16());
    }
    assert_eq!(seen, [200, 200, 429, 200, 200, 429]);

    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 3, "warm-up and the two long tenants: {keys:?}");
    for k in &keys {
        assert!(
            k.starts_with("ficus:rl:per-tenant:") && k.len() <= "ficus:rl:per-tenant:".len() + 64,
            "unbounded or unprefixed key of {} bytes: {}",
            k.len(),
            &k[..k.len().min(80)]
        );
        assert!(
            !k.contains("warm-up") && !k.contains("tttt"),
            "raw client bytes in {k}"
        );
    }
    f.shutdown().await;
}

fn hs_token(sub: &str, role: &str) -> String {
    let claims = serde_json::json!({
        "iss": "https://idp.test/", "aud": "orders", "sub": sub, "role": role,
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"rate-limit-test-secret-of-32-bytes-or-more"),
    )
    .unwrap()
}

fn bearer(url: String, token: &str) -> Request<Body> {
    Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn keys_are_isolated_by_claim_and_header_and_exemptions_bypass_the_limit() {
    std::env::set_var("FICUS_RL_TEST_HMAC", "rate-limit-test-secret-of-32-bytes-or-more");
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace(
        "routes:\n",
        "routes:\n  - name: users\n    match: { path_prefix: /users }\n    upstream: app\n    identity: { jwt: corp }\n    rate_limit: [per-user]\n  - name: tenants\n    match: { path_prefix: /tenants }\n    upstream: app\n    rate_limit: [per-tenant, per-ip]\n",
    ) + "identity:\n  jwt:\n    corp: { issuer: 'https://idp.test/', audiences: [orders], algorithms: [HS256], hmac_secret_env: FICUS_RL_TEST_HMAC }\n"
        + "rate_limits:\n  policies:\n    per-user: { key: jwt.sub, rate: 2/m, exempt: { claims: [{ name: role, equals: admin }] } }\n"
        + "    per-tenant: { key: [header:x-tenant, route], rate: 2/m, missing_key: skip }\n"
        + "    per-ip: { key: client_ip, rate: 100/m, exempt: { cidrs: ['10.0.0.0/8'] } }\n";
    let f = Ficus::start(&yaml).await;
    let c = client();
    let (alice, bob, root) = (
        hs_token("alice", "user"),
        hs_token("bob", "user"),
        hs_token("root", "admin"),
    );
    let mut seen = Vec::new();
    for t in [&alice, &alice, &alice, &bob, &bob, &bob] {
        seen.push(send(&c, bearer(f.url("/users"), t)).await.status.as_u16());
    }
    assert_eq!(
        seen,
        [200, 200, 429, 200, 200, 429],
        "alice and bob have their own buckets"
    );
    for _ in 0..5 {
        assert_eq!(
            send(&c, bearer(f.url("/users"), &root)).await.status.as_u16(),
            200,
            "admins are exempt"
        );
    }

    let tenant = |t: &'static str| {
        Request::get(f.url("/tenants"))
            .header("x-tenant", t)
            .body(empty())
            .unwrap()
    };
    let seen: Vec<u16> = futures_util::future::join_all(["a", "a", "a", "b", "b"].map(|t| {
        let c = c.clone();
        let r = tenant(t);
        async move { send(&c, r).await.status.as_u16() }
    }))
    .await;
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 200, 200, 429], "{seen:?}");
    // No tenant header: `skip` leaves only the per-ip policy.
    for _ in 0..4 {
        assert_eq!(send(&c, get_req(f.url("/tenants"))).await.status.as_u16(), 200);
    }
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            r#"ficus_ratelimit_decisions_total{policy="per-user",result="exempt"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"ficus_ratelimit_decisions_total{policy="per-tenant",result="skipped"}"#
        ),
        Some(4.0)
    );
    f.shutdown().await;

    // A client inside an exempt CIDR is never limited.
    let f = Ficus::start(&limited(
        &up.url(),
        "tight",
        "  policies:\n    tight: { rate: 1/m, exempt: { cidrs: ['127.0.0.0/8'] } }\n",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(send(&c, get_req(f.url("/x"))).await.status.as_u16(), 200);
    }
    f.shutdown().await;
}

#[tokio::test]
async fn limited_routes_carry_ratelimit_headers_and_429_is_problem_json_with_retry_after() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "burst, slow",
        "  policies:\n    burst: { rate: 3/3s, legacy_headers: true }\n    slow: { rate: 100/m, burst: 50, algorithm: gcra }\n",
    ))
    .await;
    let c = client();
    let first = send(&c, get_req(f.url("/x"))).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["ratelimit-policy"],
        r#""burst";q=3;w=3, "slow";q=50;w=30"#
    );
    assert_eq!(first.headers["ratelimit"], r#""burst";r=2;t=1, "slow";r=49;t=1"#);
    assert_eq!(first.headers["x-ratelimit-limit"], "3");
    assert_eq!(first.headers["x-ratelimit-remaining"], "2");
    send(&c, get_req(f.url("/x"))).await;
    send(&c, get_req(f.url("/x"))).await;
    let refused = send(&c, get_req(f.url("/x"))).await;
    refused.assert_problem(429, "rate-limited");
    let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "retry-after {retry}");
    assert!(refused.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with(r#""burst";r=0;"#));
    assert_eq!(up.hits(), 3, "the refused request never reached the upstream");

    // A route without policies has no such headers.
    f.shutdown().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let plain = send(&c, get_req(f.url("/x"))).await;
    assert!(!plain.headers.contains_key("ratelimit"));
    assert!(!plain.headers.contains_key("ratelimit-policy"));
    f.shutdown().await;
}

#[tokio::test]
async fn sliding_window_admits_the_count_per_window_and_says_when_to_retry() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "window",
        "  policies:\n    window: { rate: 4/1h, algorithm: sliding_window, cost: 2 }\n",
    ))
    .await;
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(send(&c, get_req(f.url("/x"))).await.status.as_u16());
    }
    assert_eq!(seen, [200, 200, 429], "cost 2 against 4 per window");
    let refused = send(&c, get_req(f.url("/x"))).await;
    let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 60 && retry <= 3600, "retry-after {retry}");
    f.shutdown().await;
}

#[tokio::test]
async fn a_redis_decision_is_exactly_one_command() {
    let redis = Redis::start().await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&limited(
        &up.url(),
        "shared",
        &format!(
            "  store: {{ redis_urls: ['{}'], timeout: 1s }}\n  policies:\n    shared: {{ rate: 1000/s }}\n",
            redis.url
        ),
    ))
    .await;
    let c = client();
    assert!(store_decides(&f, "/warm", "shared", 0.0, Duration::from_secs(10)).await);
    let mut conn = redis.conn().await;
    // Per-command call counts. Commands a script runs (TIME, GET, SET) count as commands too,
    // but travel no network: what crosses the wire is one EVALSHA per decision.
    let stats = |s: String| -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("total_commands_processed:") {
                out.insert("total".to_string(), v.trim().parse().unwrap());
            }
            if let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(":calls=")) {
                out.insert(name.to_string(), rest.split(',').next().unwrap().parse().unwrap());
            }
        }
        out
    };
    let info = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let s: String = redis::cmd("INFO")
                .arg("all")
                .query_async(&mut conn)
                .await
                .unwrap();
            s
        }
    };
    let before = stats(info(&mut conn).await);
    for _ in 0..50 {
        assert_eq!(send(&c, get_req(f.url("/x"))).await.status.as_u16(), 200);
    }
    let after = stats(info(&mut conn).await);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(delta("evalsha"), 50, "one EVALSHA per decision");
    for inside in ["time", "get", "set"] {
        assert_eq!(
            delta(inside),
            50,
            "{inside} runs inside the script once per decision"
        );
    }
    // Nothing else reached Redis but our own first INFO.
    assert_eq!(delta("total"), 50 * 4 + 1, "{before:?} -> {after:?}");
    let changed: Vec<&String> = after.keys().filter(|k| *k != "total" && delta(k) > 0).collect();
    assert_eq!(changed, ["evalsha", "get", "info", "set", "time"]);
    f.shutdown().await;
}

#[tokio::test]
async fn invalid_rate_limit_config_is_refused_with_its_location() {
    let up = Upstream::echo().await;
    let err = Ficus::try_start(&limited(
        &up.url(),
        "nope",
        "  policies:\n    real: { rate: 5/s }\n",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("routes[0].rate_limit[0]: no policy named `nope`"),
        "{err}"
    );
    let err = Ficus::try_start(&limited(
        &up.url(),
        "bad",
        "  policies:\n    bad: { rate: 5/fortnight }\n",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("rate_limits.policies.bad: rate:"), "{err}");
    assert!(err.contains("ficus.yaml:"), "{err}");
    let err = Ficus::try_start(&limited(
        &up.url(),
        "r",
        "  policies:\n    r: { rate: 5/s, store: redis }\n",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("needs rate_limits.store.redis_urls"), "{err}");
    let err = Ficus::try_start(&limited(
        &up.url(),
        "r",
        "  store: { redis_urls: ['redis://127.0.0.1:1'], breaker: { failures: 0 } }\n  policies:\n    r: { rate: 5/s }\n",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("rate_limits.store.breaker.failures: must be at least 1"),
        "{err}"
    );
    let err = Ficus::try_start(&limited(
        &up.url(),
        "r",
        "  policies:\n    r: { rate: 5/s, max_keys: 0 }\n",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("rate_limits.policies.r: max_keys: must be at least 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_redis_urls_use_a_redis_cluster_shared_by_two_instances() {
    let cluster = RedisCluster::start().await;
    assert_eq!(cluster.node_count(), 3);
    let up = Upstream::echo().await;
    let urls: Vec<String> = cluster.urls.iter().map(|u| format!("'{u}'")).collect();
    let yaml = limited(
        &up.url(),
        "per-tenant",
        &format!(
            "  store: {{ redis_urls: [{}], timeout: 1s, on_error: deny }}\n  policies:\n    per-tenant: {{ key: header:x-tenant, rate: 3/m }}\n",
            urls.join(", ")
        ),
    );
    let a = Ficus::start(&yaml).await;
    let b = Ficus::start(&yaml).await;
    let c = client();
    let ask = |f: &Ficus, tenant: String| {
        Request::get(f.url("/x"))
            .header("x-tenant", tenant)
            .body(empty())
            .unwrap()
    };
    // `deny` on error: a 200 proves the cluster answered. Wait for both to connect.
    for f in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(15), || {
                let r = ask(f, format!("warm-{}", f.addr.port()));
                let c = c.clone();
                async move { send(&c, r).await.status.as_u16() == 200 }
            })
            .await,
            "no decision through the cluster"
        );
    }
    // Twenty tenants spread over the cluster's slots; each gets exactly its 3 across both instances.
    for t in 0..20 {
        let mut seen = Vec::new();
        for i in 0..6 {
            let f = if i % 2 == 0 { &a } else { &b };
            seen.push(send(&c, ask(f, format!("tenant-{t}"))).await.status.as_u16());
        }
        assert_eq!(seen, [200, 200, 200, 429, 429, 429], "tenant-{t}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
