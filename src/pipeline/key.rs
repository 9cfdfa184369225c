//! Request keys: the one spelling of "which part of a request identifies it", shared by the
//! stages that key requests — consistent-hash balancing (`hash_on`), sticky migration splits
//! (`sticky`), rate limits (`key`) and the idempotency `scope`.
//!
//! A key is parsed once, when the config is compiled, and read from the request by one
//! extractor, from the facts the pipeline resolved once ([`KeyFacts`]). Each stage may refuse
//! sources that mean nothing for it, but none spells or reads them its own way.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use http::header::HeaderName;
use http::{HeaderMap, Uri};

use super::context::{cookie_value, query_value};
use super::RequestCtx;
use crate::identity::jwt::Claims;

/// Where one part of a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `client_ip`: the peer, or behind a trusted proxy the address it vouches for.
    ClientIp,
    /// `route`: the matched route's name.
    Route,
    /// `path`: the normalised request path.
    Path,
    /// `api_key`: the id of the verified API key.
    ApiKey,
    /// `client_cert`: the verified TLS client certificate's principal.
    ClientCert,
    /// `header:<name>`
    Header(HeaderName),
    /// `cookie:<name>`
    Cookie(String),
    /// `query:<name>`
    Query(String),
    /// `jwt.<claim>`: a claim of the verified token.
    Claim(String),
}

const SPELLINGS: &str = "client_ip, route, path, api_key, client_cert, header:<name>, cookie:<name>, \
                         query:<name> or jwt.<claim>";

/// A spelling that still loads but is no longer written, so `ficus check` can name the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldSpelling {
    /// The part's place in a list (`key[1]`); `None` for a single key.
    pub index: Option<usize>,
    pub old: String,
    pub new: String,
}

impl fmt::Display for OldSpelling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is the old spelling; write `{}`", self.old, self.new)
    }
}

impl KeySource {
    /// Parses one part; an old spelling parses too and is returned beside it.
    pub fn parse(s: &str) -> Result<(Self, Option<OldSpelling>), String> {
        let old = |new: &str| {
            Some(OldSpelling {
                index: None,
                old: s.to_string(),
                new: new.to_string(),
            })
        };
        let plain = match s {
            "client_ip" => Some((Self::ClientIp, None)),
            "route" => Some((Self::Route, None)),
            "path" => Some((Self::Path, None)),
            "api_key" => Some((Self::ApiKey, None)),
            "client_cert" => Some((Self::ClientCert, None)),
            "client-ip" => Some((Self::ClientIp, old("client_ip"))),
            "api-key" => Some((Self::ApiKey, old("api_key"))),
            "client-cert" => Some((Self::ClientCert, old("client_cert"))),
            _ => None,
        };
        if let Some(p) = plain {
            return Ok(p);
        }
        if let Some((claim, was)) = s
            .strip_prefix("jwt.")
            .map(|c| (c, None))
            .or_else(|| s.strip_prefix("claim.").map(|c| (c, old(&format!("jwt.{c}")))))
        {
            if claim.is_empty() {
                return Err(format!("`{s}` names no claim: write jwt.<claim>"));
            }
            return Ok((Self::Claim(claim.to_string()), was));
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!("`{s}` is not a key part: use {SPELLINGS}"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`{s}` names nothing after the colon"));
        }
        let source = match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("`{name}` is not a header name"))?,
            "cookie" => Self::Cookie(name.to_string()),
            "query" => Self::Query(name.to_string()),
            _ => return Err(format!("`{s}` is not a key part: use {SPELLINGS}")),
        };
        Ok((source, None))
    }

    /// The part's value in this request; `None` when the request lacks it (no such header,
    /// cookie, query parameter, claim or certificate). A header value that is not visible ASCII
    /// counts as absent, for every stage alike.
    pub fn extract<'a>(&self, f: &KeyFacts<'a>) -> Option<KeyValue<'a>> {
        Some(match self {
            Self::ClientIp => KeyValue::Ip(f.client),
            Self::Route => KeyValue::Text(Cow::Borrowed(f.route)),
            Self::Path => KeyValue::Text(Cow::Borrowed(f.path)),
            Self::ApiKey => KeyValue::Text(Cow::Owned(
                f.claims?.get_str(crate::identity::api_keys::KEY_ID_CLAIM)?,
            )),
            Self::ClientCert => KeyValue::Text(Cow::Borrowed(f.client_cert?)),
            Self::Header(h) => KeyValue::Text(Cow::Borrowed(f.headers.get(h)?.to_str().ok()?)),
            Self::Cookie(name) => KeyValue::Text(Cow::Borrowed(cookie_value(f.headers, name)?)),
            Self::Query(name) => KeyValue::Text(Cow::Borrowed(query_value(f.query, name)?)),
            Self::Claim(name) => KeyValue::Text(Cow::Owned(f.claims?.get_str(name)?)),
        })
    }

    /// Read from the verified identity: the route needs `identity` for it to be present.
    pub fn needs_identity(&self) -> bool {
        matches!(self, Self::Claim(_) | Self::ApiKey)
    }
}

/// One part's value. An address stays an address so it hashes as its octets (as it always has
/// on the hash ring and in rate-limit digests) and reads as text where text is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue<'a> {
    Ip(IpAddr),
    Text(Cow<'a, str>),
}

impl KeyValue<'_> {
    /// Calls `f` with the value's bytes: an address's octets, a text's UTF-8.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Self::Ip(IpAddr::V4(a)) => f(&a.octets()),
            Self::Ip(IpAddr::V6(a)) => f(&a.octets()),
            Self::Text(t) => f(t.as_bytes()),
        }
    }
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// What keys are read from: the facts [`RequestCtx`] resolved once, and the request's head.
pub struct KeyFacts<'a> {
    pub client: IpAddr,
    pub route: &'a str,
    /// The normalised path (or the path sent upstream, for the hash ring).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub claims: Option<&'a Claims>,
    /// The TLS client certificate's principal (first SAN, else subject).
    pub client_cert: Option<&'a str>,
}

impl<'a> KeyFacts<'a> {
    pub fn of(ctx: &'a RequestCtx, headers: &'a HeaderMap, uri: &'a Uri) -> Self {
        Self {
            client: ctx.client,
            route: ctx.route.as_ref().map_or("", |r| &*r.name),
            path: ctx.path(uri),
            query: uri.query(),
            headers,
            claims: ctx.claims.as_deref(),
            client_cert: ctx.client_cert_identity(),
        }
    }
}

/// A compiled key: one source, or several read in turn (a rate-limit key such as
/// `[jwt.sub, route]`). Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    parts: Vec<KeySource>,
}

/// A parsed key and the old spellings it was written with.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub key: RequestKey,
    pub old: Vec<OldSpelling>,
}

impl Parsed {
    /// `(key path, warning)` for each old spelling, `at` being where the key is written.
    pub fn old_spellings<'s>(&'s self, at: &'s str) -> impl Iterator<Item = (String, String)> + 's {
        self.old.iter().map(move |o| {
            let path = match o.index {
                Some(i) => format!("{at}[{i}]"),
                None => at.to_string(),
            };
            (path, o.to_string())
        })
    }

    /// Refuses, with `why`, a key with a part that `refused` matches: for the stages where
    /// such a part means nothing.
    pub fn refuse(self, refused: impl Fn(&KeySource) -> bool, why: &str) -> Result<Self, String> {
        match self.key.parts.iter().find(|p| refused(p)) {
            Some(p) => Err(format!("`{}` {why}", p.spelling())),
            None => Ok(self),
        }
    }
}

impl KeySource {
    /// The new spelling of the kind, for messages.
    fn spelling(&self) -> String {
        match self {
            Self::ClientIp => "client_ip".into(),
            Self::Route => "route".into(),
            Self::Path => "path".into(),
            Self::ApiKey => "api_key".into(),
            Self::ClientCert => "client_cert".into(),
            Self::Header(h) => format!("header:{h}"),
            Self::Cookie(c) => format!("cookie:{c}"),
            Self::Query(q) => format!("query:{q}"),
            Self::Claim(c) => format!("jwt.{c}"),
        }
    }
}

impl RequestKey {
    /// A key of one part (`hash_on`, `sticky`).
    pub fn parse(s: &str) -> Result<Parsed, String> {
        let (source, old) = KeySource::parse(s)?;
        Ok(Parsed {
            key: Self { parts: vec![source] },
            old: old.into_iter().collect(),
        })
    }

    /// A key of one or more parts (a rate-limit `key`, the idempotency `scope`).
    pub fn parse_list(parts: &[String]) -> Result<Parsed, String> {
        if parts.is_empty() {
            return Err("needs at least one part".into());
        }
        let mut key = Vec::with_capacity(parts.len());
        let mut old = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let (source, was) = KeySource::parse(p)?;
            key.push(source);
            old.extend(was.map(|o| OldSpelling { index: Some(i), ..o }));
        }
        Ok(Parsed {
            key: Self { parts: key },
            old,
        })
    }

    pub fn parts(&self) -> &[KeySource] {
        &self.parts
    }

    pub fn needs_identity(&self) -> bool {
        self.parts.iter().any(KeySource::needs_identity)
    }

    /// Calls `feed` with each part's bytes in order. `None` (having fed only some parts) when
    /// the request lacks a part. Values are read where they lie; only a claim is copied.
    pub fn feed(&self, f: &KeyFacts<'_>, mut feed: impl FnMut(&[u8])) -> Option<()> {
        for part in &self.parts {
            part.extract(f)?.with_bytes(&mut feed);
        }
        Some(())
    }

    /// The key's place on a hash ring. A one-part key hashes its bytes alone, so a ring position
    /// does not change with how the key is spelled; parts of a longer key are length-prefixed
    /// so that no value can shift into the next.
    pub fn hash(&self, f: &KeyFacts<'_>) -> Option<u64> {
        if let [only] = self.parts.as_slice() {
            return Some(only.extract(f)?.with_bytes(fnv1a));
        }
        let mut bytes = Vec::with_capacity(64);
        self.feed(f, |b| {
            bytes.extend_from_slice(&(b.len() as u64).to_le_bytes());
            bytes.extend_from_slice(b);
        })?;
        Some(fnv1a(&bytes))
    }

    /// The key as text, parts joined by `|` (sticky buckets and cohorts, idempotency scopes).
    pub fn text(&self, f: &KeyFacts<'_>) -> Option<String> {
        use std::fmt::Write as _;
        let mut key = String::with_capacity(48);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            let _ = write!(key, "{}", part.extract(f)?);
        }
        Some(key)
    }
}

/// FNV-1a with a murmur3 finaliser: stable across processes and versions, so every ficus
/// instance maps a key to the same endpoint. (Plain FNV leaves similar short keys clustered in
/// the high bits, which is where a ring position is decided.)
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a HeaderMap, claims: Option<&'a Claims>) -> KeyFacts<'a> {
        KeyFacts {
            client: "10.1.2.3".parse().unwrap(),
            route: "orders",
            path: "/api/orders/7",
            query: Some("x=1&tenant=t7"),
            headers,
            claims,
            client_cert: Some("spiffe://corp/svc"),
        }
    }

    fn text(s: &str, f: &KeyFacts<'_>) -> Option<String> {
        RequestKey::parse(s).unwrap().key.text(f)
    }

    #[test]
    fn every_source_is_read_from_the_request_facts() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "u1".parse().unwrap());
        h.insert(http::header::COOKIE, "a=1; session=s9; b=2".parse().unwrap());
        let claims = Claims(
            [
                ("sub".to_string(), serde_json::json!("alice")),
                (
                    crate::identity::api_keys::KEY_ID_CLAIM.to_string(),
                    serde_json::json!("k-42"),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let f = facts(&h, Some(&claims));
        assert_eq!(text("client_ip", &f).as_deref(), Some("10.1.2.3"));
        assert_eq!(text("route", &f).as_deref(), Some("orders"));
        assert_eq!(text("path", &f).as_deref(), Some("/api/orders/7"));
        assert_eq!(text("api_key", &f).as_deref(), Some("k-42"));
        assert_eq!(text("client_cert", &f).as_deref(), Some("spiffe://corp/svc"));
        assert_eq!(text("header:X-User", &f).as_deref(), Some("u1"));
        assert_eq!(text("cookie:session", &f).as_deref(), Some("s9"));
        assert_eq!(text("query:tenant", &f).as_deref(), Some("t7"));
        assert_eq!(text("jwt.sub", &f).as_deref(), Some("alice"));
        assert_eq!(text("header:x-missing", &f), None);
        assert_eq!(text("jwt.sub", &facts(&h, None)), None);
        let both = RequestKey::parse_list(&["jwt.sub".into(), "route".into()]).unwrap();
        assert_eq!(both.key.text(&f).as_deref(), Some("alice|orders"));
    }

    #[test]
    fn old_spellings_load_and_name_the_new_one() {
        let p = RequestKey::parse("client-ip").unwrap();
        assert_eq!(p.key.parts(), &[KeySource::ClientIp]);
        let warned: Vec<_> = p.old_spellings("routes[0].migration.sticky").collect();
        assert_eq!(
            warned,
            [(
                "routes[0].migration.sticky".to_string(),
                "`client-ip` is the old spelling; write `client_ip`".to_string()
            )]
        );
        let p = RequestKey::parse_list(&["route".into(), "api-key".into(), "claim.sub".into()]).unwrap();
        assert_eq!(
            p.key.parts(),
            &[
                KeySource::Route,
                KeySource::ApiKey,
                KeySource::Claim("sub".into())
            ]
        );
        let warned: Vec<_> = p.old_spellings("k").collect();
        assert_eq!(warned[0].0, "k[1]");
        assert_eq!(warned[1].1, "`claim.sub` is the old spelling; write `jwt.sub`");
        assert!(RequestKey::parse("client_cert").unwrap().old.is_empty());
        assert!(RequestKey::parse("client-cert").unwrap().old.len() == 1);
    }

    #[test]
    fn malformed_keys_are_explained() {
        let err = |s: &str| RequestKey::parse(s).unwrap_err();
        assert!(
            err("tenant").starts_with("`tenant` is not a key part"),
            "{}",
            err("tenant")
        );
        assert!(err("body:x").starts_with("`body:x` is not a key part"));
        assert!(err("jwt.").contains("names no claim"));
        assert!(err("jwt").starts_with("`jwt` is not a key part"));
        assert!(err("header:").contains("names nothing"));
        assert!(err("header:bad name").contains("is not a header name"));
        assert!(RequestKey::parse_list(&[]).is_err());
    }

    #[test]
    fn a_one_part_key_hashes_its_bytes_and_an_address_its_octets() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "u1".parse().unwrap());
        let f = facts(&h, None);
        let hash = |s: &str| RequestKey::parse(s).unwrap().key.hash(&f);
        assert_eq!(hash("header:x-user"), Some(fnv1a(b"u1")));
        assert_eq!(hash("client_ip"), Some(fnv1a(&[10, 1, 2, 3])));
        assert_eq!(hash("path"), Some(fnv1a(b"/api/orders/7")));
        let two = RequestKey::parse_list(&["header:x-user".into(), "route".into()]).unwrap();
        assert!(two.key.hash(&f).is_some());
        assert_ne!(two.key.hash(&f), hash("header:x-user"));
    }

    #[test]
    fn a_stage_can_refuse_a_source_by_name() {
        let refused = RequestKey::parse("route")
            .unwrap()
            .refuse(|s| *s == KeySource::Route, "would send a whole route one way")
            .unwrap_err();
        assert_eq!(refused, "`route` would send a whole route one way");
        assert!(RequestKey::parse("path")
            .unwrap()
            .refuse(|s| *s == KeySource::Route, "x")
            .is_ok());
    }
}
