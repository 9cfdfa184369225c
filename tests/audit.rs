//! The audit log: every reload and admin write leaves one JSON line saying who (peer and token
//! fingerprint, never the token), what, the config versions before and after, and the outcome.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::time::Duration;

use http::Request;
use support::*;

const TOKEN: &str = "audit-s3cret-t0ken-value";

fn config(upstream: &str, token_env: &str) -> String {
    basic_config(upstream).replace(
        "admin:\n  bind: 127.0.0.1:0",
        &format!("admin:\n  bind: 127.0.0.1:0\n  token_env: {token_env}\n  audit_log: audit.log"),
    )
}

fn post_reload(f: &Ficus, token: &str) -> Request<Body> {
    Request::post(f.admin_url("/admin/reload"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

/// The audit file's lines, waiting briefly for `n` of them.
async fn audit_lines(f: &Ficus, n: usize) -> (String, Vec<serde_json::Value>) {
    let path = f.dir.path().join("audit.log");
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n {
            return (text, lines);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} audit lines in {}", path.display());
}

#[tokio::test]
async fn an_admin_reload_writes_an_audit_line_with_who_versions_and_outcome() {
    std::env::set_var("FICUS_TEST_AUDIT_OK", TOKEN);
    let a = Upstream::echo().await;
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_AUDIT_OK")).await;
    let ans = send(&client(), post_reload(&f, TOKEN)).await;
    assert_eq!(ans.status, 200, "{}", ans.text());

    let (text, lines) = audit_lines(&f, 1).await;
    let l = &lines[0];
    assert_eq!(l["kind"], "audit", "{l}");
    assert_eq!(l["action"], "reload", "{l}");
    assert_eq!(l["trigger"], "admin api", "{l}");
    assert_eq!(l["version_before"], 1, "{l}");
    assert_eq!(l["version_after"], 2, "{l}");
    assert_eq!(l["outcome"], "ok", "{l}");
    assert!(
        l["who"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert_eq!(l["who"]["token"], ficus::admin::audit::fingerprint(TOKEN), "{l}");
    assert!(l["ts"].is_string(), "{l}");
    assert!(
        !text.contains(TOKEN),
        "the token itself is in the audit log: {text}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_failed_reload_and_a_wrong_token_are_audited_without_the_tokens() {
    std::env::set_var("FICUS_TEST_AUDIT_FAIL", TOKEN);
    let a = Upstream::echo().await;
    let good = config(&a.url(), "FICUS_TEST_AUDIT_FAIL");
    let f = Ficus::start(&good).await;
    f.write_config(&good.replace("    upstream: app", "    upstream: missing"));
    let ans = send(&client(), post_reload(&f, TOKEN)).await;
    ans.assert_problem(422, "config-invalid");
    let ans = send(&client(), post_reload(&f, "wrong-guess-token")).await;
    assert_eq!(ans.status, 401);

    let (text, lines) = audit_lines(&f, 2).await;
    let failed = &lines[0];
    assert_eq!(failed["action"], "reload", "{failed}");
    assert_eq!(failed["outcome"], "error", "{failed}");
    assert_eq!(failed["version_before"], 1, "{failed}");
    assert_eq!(failed["version_after"], 1, "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("no upstream named `missing`"), "{failed}");
    let denied = &lines[1];
    assert_eq!(denied["outcome"], "denied", "{denied}");
    assert_eq!(
        denied["who"]["token"],
        ficus::admin::audit::fingerprint("wrong-guess-token")
    );
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("wrong-guess-token"), "{text}");
    f.shutdown().await;
}

#[tokio::test]
async fn a_reload_by_another_trigger_is_audited_as_that_trigger() {
    let a = Upstream::echo().await;
    let f = Ficus::start(&config(&a.url(), "FICUS_TEST_AUDIT_UNSET")).await;
    f.gw().reload("SIGHUP").await.unwrap();
    let (_, lines) = audit_lines(&f, 1).await;
    assert_eq!(lines[0]["trigger"], "SIGHUP");
    assert_eq!(lines[0]["who"]["local"], "SIGHUP");
    assert_eq!(lines[0]["version_after"], 2);
    f.shutdown().await;
}

#[tokio::test]
async fn a_rollout_change_is_audited_with_the_route_and_the_percent_before_and_after() {
    std::env::set_var("FICUS_TEST_AUDIT_ROLLOUT", TOKEN);
    let l = Upstream::echo_named("legacy").await;
    let m = Upstream::echo_named("modern").await;
    let yaml = yaml::Config::new()
        .admin_extra("token_env: FICUS_TEST_AUDIT_ROLLOUT, audit_log: audit.log")
        .upstream("legacy", &l.url())
        .upstream("modern", &m.url())
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &["modern_percent: 0", "rollout: { step: 10, every: 1h }"],
        ))
        .build();
    let f = Ficus::start(&yaml).await;
    let set = Request::post(f.admin_url("/admin/routes/orders/rollout"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(r#"{"action": "set", "percent": 30}"#))
        .unwrap();
    let ans = send(&client(), set).await;
    assert_eq!(ans.status, 200, "{}", ans.text());

    let (text, lines) = audit_lines(&f, 1).await;
    let l = &lines[0];
    assert_eq!(l["action"], "rollout.set", "{l}");
    assert_eq!(l["target"], "orders", "{l}");
    assert_eq!(l["outcome"], "ok", "{l}");
    assert_eq!(l["detail"]["percent_before"], 0.0, "{l}");
    assert_eq!(l["detail"]["percent_after"], 30.0, "{l}");
    assert_eq!(l["version_before"], 1);
    assert_eq!(l["version_after"], 1);
    assert!(!text.contains(TOKEN), "{text}");
    f.shutdown().await;
}
