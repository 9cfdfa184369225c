//! Writes an RSA and an EC key pair's JWKS (`jwks.json`), the RSA public key in PEM
//! (`rs256-public.pem`) and one long-lived token for each (`rs256.token`, `es256.token`, both
//! with a `kid`) into a directory, for `loadtest/identity.sh`.
//!
//! `cargo run --release --example mint_token -- /tmp/dir`

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let keys = [
        (
            "rs",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes())?,
            "rs256.token",
        ),
        (
            "ec",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes())?,
            "es256.token",
        ),
    ];
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 24 * 3600;
    let claims =
        serde_json::json!({ "iss": "https://idp.bench/", "aud": "bench", "sub": "bench-user", "exp": exp });
    // A signing key for ficus's own internal JWT towards legacy (loadtest/identity.sh).
    std::fs::write(dir.join("internal-es256.pem"), ec.serialize_pem())?;
    // The same RSA key as a static file key (`pem_file`), for the file-key cache case.
    std::fs::write(dir.join("rs256-public.pem"), rsa.public_key_pem())?;
    let mut set = JwkSet { keys: Vec::new() };
    for (kid, alg, key, file) in &keys {
        let mut jwk = Jwk::from_encoding_key(key, *alg)?;
        jwk.common.key_id = Some((*kid).to_string());
        set.keys.push(jwk);
        let mut h = Header::new(*alg);
        h.kid = Some((*kid).to_string());
        std::fs::write(dir.join(file), jsonwebtoken::encode(&h, &claims, key)?)?;
    }
    std::fs::write(dir.join("jwks.json"), serde_json::to_string(&set)?)?;
    println!(
        "wrote jwks.json, rs256-public.pem, rs256.token, es256.token to {}",
        dir.display()
    );
    Ok(())
}
