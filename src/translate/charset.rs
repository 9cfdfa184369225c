//! Character sets: legacy ISO-8859-1 bodies are read as UTF-8, and a Content-Type that named
//! the old charset says UTF-8 afterwards.

use std::borrow::Cow;

use http::HeaderValue;

use super::TranslateError;

fn charset(ct: &str) -> Option<&str> {
    ct.split(';')
        .skip(1)
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .map(|c| c.trim_matches('"'))
        .next()
}

fn is_latin1(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "l1" | "windows-1252" | "cp1252"
    )
}

/// Legacy bodies declared ISO-8859-1 (in the Content-Type or the XML declaration) become UTF-8.
pub(super) fn to_utf8<'a>(body: &'a [u8], ct: &str) -> Result<Cow<'a, str>, TranslateError> {
    let declared = charset(ct)
        .map(str::to_string)
        .or_else(|| xml_decl_encoding(body));
    match declared {
        Some(cs) if is_latin1(&cs) => {
            let s: String = body.iter().map(|b| char::from(*b)).collect();
            // The declaration must no longer say latin-1 once the text is UTF-8.
            Ok(Cow::Owned(match s.find("?>") {
                Some(end) if s.starts_with("<?xml") => {
                    let decl = &s[..end];
                    let fixed = decl.replace(&cs, "UTF-8");
                    format!("{fixed}{}", &s[end..])
                }
                _ => s,
            }))
        }
        _ => std::str::from_utf8(body)
            .map(Cow::Borrowed)
            .map_err(|e| TranslateError::Malformed {
                format: "text",
                reason: format!("not UTF-8: {e}"),
            }),
    }
}

fn xml_decl_encoding(body: &[u8]) -> Option<String> {
    let head = body.get(..body.len().min(100))?;
    let head = std::str::from_utf8(head).ok().or_else(|| {
        // A latin-1 byte inside the first 100 bytes: look at the ASCII part only.
        let end = head.iter().position(|b| !b.is_ascii()).unwrap_or(head.len());
        std::str::from_utf8(&head[..end]).ok()
    })?;
    if !head.starts_with("<?xml") {
        return None;
    }
    let decl = &head[..head.find("?>")?];
    let at = decl.find("encoding=")? + "encoding=".len();
    let quote = decl[at..].chars().next()?;
    let rest = &decl[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

pub(super) fn utf8_content_type(in_ct: &str) -> HeaderValue {
    let base = in_ct.split(';').next().unwrap_or("").trim();
    let base = if base.is_empty() {
        "application/octet-stream"
    } else {
        base
    };
    let v = if charset(in_ct).is_some() || base.starts_with("text/") || base.ends_with("xml") {
        format!("{base}; charset=utf-8")
    } else {
        base.to_string()
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}
