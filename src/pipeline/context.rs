//! Stage 2: request context. Request id, W3C trace context, hop-by-hop removal and the
//! `Forwarded` / `X-Forwarded-*` headers, with client-supplied copies trusted only from
//! configured proxies.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, FORWARDED, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Only meaningful with `Upgrade: h2c` (RFC 7540 §3.2.1), which ficus never forwards.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// An incoming id is kept only if it is short and made of safe characters, so that it can be
/// logged and echoed without escaping.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

pub fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `version-traceid-parentid-flags`, version 00, lower-case hex, ids not all zero (W3C Trace Context).
pub fn valid_traceparent(v: &[u8]) -> bool {
    if v.len() != 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    version == b"00"
        && lower_hex(trace)
        && lower_hex(parent)
        && lower_hex(flags)
        && trace.iter().any(|&b| b != b'0')
        && parent.iter().any(|&b| b != b'0')
}

/// Written into a stack buffer from one fast generator: two UUIDs and a `format!` per request
/// showed in profiles of the plain route, and a trace id needs to be unique, not secret. The
/// ids are drawn as 64-bit words and written a byte at a time (a `u128` drawn from a range and
/// shifted a digit at a time cost about 450 instructions per request).
pub fn new_traceparent() -> HeaderValue {
    let (hi, mut lo, parent) = (fastrand::u64(..), fastrand::u64(..), fastrand::u64(1..));
    if hi == 0 && lo == 0 {
        lo = 1; // an all-zero trace id is invalid
    }
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    write_hex(&mut buf[3..19], hi);
    write_hex(&mut buf[19..35], lo);
    write_hex(&mut buf[36..52], parent);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `v` as 16 lower-case hex digits into `dst` (16 bytes).
fn write_hex(dst: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in dst.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// True for a `Connection: upgrade` request whose every `Upgrade` protocol is in `allowed`
/// (names compared case-insensitively, versions ignored: `websocket`, `WebSocket/13`). Anything
/// else is not an upgrade for ficus: its `Upgrade` header is removed and the request is served as
/// a plain one, so `h2c` can never open a tunnel past routing, identity and rate limits.
pub fn is_allowed_upgrade(h: &HeaderMap, allowed: &[String]) -> bool {
    if !h.contains_key(UPGRADE) || !connection_tokens(h).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return false;
    }
    let mut any = false;
    for proto in h
        .get_all(UPGRADE)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let name = proto.split('/').next().unwrap_or("");
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return false;
        }
        any = true;
    }
    any
}

/// Split as bytes: a line with a non-ASCII byte somewhere still names the headers in its other
/// tokens (dropping such a line whole let `Connection: x-secret, \xff` keep `x-secret`).
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    h.get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and every header it names,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive so that the upgrade can be forwarded.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names says which are present; each removal below is a hashed lookup
    // (about 130 instructions by callgrind), and most answers carry one of these at most
    // (`Connection: keep-alive` from an nginx upstream), most requests none.
    let mut present = 0u8;
    let mut proxy = false;
    for name in h.keys() {
        match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(i) => present |= 1 << i,
            None => proxy |= name.as_str().starts_with("proxy-"),
        }
    }
    if present == 0 && !proxy {
        return;
    }
    let has = |hop: &HeaderName| {
        HOP_BY_HOP
            .iter()
            .position(|x| x == hop)
            .is_some_and(|i| present & (1 << i) != 0)
    };
    if has(&CONNECTION) {
        // A token naming one of the fixed hop-by-hop headers (`keep-alive`, the usual one) is
        // removed below by its presence bit: no name to parse, no hashed removal of a header
        // that is not there. A value that is such a name alone is not even split.
        let is_fixed = |t: &[u8]| {
            HOP_BY_HOP
                .iter()
                .any(|hop| t.eq_ignore_ascii_case(hop.as_str().as_bytes()))
        };
        if !h.get_all(CONNECTION).iter().all(|v| is_fixed(v.as_bytes())) {
            let named: Vec<HeaderName> = connection_tokens(h)
                .filter(|t| !is_fixed(t))
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .collect();
            for n in named {
                // Never let a client delete what identifies the request end to end.
                if n != http::header::HOST {
                    h.remove(n);
                }
            }
        }
        h.remove(CONNECTION);
    }
    for hop in [&KEEP_ALIVE, &TE, &TRAILER, &TRANSFER_ENCODING, &HTTP2_SETTINGS] {
        if has(hop) {
            h.remove(hop);
        }
    }
    if has(&UPGRADE) {
        // `Connection` may have named it, and removed it, already.
        if keep_upgrade && h.contains_key(UPGRADE) {
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            h.remove(UPGRADE);
        }
    }
    if proxy {
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for k in names {
            h.remove(k);
        }
    }
}

/// The fixed hop-by-hop names; `Proxy-*` and what `Connection` names come on top.
static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    HTTP2_SETTINGS,
    UPGRADE,
];

pub struct ForwardedInfo<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value ([`ip_value`]), made once per connection.
    pub peer_value: &'a HeaderValue,
    pub proto: &'static str,
    /// The validated request host, as the request carried it.
    pub host: Option<&'a HeaderValue>,
}

/// An address as a header value.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut text = IpText::default();
    // An address's text is digits, dots, colons and hex letters.
    HeaderValue::from_str(text.of(ip)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's address: the peer, or, when the peer is one of our trusted proxies, the first
/// `X-Forwarded-For` address (right to left) that they did not add.
pub fn client_address(h: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    if is_trusted(&peer) {
        let chain: Vec<IpAddr> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        for ip in chain.iter().rev() {
            client = *ip;
            if !is_trusted(ip) {
                break;
            }
        }
    }
    client
}

/// Appends this hop to `Forwarded` and `X-Forwarded-For`, and sets `X-Forwarded-Proto/-Host`.
/// A peer outside `trusted` cannot speak for anyone else: its copies are dropped first (the
/// trust boundary removed them already; this keeps the function safe on its own).
pub fn apply_forwarded(h: &mut HeaderMap, info: &ForwardedInfo<'_>, trusted: &[IpNet]) {
    let forwarded = [
        &FORWARDED,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
    ];
    let from_proxy = trusted.iter().any(|n| n.contains(&info.peer));
    // Look before removing: a client that sends none of them (nearly every one) costs no
    // hashed lookups.
    if !from_proxy && h.keys().any(|k| forwarded.contains(&k)) {
        for name in forwarded {
            h.remove(name);
        }
    }
    // Made of an address's text: always a valid string.
    let peer = info.peer_value.to_str().unwrap_or_default();

    // Without a trusted proxy there is nothing to append to: its copies were just removed.
    let existing = |h: &HeaderMap, name: &HeaderName| if from_proxy { join_existing(h, name) } else { None };
    match existing(h, &X_FORWARDED_FOR) {
        Some(prev) => set(h, X_FORWARDED_FOR, [prev.as_str(), ", ", peer].concat()),
        // The connection's value, shared: no text to write or check per request.
        None => {
            h.insert(X_FORWARDED_FOR, info.peer_value.clone());
        }
    }

    // RFC 7239 §6: an IPv6 node is quoted and bracketed.
    let (open, close) = match info.peer {
        IpAddr::V4(_) => ("", ""),
        IpAddr::V6(_) => ("\"[", "]\""),
    };
    // `to_str` admits visible ASCII only: the host `X-Forwarded-Host` may carry.
    let host_text = info.host.and_then(|v| v.to_str().ok());
    let host = host_text.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    let prev = existing(h, &FORWARDED);
    let (prev, sep) = prev.as_deref().map_or(("", ""), |p| (p, ", "));
    let (h1, h2, h3) = host.map_or(("", "", ""), |h| (";host=\"", h, "\""));
    // Concatenated at their exact length: the header value then takes the buffer over as is.
    let fwd = [
        prev, sep, "for=", open, peer, close, ";proto=", info.proto, h1, h2, h3,
    ]
    .concat();
    set(h, FORWARDED, fwd);

    // A trusted proxy's view of the original scheme and host wins over ours.
    if !from_proxy || !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    }
    if !from_proxy || !h.contains_key(X_FORWARDED_HOST) {
        // The request's own value, shared rather than copied.
        if let (Some(v), Some(_)) = (info.host, host_text) {
            h.insert(X_FORWARDED_HOST, v.clone());
        }
    }
}

/// An address as text, written without `fmt`: an IPv4 address, the usual case, through the
/// formatting machinery costs about a thousand instructions. Written once per connection
/// ([`ip_value`]), which for clients that open a connection per request is once per request.
#[derive(Default)]
struct IpText {
    buf: [u8; 15],
    v6: String,
}

impl IpText {
    fn of(&mut self, ip: IpAddr) -> &str {
        match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf[n] = b'.';
                        n += 1;
                    }
                    let digits = [octet / 100, octet / 10 % 10, octet % 10];
                    let skip = if octet >= 100 {
                        0
                    } else if octet >= 10 {
                        1
                    } else {
                        2
                    };
                    for d in &digits[skip..] {
                        self.buf[n] = b'0' + d;
                        n += 1;
                    }
                }
                std::str::from_utf8(&self.buf[..n]).unwrap_or_default()
            }
            IpAddr::V6(v6) => {
                self.v6 = v6.to_string();
                &self.v6
            }
        }
    }
}

/// Joins several `Cookie` fields into one, separated by `; ` (RFC 9113 §8.2.3), as HTTP/2
/// clients may send them split and an HTTP/1.1 server expects one line.
pub fn join_cookies(h: &mut HeaderMap) {
    use http::header::{Entry, COOKIE};
    if let Entry::Occupied(mut e) = h.entry(COOKIE) {
        let mut values = e.iter();
        let first = values.next();
        if values.next().is_none() {
            return;
        }
        let mut joined = Vec::with_capacity(first.map_or(0, |v| v.len()) * 2);
        for v in e.iter() {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
            e.insert(v);
        }
    }
}

fn join_existing(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn set(h: &mut HeaderMap, name: HeaderName, value: String) {
    if let Some(v) = owned_value(value) {
        h.insert(name, v);
    }
}

/// A header value that takes over the string's buffer instead of copying it (one allocation per
/// header on the hot path, not two).
fn owned_value(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// The side of a migration route a request is served by (legacy for routes without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    Modern,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Self::Legacy => Self::Modern,
            Self::Modern => Self::Legacy,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Modern => "modern",
        }
    }
}

/// The raw value of query parameter `name` (`""` for a bare `?name`), first occurrence.
pub fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name` across all `Cookie` headers, first occurrence.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(new_request_id().as_bytes()));
    }

    #[test]
    fn traceparent_is_validated_and_generated() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(b"garbage"));
        let made: std::collections::HashSet<HeaderValue> = (0..1000).map(|_| new_traceparent()).collect();
        assert_eq!(made.len(), 1000, "generated trace contexts repeat");
        assert!(made.iter().all(|v| valid_traceparent(v.as_bytes())));
    }

    #[test]
    fn ids_are_written_as_sixteen_lower_case_hex_digits() {
        for v in [0u64, 1, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, u64::MAX] {
            let mut buf = [0u8; 16];
            write_hex(&mut buf, v);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), format!("{v:016x}"));
        }
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let mut text = IpText::default();
        for a in [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255] {
            for b in [0u8, 7, 10, 255] {
                let ip = IpAddr::from([a, b, 255 - a, 9]);
                assert_eq!(text.of(ip), ip.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::ffff:1.2.3.4".parse().unwrap();
        assert_eq!(text.of(v6), v6.to_string());
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn a_second_connection_line_still_names_headers_to_remove() {
        // The first line alone names only a fixed hop-by-hop header; the second names another.
        let mut h = headers(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn a_connection_line_with_a_non_ascii_byte_still_names_its_other_tokens() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"x-secret, \xff").unwrap());
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_upgrade_without_an_allowed_upgrade_removes_both() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn an_ipv6_peer_is_quoted_and_bracketed_in_forwarded() {
        let peer: IpAddr = "2001:db8::1".parse().unwrap();
        let peer_value = ip_value(peer);
        let info = ForwardedInfo {
            peer,
            peer_value: &peer_value,
            proto: "https",
            host: None,
        };
        let mut h = HeaderMap::new();
        apply_forwarded(&mut h, &info, &[]);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
    }

    #[test]
    fn upgrade_survives_on_an_upgrade() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_allowed_upgrade(&h, &["websocket".into()]));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn only_allowed_upgrade_protocols_count_as_upgrades() {
        let ws = vec!["websocket".to_string()];
        let h = headers(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")]);
        assert!(!is_allowed_upgrade(&h, &ws));
        let h = headers(&[("connection", "upgrade"), ("upgrade", "WebSocket/13")]);
        assert!(is_allowed_upgrade(&h, &ws));
        let h = headers(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]);
        assert!(!is_allowed_upgrade(&h, &ws));
        let h = headers(&[("upgrade", "websocket")]);
        assert!(!is_allowed_upgrade(&h, &ws), "no Connection: upgrade");
        assert!(!is_allowed_upgrade(
            &headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            &[]
        ));
    }

    #[test]
    fn split_h2_cookies_are_joined_for_http1() {
        let mut h = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut one = headers(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_headers() {
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let (peer_value, host) = (ip_value(peer), HeaderValue::from_static("a.test"));
        let info = ForwardedInfo {
            peer,
            peer_value: &peer_value,
            proto: "http",
            host: Some(&host),
        };
        apply_forwarded(&mut h, &info, &[]);
        assert_eq!(h["x-forwarded-for"], "10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["forwarded"], "for=10.0.0.5;proto=http;host=\"a.test\"");
    }

    #[test]
    fn trusted_proxy_chain_is_appended_to() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let peer_value = ip_value(peer);
        let info = ForwardedInfo {
            peer,
            peer_value: &peer_value,
            proto: "http",
            host: None,
        };
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_address(&h, info.peer, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        apply_forwarded(&mut h, &info, &trusted);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7, 10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
