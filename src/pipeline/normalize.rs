//! Path normalisation before routing, so that `/public/../admin`, `/public/%2e%2e/admin` and `//admin`
//! can reach nothing that `/admin` would not. What cannot be normalised safely is refused (400)
//! rather than guessed at: an upstream may decode differently from us.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
    #[error("the path holds an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSeparator,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a control character or an encoded NUL")]
    ControlChar,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("the path holds a ';' parameter, which servlet containers strip before routing")]
    PathParams,
}

/// Returns the normal form of `path` (no query): unreserved percent-escapes decoded (other escapes
/// kept, upper-cased), `//` collapsed, `.` and `..` segments resolved, a trailing slash kept.
/// Already-normal paths, the common case, are returned borrowed without allocating.
///
/// A `;` (a path parameter, as in `/a;jsessionid=1/b`) is refused unless `keep_params`; either
/// way a segment that is `.` or `..` before its `;` is a dot segment, because a servlet container
/// reads `/a/..;x/admin` as `/admin`.
pub fn normalize_path(path: &str, keep_params: bool) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `*` (OPTIONS) and authority-form (CONNECT) have no path to route on.
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes, keep_params)? {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: decode escapes of unreserved characters; refuse escapes that change the structure.
    // Bytes, not chars: a non-ASCII byte is part of a UTF-8 sequence and is copied as it is.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes
                .get(i + 1)
                .and_then(|c| hex(*c))
                .ok_or(PathError::BadEscape)?;
            let lo = bytes
                .get(i + 2)
                .and_then(|c| hex(*c))
                .ok_or(PathError::BadEscape)?;
            let v = hi << 4 | lo;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
                _ if is_unreserved(v) => decoded.push(v),
                _ => decoded.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xf)]]),
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // Only ASCII was decoded, and the rest is the input's own UTF-8.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadEscape)?;

    // Pass 2: segments (RFC 3986 §5.2.4 remove_dot_segments, but `..` above root is an error).
    let last = decoded.rsplit('/').next().map_or("", bare);
    let trailing = decoded.ends_with('/') || last == "." || last == "..";
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match bare(seg) {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => out.push(seg),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing || result.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// A segment without its `;` parameters.
fn bare(seg: &str) -> &str {
    seg.split_once(';').map_or(seg, |(s, _)| s)
}

/// The path as a servlet container matches it: each segment without its `;` parameters.
/// Routing uses this when parameters are kept, so `/admin;x/users` is matched as `/admin/users`.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(bare(seg));
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// True when the path needs no rewriting. Errors on bytes that are refused wherever they appear.
fn is_normal(bytes: &[u8], keep_params: bool) -> Result<bool, PathError> {
    let mut normal = true;
    let mut seg_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            // Kept: the slow path resolves `..;x` and `.;x` as dot segments.
            b';' if keep_params => normal = false,
            b';' => return Err(PathError::PathParams),
            0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
            b'%' => normal = false,
            b'/' => {
                if i > 0 && matches!(&bytes[seg_start..i], b"" | b"." | b"..") {
                    normal = false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
    }
    if seg_start > 0 && matches!(&bytes[seg_start..], b"." | b"..") {
        normal = false;
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p, false).map(Cow::into_owned)
    }

    fn keep(p: &str) -> Result<String, PathError> {
        normalize_path(p, true).map(Cow::into_owned)
    }

    #[test]
    fn path_parameters_are_refused_by_default() {
        assert_eq!(n("/admin;x/users"), Err(PathError::PathParams));
        assert_eq!(n("/acc/..;/admin"), Err(PathError::PathParams));
        assert_eq!(n("/a;jsessionid=1"), Err(PathError::PathParams));
        // An encoded `;` is data, not a parameter: servlet containers decode after stripping.
        assert_eq!(n("/a%3Bb").unwrap(), "/a%3Bb");
    }

    #[test]
    fn kept_path_parameters_still_resolve_dot_segments() {
        assert_eq!(keep("/acc/..;/admin").unwrap(), "/admin");
        assert_eq!(keep("/acc/..;x=1/admin").unwrap(), "/admin");
        assert_eq!(keep("/acc/.;x/admin").unwrap(), "/acc/admin");
        assert_eq!(keep("/a/b/..;").unwrap(), "/a/");
        assert_eq!(keep("/..;/etc"), Err(PathError::AboveRoot));
        assert_eq!(keep("/admin;x/users").unwrap(), "/admin;x/users");
        assert_eq!(without_params("/admin;x/users;y=2"), "/admin/users");
        assert!(matches!(without_params("/admin/users"), Cow::Borrowed(_)));
    }

    #[test]
    fn non_ascii_bytes_survive_a_rewrite_unchanged() {
        // A rewrite (here for `//`) must not turn UTF-8 bytes into Latin-1 characters.
        assert_eq!(n("//caf\u{e9}/x").unwrap(), "/caf\u{e9}/x");
        assert_eq!(n("/\u{65e5}\u{672c}/./x").unwrap(), "/\u{65e5}\u{672c}/x");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/api/v1/users", "/a.b/c..d/.e"] {
            assert!(matches!(normalize_path(p, false), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn traversal_attempts_normalise_to_the_target() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/./admin/.").unwrap(), "/admin/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00b"), Err(PathError::ControlChar));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn reserved_escapes_are_kept_upper_cased() {
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }
}
