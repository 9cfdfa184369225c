//! Identity end to end: JWT providers with a real JWKS server, route requirements, claim
//! forwarding, and the security battery. Every refused case gets 401 (or 431 for size) and never
//! reaches the upstream. Keys are generated here; none is committed.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Signer {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    public_pem: String,
}

fn rsa(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    Signer {
        kid: kid.into(),
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap(),
        public_pem: kp.public_key_pem(),
    }
}

fn ec(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        public_pem: kp.public_key_pem(),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn good_claims() -> serde_json::Value {
    serde_json::json!({ "iss": "https://idp.test/", "aud": "orders", "sub": "alice", "exp": now() + 600, "scope": "orders:read orders:write" })
}

fn sign(s: &Signer, claims: &serde_json::Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&h, claims, &s.enc).unwrap()
}

/// A token assembled by hand (for the malformed and malicious cases).
fn raw_token(header: &serde_json::Value, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload),
        signature
    )
}

/// A JWKS server whose key set can be swapped; counts its fetches.
struct Idp {
    upstream: Upstream,
    set: Arc<parking_lot::Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(signers: &[&Signer]) -> Self {
        let set = Arc::new(parking_lot::Mutex::new(jwks(signers)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, n) = (set.clone(), fetches.clone());
        let upstream = Upstream::start(move |_req: Request<Incoming>| {
            n.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::to_string(&*s.lock()).unwrap();
            async move { Response::new(full(body)) }
        })
        .await;
        Self {
            upstream,
            set,
            fetches,
        }
    }

    fn serve(&self, signers: &[&Signer]) {
        *self.set.lock() = jwks(signers);
    }
}

fn jwks(signers: &[&Signer]) -> JwkSet {
    JwkSet {
        keys: signers
            .iter()
            .map(|s| {
                let mut j = Jwk::from_encoding_key(&s.enc, s.alg).unwrap();
                j.common.key_id = Some(s.kid.clone());
                j
            })
            .collect(),
    }
}

fn config(upstream: &str, provider: &str, route_identity: &str) -> String {
    basic_config(upstream).replace(
        "    upstream: app\n",
        &format!("    upstream: app\n    identity: {{ {route_identity} }}\n"),
    ) + &format!(
        "identity:\n  jwt:\n    corp: {{ issuer: 'https://idp.test/', audiences: [orders], {provider} }}\n"
    )
}

fn with_token(f: &Ficus, token: &str) -> Request<Body> {
    Request::get(f.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

const ROUTE: &str = "jwt: corp, scopes: ['orders:read'], forward_claims: { sub: X-User-Id }";

#[tokio::test]
async fn valid_tokens_pass_and_claims_are_forwarded_with_caller_copies_stripped() {
    let (r, e) = (rsa("r1"), ec("e1"));
    let idp = Idp::start(&[&r, &e]).await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256, ES256], jwks_url: '{}/jwks'",
        idp.upstream.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    for s in [&r, &e] {
        let mut req = with_token(&f, &sign(s, &good_claims()));
        req.headers_mut().insert("x-user-id", "mallory".parse().unwrap());
        let a = send(&c, req).await;
        assert_eq!(a.status, 200, "{:?}: {}", s.alg, a.text());
        assert_eq!(a.echoed().headers["x-user-id"], vec!["alice".to_string()]);
    }
    // The scheme is case-insensitive.
    let t = sign(&r, &good_claims());
    let lower = Request::get(f.url("/orders"))
        .header("authorization", format!("bearer {t}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&c, lower).await.status, 200);
    f.shutdown().await;
}

#[tokio::test]
async fn missing_token_gets_401_and_missing_scope_gets_403() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let f = Ficus::start(&config(
        &up.url(),
        &provider,
        "jwt: corp, scopes: ['orders:admin']",
    ))
    .await;
    let c = client();
    let none = send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
    none.assert_problem(401, "missing-token");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let scoped = send(&c, with_token(&f, &sign(&r, &good_claims()))).await;
    scoped.assert_problem(403, "insufficient-scope");
    assert_eq!(
        scoped.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="orders:admin""#
    );
    assert_eq!(up.hits(), 0);
    let mut admin = good_claims();
    admin["scope"] = "orders:admin".into();
    assert_reaches(&up, send(&c, with_token(&f, &sign(&r, &admin)))).await;
    f.shutdown().await;
}

#[tokio::test]
async fn optional_identity_lets_anonymous_callers_through() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let f = Ficus::start(&config(
        &up.url(),
        &provider,
        "jwt: corp, optional: true, forward_claims: { sub: X-User-Id }",
    ))
    .await;
    let req = Request::get(f.url("/orders"))
        .header("x-user-id", "mallory")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    assert!(
        !a.echoed().headers.contains_key("x-user-id"),
        "a caller's own copy never passes"
    );
    assert_eq!(
        send(&client(), with_token(&f, &sign(&r, &good_claims())))
            .await
            .echoed()
            .header("x-user-id"),
        Some("alice")
    );
    // A bad token is still refused on an optional route.
    send(&client(), with_token(&f, "not.a.token"))
        .await
        .assert_problem(401, "invalid-token");
    f.shutdown().await;
}

/// The security battery: each token is refused with 401 (431 for the huge one) and nothing
/// reaches the upstream.
#[tokio::test]
async fn attack_tokens_are_refused_and_never_reach_the_upstream() {
    let (r, e) = (rsa("r1"), ec("e1"));
    let attacker = rsa("evil");
    let idp = Idp::start(&[&r, &e]).await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256, ES256], jwks_url: '{}/jwks'",
        idp.upstream.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    let good = good_claims();
    let payload = good.to_string();
    let signed = sign(&r, &good);
    let sig_of = |t: &str| t.rsplit('.').next().unwrap().to_string();

    let mut cases: Vec<(&str, String)> = Vec::new();
    for alg in ["none", "None", "NONE"] {
        cases.push((
            "alg none, empty signature",
            raw_token(&serde_json::json!({"alg": alg, "typ": "JWT"}), &payload, ""),
        ));
        cases.push((
            "alg none, signature kept",
            raw_token(&serde_json::json!({"alg": alg}), &payload, &sig_of(&signed)),
        ));
    }
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let hs_header = serde_json::json!({"alg": "HS256", "kid": "r1"});
    let msg = format!("{}.{}", B64.encode(hs_header.to_string()), B64.encode(&payload));
    let hs_sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(r.public_pem.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    cases.push(("HS256 with the RSA public key", format!("{msg}.{hs_sig}")));
    for kid in ["../../../../etc/passwd", "1' OR '1'='1", "r1\u{0}"] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        cases.push((
            "kid injection",
            jsonwebtoken::encode(&h, &good, &attacker.enc).unwrap(),
        ));
    }
    // The attacker points at their own key: ficus never fetches what a token names.
    let jku = serde_json::json!({"alg": "RS256", "kid": "evil", "jku": format!("{}/evil", idp.upstream.url()), "x5u": "http://127.0.0.1:1/x"});
    let msg = format!("{}.{}", B64.encode(jku.to_string()), B64.encode(&payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &attacker.enc, Algorithm::RS256).unwrap();
    cases.push(("jku/x5u to the attacker's key", format!("{msg}.{sig}")));
    let embedded = Jwk::from_encoding_key(&attacker.enc, Algorithm::RS256).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(embedded);
    cases.push((
        "embedded jwk",
        jsonwebtoken::encode(&h, &good, &attacker.enc).unwrap(),
    ));
    let mut claims = good.clone();
    claims["exp"] = serde_json::json!(now() - 3600);
    cases.push(("expired", sign(&r, &claims)));
    let mut claims = good.clone();
    claims["nbf"] = serde_json::json!(now() + 3600);
    cases.push(("nbf in the future", sign(&r, &claims)));
    let mut claims = good.clone();
    claims["iat"] = serde_json::json!(now() + 3600);
    cases.push(("iat in the future", sign(&r, &claims)));
    let mut claims = good.clone();
    claims.as_object_mut().unwrap().remove("exp");
    cases.push(("exp missing", sign(&r, &claims)));
    let mut claims = good.clone();
    claims["iss"] = serde_json::json!("https://evil.test/");
    cases.push(("wrong iss", sign(&r, &claims)));
    let mut claims = good.clone();
    claims["aud"] = serde_json::json!("billing");
    cases.push(("wrong aud", sign(&r, &claims)));
    let mut parts: Vec<String> = signed.split('.').map(str::to_string).collect();
    let mut tampered = good.clone();
    tampered["sub"] = serde_json::json!("admin");
    parts[1] = B64.encode(tampered.to_string());
    cases.push(("tampered payload", parts.join(".")));
    // ES256 with r = s = 0: the "psychic signature".
    let es_header = serde_json::json!({"alg": "ES256", "kid": "e1"});
    cases.push((
        "psychic signature",
        raw_token(&es_header, &payload, &B64.encode([0u8; 64])),
    ));
    // Duplicate claims, validly signed: the last `sub` would win in a naive map.
    let dup = format!(
        r#"{{"iss":"https://idp.test/","aud":"orders","sub":"alice","sub":"admin","exp":{},"scope":"orders:read"}}"#,
        now() + 600
    );
    let h = serde_json::json!({"alg": "RS256", "kid": "r1"});
    let msg = format!("{}.{}", B64.encode(h.to_string()), B64.encode(&dup));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &r.enc, Algorithm::RS256).unwrap();
    cases.push(("duplicate claims", format!("{msg}.{sig}")));
    // Just over the provider's 8 KiB cap, but under the header limit: refused before decoding.
    let mut claims = good.clone();
    claims["pad"] = serde_json::json!("x".repeat(9000));
    cases.push(("oversized token", sign(&r, &claims)));

    for (what, token) in &cases {
        let a = send(&c, with_token(&f, token)).await;
        assert_eq!(a.status, 401, "{what} was not refused: {}", a.text());
        assert_eq!(
            a.headers["www-authenticate"], r#"Bearer error="invalid_token""#,
            "{what}"
        );
    }

    // A 100 KB token is refused by the header limit, with nothing allocated for it.
    let huge = format!("{}.{}.{}", "a".repeat(50_000), "b".repeat(50_000), "c");
    let a = send(&c, with_token(&f, &huge)).await;
    assert_eq!(a.status, 431);
    // A token only in the query string is not read.
    let q = send(
        &c,
        Request::get(f.url(&format!("/orders?access_token={signed}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    q.assert_problem(401, "missing-token");

    assert_eq!(up.hits(), 0, "an attack reached the upstream");
    assert_reaches(&up, send(&c, with_token(&f, &signed))).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256], jwks_url: '{}/jwks', unknown_kid_refetch: 1h",
        idp.upstream.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    // The start-up fetch.
    assert!(
        eventually(Duration::from_secs(5), || async {
            idp.fetches.load(Ordering::SeqCst) >= 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = idp.fetches.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("unknown-{i}"));
        let token = jsonwebtoken::encode(&h, &good_claims(), &r.enc).unwrap();
        let url = f.url("/orders");
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            send(&client(), req).await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let extra = idp.fetches.load(Ordering::SeqCst) - before;
    assert!(extra <= 1, "{extra} JWKS fetches for 1000 unknown kids");
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, send(&client(), with_token(&f, &sign(&r, &good_claims())))).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_accepts_the_new_kid_and_rejects_the_removed_one() {
    let (old, new) = (rsa("2026-01"), rsa("2026-02"));
    let idp = Idp::start(&[&old]).await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256], jwks_url: '{}/jwks', unknown_kid_refetch: 100ms",
        idp.upstream.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    let old_token = sign(&old, &good_claims());
    assert!(
        eventually(Duration::from_secs(5), || async {
            send(&client(), with_token(&f, &old_token)).await.status == 200
        })
        .await
    );

    // The IdP rotates: the new key in, the old one out.
    idp.serve(&[&new]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new_token = sign(&new, &good_claims());
    assert_eq!(
        send(&c, with_token(&f, &new_token)).await.status,
        200,
        "the new kid triggers a refetch"
    );
    // The old token was cached as verified; its key is gone, so the entry is too.
    assert_eq!(send(&c, with_token(&f, &old_token)).await.status, 401);
    f.shutdown().await;
}

#[tokio::test]
async fn static_pem_and_hmac_keys_and_invalid_providers() {
    let r = rsa("ignored");
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp.pem"), &r.public_pem).unwrap();
    let yaml = config(&up.url(), "algorithms: [RS256], pem_file: idp.pem", ROUTE);
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let mut claims = good_claims();
    claims["sub"] = serde_json::json!("bob");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &r.enc).unwrap();
    assert_eq!(
        send(&client(), with_token(&f, &token))
            .await
            .echoed()
            .header("x-user-id"),
        Some("bob")
    );
    f.shutdown().await;

    std::env::set_var("FICUS_TEST_HMAC", "0123456789abcdef0123456789abcdef-secret");
    let f = Ficus::start(&config(
        &up.url(),
        "algorithms: [HS256], hmac_secret_env: FICUS_TEST_HMAC",
        ROUTE,
    ))
    .await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-secret"),
    )
    .unwrap();
    assert_eq!(send(&client(), with_token(&f, &token)).await.status, 200);
    f.shutdown().await;

    let err = Ficus::try_start(&config(
        &up.url(),
        "algorithms: [RS256, HS256], jwks_url: 'http://127.0.0.1:9/'",
        ROUTE,
    ))
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("identity.jwt.corp: HMAC algorithms cannot share a provider"),
        "{err}"
    );
    let err = Ficus::try_start(&config(
        &up.url(),
        "algorithms: [none], jwks_url: 'http://127.0.0.1:9/'",
        ROUTE,
    ))
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("`none` is not a JWT algorithm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_sticks_on_jwt_sub_and_honours_the_override_only_with_the_scope() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[
                "modern_percent: 50",
                "sticky: jwt.sub",
                "override: { header: X-Ficus-Backend, require_scope: 'ficus:qa' }",
            ],
        ))
        // One more key of the route, after its migration block.
        .route("    identity: { jwt: corp }")
        .section(&format!(
            "identity:\n  jwt:\n    corp: {{ issuer: 'https://idp.test/', audiences: [orders], algorithms: [RS256], jwks_url: '{}/jwks' }}\n",
            idp.upstream.url()
        ))
        .build();
    let f = Ficus::start(&yaml).await;
    let c = client();
    let token_for = |sub: &str, scope: &str| {
        let mut claims = good_claims();
        claims["sub"] = serde_json::json!(sub);
        claims["scope"] = serde_json::json!(scope);
        sign(&r, &claims)
    };
    let who = |token: String, overriding: Option<&'static str>| {
        let mut b = Request::get(f.url("/orders")).header("authorization", format!("Bearer {token}"));
        if let Some(o) = overriding {
            b = b.header("x-ficus-backend", o);
        }
        b.body(empty()).unwrap()
    };
    let mut sides = std::collections::HashMap::new();
    for i in 0..40 {
        let sub = format!("user-{i}");
        let first = send(&c, who(token_for(&sub, "orders:read"), None))
            .await
            .echoed()
            .name;
        for _ in 0..2 {
            assert_eq!(
                send(&c, who(token_for(&sub, "orders:read"), None))
                    .await
                    .echoed()
                    .name,
                first,
                "{sub} is sticky"
            );
        }
        sides.insert(sub, first);
    }
    let on_modern = sides.values().filter(|s| *s == "modern").count();
    assert!(
        (8..=32).contains(&on_modern),
        "{on_modern} of 40 subs on modern at 50%"
    );

    let (legacy_user, _) = sides.iter().find(|(_, s)| *s == "legacy").unwrap();
    // Without the scope the override is ignored.
    let a = send(&c, who(token_for(legacy_user, "orders:read"), Some("modern")))
        .await
        .echoed();
    assert_eq!(a.name, "legacy");
    // With it, it is honoured, and the backend never sees the header.
    let a = send(
        &c,
        who(token_for(legacy_user, "orders:read ficus:qa"), Some("modern")),
    )
    .await
    .echoed();
    assert_eq!(a.name, "modern");
    assert!(!a.headers.contains_key("x-ficus-backend"));
    f.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_the_verified_subject() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let yaml = config(&up.url(), &provider, "jwt: corp")
        .replace("    identity:", "    idempotency: { ttl: 1h }\n    identity:");
    let f = Ficus::start(&yaml).await;
    let c = client();
    let post = |sub: &str| {
        let mut claims = good_claims();
        claims["sub"] = serde_json::json!(sub);
        Request::post(f.url("/orders"))
            .header("authorization", format!("Bearer {}", sign(&r, &claims)))
            .header("idempotency-key", "same-key")
            .body(full("{}"))
            .unwrap()
    };
    assert_eq!(send(&c, post("alice")).await.status, 200);
    assert_eq!(
        send(&c, post("bob")).await.status,
        200,
        "bob's key is not alice's"
    );
    assert_eq!(up.hits(), 2);
    let again = send(&c, post("alice")).await;
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn api_keys_are_checked_by_hash_with_rotation_expiry_and_scopes() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "keys:\n\
         \x20 - {{ id: acme-2026a, owner: acme, sha256: '{}', scopes: ['orders:read'] }}\n\
         \x20 - {{ id: acme-2026b, owner: acme, sha256: '{}', scopes: ['orders:read'] }}\n\
         \x20 - {{ id: acme-old, owner: acme, sha256: '{}', scopes: ['orders:read'], expires: '2020-01-01T00:00:00Z' }}\n\
         \x20 - {{ id: reader-less, owner: globex, sha256: '{}', scopes: [] }}\n",
        sha256_hex("key-a"),
        sha256_hex("key-b"),
        sha256_hex("key-old"),
        sha256_hex("key-noscope")
    );
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let yaml = basic_config(&up.url()).replace(
        "    upstream: app\n",
        "    upstream: app\n    identity: { api_keys: partners, scopes: ['orders:read'], forward_claims: { sub: X-Key-Id, owner: X-Client } }\n",
    ) + "identity:\n  api_keys:\n    partners: { keys_file: keys.yaml }\n";
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let c = client();
    let with_key = |k: &str| {
        Request::get(f.url("/orders"))
            .header("x-api-key", k)
            .body(empty())
            .unwrap()
    };
    for (key, id) in [("key-a", "acme-2026a"), ("key-b", "acme-2026b")] {
        let a = send(&c, with_key(key)).await;
        assert_eq!(a.status, 200, "{key}");
        let e = a.echoed();
        assert_eq!(e.header("x-key-id"), Some(id));
        assert_eq!(e.header("x-client"), Some("acme"));
        assert!(!e.headers.contains_key("x-api-key"), "the key is not forwarded");
    }
    send(&c, with_key("key-old"))
        .await
        .assert_problem(401, "invalid-token");
    send(&c, with_key("guess"))
        .await
        .assert_problem(401, "invalid-token");
    send(&c, with_key("key-noscope"))
        .await
        .assert_problem(403, "insufficient-scope");
    send(&c, Request::get(f.url("/orders")).body(empty()).unwrap())
        .await
        .assert_problem(401, "missing-token");
    let in_query = send(
        &c,
        Request::get(f.url("/orders?api_key=key-a"))
            .body(empty())
            .unwrap(),
    )
    .await;
    in_query.assert_problem(401, "missing-token");
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_gets_its_own_credentials_instead_of_the_callers_token() {
    std::env::set_var("FICUS_TEST_LEGACY_BASIC", "svc-orders:s3cret");
    std::env::set_var("FICUS_TEST_LEGACY_KEY", "legacy-key-1");
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let route = "jwt: corp, upstream_auth: { basic_env: FICUS_TEST_LEGACY_BASIC, header: { name: X-Legacy-Key, value_env: FICUS_TEST_LEGACY_KEY } }";
    let f = Ficus::start(&config(&up.url(), &provider, route)).await;
    let e = send(&client(), with_token(&f, &sign(&r, &good_claims())))
        .await
        .echoed();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("svc-orders:s3cret")
    );
    assert_eq!(
        e.header("authorization"),
        Some(basic.as_str()),
        "the bearer token never reaches legacy"
    );
    assert_eq!(e.header("x-legacy-key"), Some("legacy-key-1"));
    f.shutdown().await;

    let f = Ficus::start(&config(
        &up.url(),
        &provider,
        "jwt: corp, upstream_auth: { drop_token: true }",
    ))
    .await;
    let e = send(&client(), with_token(&f, &sign(&r, &good_claims())))
        .await
        .echoed();
    assert!(!e.headers.contains_key("authorization"));
    f.shutdown().await;

    let err = Ficus::try_start(&config(
        &up.url(),
        &provider,
        "jwt: corp, upstream_auth: { basic_env: FICUS_TEST_UNSET_NOWHERE }",
    ))
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("routes[0].identity: environment variable FICUS_TEST_UNSET_NOWHERE is not set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_since_start_gives_503_and_later_outages_keep_the_last_good_keys() {
    let r = rsa("r1");
    // A JWKS server that answers 500 until told otherwise.
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = jwks(&[&r]);
    let h = healthy.clone();
    let idp = Upstream::start(move |_req: Request<Incoming>| {
        let ok = h.load(Ordering::SeqCst);
        let body = serde_json::to_string(&set).unwrap();
        async move {
            let mut resp = Response::new(full(if ok { body } else { "down".into() }));
            if !ok {
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            resp
        }
    })
    .await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256], jwks_url: '{}/jwks', unknown_kid_refetch: 100ms",
        idp.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    let token = sign(&r, &good_claims());
    let a = send(&c, with_token(&f, &token)).await;
    a.assert_problem(503, "identity-unavailable");
    assert!(a.headers.get("www-authenticate").is_none());
    assert_eq!(up.hits(), 0);

    // The IdP comes up: the next token that finds no key refetches and passes.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(send(&c, with_token(&f, &token)).await.status, 200);

    // It goes down again: the last good keys keep serving (a token never seen, so not cached).
    healthy.store(false, Ordering::SeqCst);
    f.gw().shared().snapshot.load().jwt_providers[0]
        .refresh()
        .await
        .unwrap_err();
    let mut other = good_claims();
    other["sub"] = "bob".into();
    let b = send(&c, with_token(&f, &sign(&r, &other))).await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(b.echoed().headers["x-user-id"], vec!["bob".to_string()]);

    // A reload that changes the provider (not its JWKS URL) during the outage keeps the keys.
    f.write_config(&config(&up.url(), &format!("{provider}, leeway: 10s"), ROUTE));
    f.gw().reload("test").await.unwrap();
    other["sub"] = "carol".into();
    let after = send(&c, with_token(&f, &sign(&r, &other))).await;
    assert_eq!(after.status, 200, "{}", after.text());
    f.shutdown().await;
}

#[tokio::test]
async fn idp_refusing_connections_since_start_gives_503_not_401() {
    let r = rsa("r1");
    // The upstream first: a port freed before it starts could be handed to it, and the
    // "closed" IdP would then be the echo server.
    let up = Upstream::echo().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let provider = format!("algorithms: [RS256], jwks_url: 'http://{addr}/jwks'");
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    send(&c, with_token(&f, &sign(&r, &good_claims())))
        .await
        .assert_problem(503, "identity-unavailable");
    // A caller without a token is still told to authenticate.
    send(&c, Request::get(f.url("/orders")).body(empty()).unwrap())
        .await
        .assert_problem(401, "missing-token");
    assert_eq!(up.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_gets_a_short_lived_jwt_signed_by_ficus_with_the_callers_sub_and_scope() {
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    // ficus's own signing key, generated here; the upstream knows only its public half.
    let ficus_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ficus-signing.pem"), ficus_key.serialize_pem()).unwrap();
    let public = jsonwebtoken::DecodingKey::from_ec_pem(ficus_key.public_key_pem().as_bytes()).unwrap();
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let route = "jwt: corp, upstream_auth: { jwt: { algorithm: ES256, key_file: ficus-signing.pem, kid: ficus-1, \
                 issuer: 'https://ficus.internal/', audience: legacy-orders, ttl: 60s, copy_claims: [sub, scope] } }";
    let f = Ficus::start_in(dir, &config(&up.url(), &provider, route))
        .await
        .unwrap();
    let c = client();
    let internal_token = |e: &Echoed| {
        e.header("authorization")
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_string()
    };
    let caller = sign(&r, &good_claims());
    let first = internal_token(&send(&c, with_token(&f, &caller)).await.echoed());
    assert_ne!(first, caller, "the caller's token never reaches legacy");
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_issuer(&["https://ficus.internal/"]);
    v.set_audience(&["legacy-orders"]);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(&first, &public, &v).unwrap();
    assert_eq!(data.header.kid.as_deref(), Some("ficus-1"));
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["scope"], "orders:read orders:write");
    assert!(data.claims.get("exp").is_some() && data.claims.get("iat").is_some());
    let (iat, exp) = (
        data.claims["iat"].as_u64().unwrap(),
        data.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    assert!(exp >= now() + 55, "the token expires too soon: exp {exp}");
    // The same caller within half the TTL: the token is reused, not re-signed.
    let again = internal_token(&send(&c, with_token(&f, &caller)).await.echoed());
    assert_eq!(again, first);
    // Another caller: its own token.
    let mut bob = good_claims();
    bob["sub"] = "bob".into();
    let other = internal_token(&send(&c, with_token(&f, &sign(&r, &bob))).await.echoed());
    let data = jsonwebtoken::decode::<serde_json::Value>(&other, &public, &v).unwrap();
    assert_eq!(data.claims["sub"], "bob");
    f.shutdown().await;
}

#[tokio::test]
async fn internal_hs256_jwt_goes_in_a_configured_header_and_bad_keys_are_config_errors() {
    std::env::set_var("FICUS_TEST_INTERNAL_SECRET", "an-internal-secret-of-32-bytes!!");
    let r = rsa("r1");
    let idp = Idp::start(&[&r]).await;
    let up = Upstream::echo().await;
    let provider = format!("algorithms: [RS256], jwks_url: '{}/jwks'", idp.upstream.url());
    let route = "jwt: corp, upstream_auth: { drop_token: true, jwt: { algorithm: HS256, secret_env: FICUS_TEST_INTERNAL_SECRET, \
                 issuer: ficus, audience: legacy, header: X-Internal-Token, copy_claims: [sub] } }";
    let f = Ficus::start(&config(&up.url(), &provider, route)).await;
    let e = send(&client(), with_token(&f, &sign(&r, &good_claims())))
        .await
        .echoed();
    assert!(!e.headers.contains_key("authorization"));
    let token = e.header("x-internal-token").unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.set_issuer(&["ficus"]);
    v.set_audience(&["legacy"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b"an-internal-secret-of-32-bytes!!"),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert!(data.claims.get("scope").is_none(), "only copy_claims are copied");
    // Default TTL: 60 s.
    assert_eq!(
        data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap(),
        60
    );
    f.shutdown().await;

    let err = Ficus::try_start(&config(
        &up.url(),
        &provider,
        "jwt: corp, upstream_auth: { jwt: { algorithm: ES256, key_file: missing.pem, issuer: f, audience: l } }",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("upstream_auth.jwt: cannot read"), "{err}");
    std::env::set_var("FICUS_TEST_LEGACY_BASIC", "svc-orders:s3cret");
    let err = Ficus::try_start(&config(
        &up.url(),
        &provider,
        "jwt: corp, upstream_auth: { basic_env: FICUS_TEST_LEGACY_BASIC, jwt: { algorithm: HS256, secret_env: FICUS_TEST_INTERNAL_SECRET, issuer: f, audience: l } }",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("both set Authorization"), "{err}");
}

#[tokio::test]
async fn static_keys_from_a_jwk_set_file_or_a_single_jwk_are_reloaded_with_the_config() {
    let (r, e, later) = (rsa("k-rsa"), ec("k-ec"), rsa("k-later"));
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.jwk.json");
    std::fs::write(&keys, serde_json::to_string(&jwks(&[&r, &e])).unwrap()).unwrap();
    let yaml = config(
        &up.url(),
        "algorithms: [RS256, ES256], jwk_file: keys.jwk.json",
        ROUTE,
    );
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let c = client();
    for s in [&r, &e] {
        assert_eq!(
            send(&c, with_token(&f, &sign(s, &good_claims()))).await.status,
            200
        );
    }
    let first_r = sign(&r, &good_claims());
    assert_eq!(send(&c, with_token(&f, &first_r)).await.status, 200);
    send(&c, with_token(&f, &sign(&later, &good_claims())))
        .await
        .assert_problem(401, "invalid-token");

    // The file now holds one JWK (no `kid`): after a reload only that key verifies, and a
    // token verified (and cached) under the removed key is refused.
    let mut single = Jwk::from_encoding_key(&later.enc, later.alg).unwrap();
    single.common.key_id = None;
    std::fs::write(&keys, serde_json::to_string(&single).unwrap()).unwrap();
    f.gw().reload("test").await.unwrap();
    assert_eq!(
        send(&c, with_token(&f, &sign(&later, &good_claims())))
            .await
            .status,
        200
    );
    send(&c, with_token(&f, &first_r))
        .await
        .assert_problem(401, "invalid-token");
    f.shutdown().await;

    // A JWK file without a key for the provider's algorithms is a config error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ec.json"),
        serde_json::to_string(&jwks(&[&e])).unwrap(),
    )
    .unwrap();
    let err = Ficus::start_in(
        dir,
        &config(&up.url(), "algorithms: [RS256], jwk_file: ec.json", ROUTE),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no key for the algorithms"), "{err}");
}

#[tokio::test]
async fn jwks_over_https_is_verified_against_the_configured_ca() {
    let r = rsa("r1");
    let set = serde_json::to_string(&jwks(&[&r])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "idp-ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let cert = ca.issue(dir.path(), "idp", &["127.0.0.1"]);
    let idp = Upstream::start_tls(
        move |_req: Request<Incoming>| {
            let body = set.clone();
            async move { Response::new(full(body)) }
        },
        upstream_tls(&cert, None),
    )
    .await;
    let up = Upstream::echo().await;
    let token = sign(&r, &good_claims());

    let provider = format!(
        "algorithms: [RS256], jwks_url: '{}/jwks', ca_file: idp-ca.pem",
        idp.https_url()
    );
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&other.cert.cert_path, other_dir.path().join("idp-ca.pem")).unwrap();
    let f = Ficus::start_in(dir, &config(&up.url(), &provider, ROUTE))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            send(&client(), with_token(&f, &token)).await.status == 200
        })
        .await,
        "the JWKS was never fetched over https"
    );
    f.shutdown().await;

    // A JWKS server whose certificate does not chain to `ca_file` is never trusted: the keys are
    // never loaded, so a token gets 503, not a pass.
    let f = Ficus::start_in(other_dir, &config(&up.url(), &provider, ROUTE))
        .await
        .unwrap();
    send(&client(), with_token(&f, &token))
        .await
        .assert_problem(503, "identity-unavailable");
    f.shutdown().await;
    assert_eq!(
        idp.hits(),
        1,
        "the untrusted handshake never reached the JWKS handler"
    );
}

/// The verified-token cache hits for tokens carrying a `kid` whatever kind of static key
/// verified them: a PEM key and a JWK-file key without a `kid` are both "anonymous" keys.
#[tokio::test]
async fn verified_tokens_are_served_from_the_cache_with_file_keys_and_a_kid() {
    let r = rsa("rotating-kid");
    let up = Upstream::echo().await;
    let mut anonymous = Jwk::from_encoding_key(&r.enc, r.alg).unwrap();
    anonymous.common.key_id = None;
    for provider in [
        "algorithms: [RS256], pem_file: idp.pem",
        "algorithms: [RS256], jwk_file: idp.jwk.json",
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("idp.pem"), &r.public_pem).unwrap();
        std::fs::write(
            dir.path().join("idp.jwk.json"),
            serde_json::to_string(&anonymous).unwrap(),
        )
        .unwrap();
        let f = Ficus::start_in(dir, &config(&up.url(), provider, ROUTE))
            .await
            .unwrap();
        let c = client();
        let token = sign(&r, &good_claims());
        for _ in 0..3 {
            let a = send(&c, with_token(&f, &token)).await;
            assert_eq!(a.status, 200, "{provider}: {}", a.text());
        }
        let m = get(&f.admin_url("/metrics")).await.text();
        let series = |r: &str| {
            metric(
                &m,
                &format!("ficus_jwt_cache_total{{provider=\"corp\",result=\"{r}\"}}"),
            )
        };
        assert_eq!(series("miss"), Some(1.0), "{provider}: {m}");
        assert_eq!(series("hit"), Some(2.0), "{provider}: {m}");
        f.shutdown().await;
    }
}

/// A body that sends its first bytes, then nothing ever again: a slow-loris IdP.
struct Stalled(bool);

impl hyper::body::Body for Stalled {
    type Data = bytes::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                br#"{"keys":["#,
            )))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_body_that_stalls_is_cut_off_by_the_fetch_timeout() {
    use http_body_util::BodyExt as _;
    let r = rsa("r1");
    let stall = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let set = serde_json::to_string(&jwks(&[&r])).unwrap();
    let s = stall.clone();
    let idp = Upstream::start(move |_req: Request<Incoming>| {
        let (stalled, set) = (s.load(Ordering::SeqCst), set.clone());
        async move {
            if stalled {
                let mut resp = Response::new(Stalled(false).boxed_unsync());
                resp.headers_mut()
                    .insert("content-length", "100000".parse().unwrap());
                resp
            } else {
                Response::new(full(set))
            }
        }
    })
    .await;
    let up = Upstream::echo().await;
    let provider = format!(
        "algorithms: [RS256], jwks_url: '{}/jwks', jwks_timeout: 300ms, unknown_kid_refetch: 100ms",
        idp.url()
    );
    let f = Ficus::start(&config(&up.url(), &provider, ROUTE)).await;
    let c = client();
    let token = sign(&r, &good_claims());
    // Never loaded and every body stalls: a prompt 503, not a request stuck behind the fetch
    // lock that the stalled start-up fetch holds.
    let started = std::time::Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(5), send(&c, with_token(&f, &token)))
        .await
        .expect("the request hung behind a stalled JWKS fetch");
    a.assert_problem(503, "identity-unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The IdP recovers: the keys load and the token passes.
    stall.store(false, Ordering::SeqCst);
    let p = f.gw().shared().snapshot.load().jwt_providers[0].clone();
    p.refresh().await.unwrap();
    assert_eq!(send(&c, with_token(&f, &token)).await.status, 200);

    // It stalls again: the refresh gives up within the timeout and the last good keys serve.
    stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), p.refresh())
        .await
        .expect("the refresh hung on a stalled body")
        .unwrap_err();
    assert!(err.contains("300ms"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut other = good_claims();
    other["sub"] = "bob".into();
    let b = send(&c, with_token(&f, &sign(&r, &other))).await;
    assert_eq!(b.status, 200, "{}", b.text());
    f.shutdown().await;
}

#[tokio::test]
async fn a_jwks_refresh_under_a_second_or_a_zero_fetch_timeout_is_a_config_error() {
    let up = Upstream::echo().await;
    for (keys, path) in [
        (
            "jwks_refresh: 0s",
            "identity.jwt.corp.jwks_refresh: must be at least 1s",
        ),
        (
            "jwks_refresh: 500ms",
            "identity.jwt.corp.jwks_refresh: must be at least 1s",
        ),
        (
            "jwks_timeout: 0s",
            "identity.jwt.corp.jwks_timeout: must be greater than zero",
        ),
    ] {
        let provider = format!("algorithms: [RS256], jwks_url: 'http://127.0.0.1:9/jwks', {keys}");
        let err = Ficus::try_start(&config(&up.url(), &provider, ROUTE))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(path), "{keys}: {err}");
    }
}
