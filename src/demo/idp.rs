//! The demo identity provider. An ES256 key is generated when `ficus demo` starts and lives only
//! in that process's memory: the public half is served as a JWKS (which the demo's JWT provider
//! fetches like any IdP's), and `ficus demo token` asks the running demo to sign a token over
//! loopback (`POST /mint`). Nothing is written to disk, so no demo key can be committed or left
//! behind, and a token is accepted exactly by the demo that minted it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;

use super::DEMO_AUDIENCE;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
const MAX_TTL: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum DemoIdpError {
    #[error("cannot generate the demo key: {0}")]
    Key(String),
    #[error("cannot bind the demo identity provider on {addr}: {source} (pick another with `ficus demo --idp ADDR`)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no demo is answering on {addr} (start it with `ficus demo`; a demo started with `--idp ADDR` needs `ficus demo token --idp ADDR`): {why}")]
    NotRunning { addr: SocketAddr, why: String },
    #[error("the demo refused to mint a token: {0}")]
    Refused(String),
}

struct DemoKey {
    /// `http://<the IdP's address>/`, as the demo config's `identity.jwt.demo.issuer` says.
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    jwks: Bytes,
}

fn generate(issuer: String) -> Result<DemoKey, DemoIdpError> {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .map_err(|e| DemoIdpError::Key(e.to_string()))?;
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let kid = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut jwk =
        Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|e| DemoIdpError::Key(e.to_string()))?;
    jwk.common.key_id = Some(kid.clone());
    let jwks =
        serde_json::to_vec(&JwkSet { keys: vec![jwk] }).map_err(|e| DemoIdpError::Key(e.to_string()))?;
    Ok(DemoKey {
        issuer,
        kid,
        encoding,
        jwks: Bytes::from(jwks),
    })
}

/// Starts the demo IdP on `addr` (loopback; port 0 picks one); it runs until the process exits.
/// Its issuer is `http://<bound address>/`.
pub async fn spawn_idp(addr: SocketAddr) -> Result<SocketAddr, DemoIdpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DemoIdpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DemoIdpError::Bind { addr, source })?;
    let key = Arc::new(generate(format!("http://{local}/"))?);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let key = key.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let key = key.clone();
                    async move { Ok::<_, Infallible>(serve(&key, peer, req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn serve(key: &DemoKey, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, JWKS_PATH) => {
            let mut r = reply(StatusCode::OK, "application/json", key.jwks.clone());
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            r
        }
        // Minting is for this machine only, even if someone binds the demo elsewhere.
        (&Method::POST, "/mint") if peer.ip().is_loopback() => match mint(key, req.uri().query()) {
            Ok(token) => reply(StatusCode::OK, "text/plain", token),
            Err(why) => reply(StatusCode::BAD_REQUEST, "text/plain", why),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn mint(key: &DemoKey, query: Option<&str>) -> Result<String, String> {
    let (mut sub, mut scope, mut ttl) = (None, String::new(), 3600u64);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "sub" => sub = Some(v.into_owned()),
            "scope" => scope = v.into_owned(),
            "ttl" => ttl = v.parse().map_err(|_| "ttl must be whole seconds".to_string())?,
            _ => return Err(format!("unknown parameter `{k}`")),
        }
    }
    let sub = sub
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or("sub is required")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "iss": key.issuer,
        "aud": DEMO_AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": now,
        "exp": now + ttl.clamp(1, MAX_TTL),
    });
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, &claims, &key.encoding).map_err(|e| e.to_string())
}

/// What `ficus demo token` does: asks the demo whose IdP listens on `idp` to mint a token.
pub async fn request_token(
    idp: SocketAddr,
    sub: &str,
    scope: &str,
    ttl: Duration,
) -> Result<String, DemoIdpError> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("sub", sub)
        .append_pair("scope", scope)
        .append_pair("ttl", &ttl.as_secs().to_string())
        .finish();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{idp}/mint?{query}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| DemoIdpError::Refused(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| DemoIdpError::NotRunning {
            addr: idp,
            why: "no answer within 5 s".into(),
        })?
        .map_err(|e| DemoIdpError::NotRunning {
            addr: idp,
            why: e.to_string(),
        })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| DemoIdpError::NotRunning {
            addr: idp,
            why: e.to_string(),
        })?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if !status.is_success() {
        return Err(DemoIdpError::Refused(text));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::super::DEMO_ISSUER;
    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_served_jwks_and_carry_the_claims() {
        let key = generate(DEMO_ISSUER.to_string()).unwrap();
        let token = mint(&key, Some("sub=alice&scope=orders%3Aread&ttl=60")).unwrap();
        let set: JwkSet = serde_json::from_slice(&key.jwks).unwrap();
        let jwk = set.find(&key.kid).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_issuer(&[DEMO_ISSUER]);
        v.set_audience(&[DEMO_AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["scope"], "orders:read");
        let ttl = data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap();
        assert_eq!(ttl, 60);
    }

    #[test]
    fn mint_refuses_a_missing_sub_and_unknown_parameters() {
        let key = generate(DEMO_ISSUER.to_string()).unwrap();
        assert!(mint(&key, Some("scope=x")).is_err());
        assert!(mint(&key, Some("sub=a&admin=true")).is_err());
        assert!(mint(&key, Some("sub=a&ttl=soon")).is_err());
    }

    #[test]
    fn each_start_has_its_own_key() {
        assert_ne!(
            generate(DEMO_ISSUER.to_string()).unwrap().jwks,
            generate(DEMO_ISSUER.to_string()).unwrap().jwks
        );
    }
}
