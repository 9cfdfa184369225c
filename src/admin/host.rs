//! Which `Host` the admin API answers: DNS-rebinding protection.

use http::{header, Request};

/// DNS rebinding: a page on `evil.example` re-points its name at 127.0.0.1 and the browser lets
/// it read this API as same-origin, but the request still says `Host: evil.example`. An IP
/// literal, `localhost` or a configured name cannot be an attacker's domain. A request with no
/// host at all (HTTP/1.0) comes from no browser and passes; two Host headers never do.
pub fn host_allowed<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    if let Some(a) = req.uri().authority() {
        if !authority_allowed(a.as_str(), allowed) {
            return false;
        }
    }
    first.is_none_or(|h| h.to_str().is_ok_and(|h| authority_allowed(h, allowed)))
}

fn authority_allowed(value: &str, allowed: &[String]) -> bool {
    let Ok(auth) = value.parse::<http::uri::Authority>() else {
        return false;
    };
    if auth.as_str().contains('@') {
        return false;
    }
    let host = auth.host();
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    // Dotted quads only: `2130706433` or `0x7f.1` are names to a browser, not addresses.
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
}

/// An `admin.allowed_hosts` entry: a DNS name, without scheme or port.
pub fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_allowed_names_are_admin_hosts() {
        let allowed = ["admin.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "[::1]:9901",
            "[::1]",
            "LOCALHOST:1",
            "Admin.Internal:80",
        ] {
            assert!(authority_allowed(ok, &allowed), "{ok}");
        }
        for no in [
            "evil.example",
            "localhost.evil.example",
            "admin.internal.evil.example",
            "2130706433",
            "0x7f.0.0.1",
            "127.1",
            "user@127.0.0.1",
            "[::1",
            "",
        ] {
            assert!(!authority_allowed(no, &allowed), "{no}");
        }
        assert!(valid_host_name("admin.internal"));
        for bad in ["", "a..b", "admin:9901", "http://admin", "a b", "é.example"] {
            assert!(!valid_host_name(bad), "{bad}");
        }
    }
}
