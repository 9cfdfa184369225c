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
}

/// Returns the normal form of `path` (no query): unreserved percent-escapes decoded (other escapes
/// kept, upper-cased), `//` collapsed, `.` and `..` segments resolved, a trailing slash kept.
/// Already-normal paths, the common case, are returned borrowed without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `*` (OPTIONS) and authority-form (CONNECT) have no path to route on.
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes)? {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: decode escapes of unreserved characters; refuse escapes that change the structure.
    let mut decoded = String::with_capacity(path.len());
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
                _ if is_unreserved(v) => decoded.push(char::from(v)),
                _ => {
                    decoded.push('%');
                    decoded.push(char::from(HEX[usize::from(v >> 4)]));
                    decoded.push(char::from(HEX[usize::from(v & 0xf)]));
                }
            }
            i += 3;
        } else {
            decoded.push(char::from(b));
            i += 1;
        }
    }

    // Pass 2: segments (RFC 3986 §5.2.4 remove_dot_segments, but `..` above root is an error).
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => out.push(s),
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
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut seg_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
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
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/api/v1/users", "/a.b/c..d/.e"] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
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
