//! Character sets: a body in a legacy charset is decoded to UTF-8 with `encoding_rs` (the WHATWG
//! Encoding Standard, the tables browsers use), and whatever named the old charset says UTF-8
//! afterwards.
//!
//! The charset comes from, in order (RFC 7303 §3): a byte-order mark, the `charset` parameter of
//! the Content-Type, the XML declaration, else UTF-8. Sniffing reads bytes only: a declaration
//! holds whatever a client sent, so nothing is sliced as text before it is known to be text.

use std::borrow::Cow;
use std::ops::Range;

use encoding_rs::{Encoding, UTF_16BE, UTF_16LE, UTF_8, WINDOWS_1252};
use http::HeaderValue;

use super::TranslateError;

/// How far into a body the end of an XML declaration is looked for.
const DECL_SCAN: usize = 1024;

/// The `charset` parameter of a media type, without quotes.
pub fn content_type_charset(ct: &str) -> Option<&str> {
    ct.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// Decodes a body to UTF-8 text. A body already in UTF-8 is borrowed, not copied. Bytes that are
/// not valid in the charset are an error rather than U+FFFD: the backend would not have meant them.
pub fn to_utf8<'a>(body: &'a [u8], ct: &str) -> Result<Cow<'a, str>, TranslateError> {
    let (encoding, bom) = sniff(body, ct)?;
    let rest = body.get(bom..).unwrap_or_default();
    let text = encoding
        .decode_without_bom_handling_and_without_replacement(rest)
        .ok_or_else(|| TranslateError::Malformed {
            format: "text",
            reason: format!("not valid {}", encoding.name()),
        })?;
    Ok(relabel_declaration(text))
}

/// The encoding to decode with, and the length of the byte-order mark to skip.
fn sniff(body: &[u8], ct: &str) -> Result<(&'static Encoding, usize), TranslateError> {
    if let Some((enc, bom)) = Encoding::for_bom(body) {
        return Ok((enc, bom));
    }
    if let Some(label) = content_type_charset(ct) {
        return Ok((lookup(label.as_bytes())?, 0));
    }
    match xml_decl_encoding(body) {
        Ok(Some(r)) => {
            let enc = lookup(body.get(r).unwrap_or_default())?;
            // A declaration readable as ASCII cannot be UTF-16 whatever it says (WHATWG's rule
            // too): the bytes are ASCII-compatible.
            Ok((
                if enc == UTF_16LE || enc == UTF_16BE {
                    UTF_8
                } else {
                    enc
                },
                0,
            ))
        }
        Ok(None) => Ok((UTF_8, 0)),
        Err(reason) => Err(TranslateError::Malformed {
            format: "XML",
            reason,
        }),
    }
}

/// A charset label to its encoding. The WHATWG labels, which read `ISO-8859-1` and `latin1` as
/// windows-1252 (what such legacy text really is), plus `latin-1`, which ficus always accepted.
/// Labels of the "replacement" encoding (ISO-2022-KR and the like) are refused: decoding would
/// turn the whole body into one U+FFFD.
fn lookup(label: &[u8]) -> Result<&'static Encoding, TranslateError> {
    if label.trim_ascii().eq_ignore_ascii_case(b"latin-1") {
        return Ok(WINDOWS_1252);
    }
    Encoding::for_label_no_replacement(label).ok_or_else(|| {
        let shown: String = String::from_utf8_lossy(label).chars().take(40).collect();
        TranslateError::UnsupportedCharset(shown)
    })
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The byte range of the `encoding` value in a leading XML declaration. `Ok(None)`: no
/// declaration, or one without an encoding; `Err`: an encoding that cannot be read, since
/// guessing the charset of a body the client mislabelled would translate it wrongly.
///
/// The delimiters looked for are ASCII, so on valid UTF-8 the range falls on character
/// boundaries.
fn xml_decl_encoding(body: &[u8]) -> Result<Option<Range<usize>>, String> {
    // `<?xml-stylesheet` is another processing instruction.
    if !body.starts_with(b"<?xml") || !body.get(5).copied().is_some_and(is_xml_space) {
        return Ok(None);
    }
    let head = &body[..body.len().min(DECL_SCAN)];
    let decl = &head[..find(head, b"?>").unwrap_or(head.len())];
    let mut from = 5;
    while let Some(at) = find(&decl[from..], b"encoding") {
        let start = from + at;
        from = start + b"encoding".len();
        // Only the pseudo-attribute, not `encoding` inside another one's value.
        if !is_xml_space(decl[start - 1]) {
            continue;
        }
        let mut i = from;
        let skip = |i: &mut usize| {
            while decl.get(*i).copied().is_some_and(is_xml_space) {
                *i += 1;
            }
        };
        skip(&mut i);
        if decl.get(i) != Some(&b'=') {
            return Err("the XML declaration's encoding has no value".into());
        }
        i += 1;
        skip(&mut i);
        let quote = match decl.get(i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => return Err("the XML declaration's encoding is not quoted".into()),
        };
        let value = i + 1;
        let Some(len) = decl[value..].iter().position(|b| *b == quote) else {
            return Err("the XML declaration's encoding is not terminated".into());
        };
        return Ok(Some(value..value + len));
    }
    Ok(None)
}

/// The text is UTF-8 now: a declaration naming another charset would make the next parser
/// decode it a second time.
fn relabel_declaration(text: Cow<'_, str>) -> Cow<'_, str> {
    let Ok(Some(r)) = xml_decl_encoding(text.as_bytes()) else {
        return text;
    };
    let names_utf8 = text
        .get(r.clone())
        .and_then(|l| Encoding::for_label(l.as_bytes()))
        .is_some_and(|e| e == UTF_8);
    if names_utf8 || text.get(r.clone()).is_none() {
        return text;
    }
    let mut s = text.into_owned();
    s.replace_range(r, "UTF-8");
    Cow::Owned(s)
}

pub fn utf8_content_type(in_ct: &str) -> HeaderValue {
    let base = in_ct.split(';').next().unwrap_or("").trim();
    let base = if base.is_empty() {
        "application/octet-stream"
    } else {
        base
    };
    let v = if content_type_charset(in_ct).is_some() || base.starts_with("text/") || base.ends_with("xml") {
        format!("{base}; charset=utf-8")
    } else {
        base.to_string()
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &[u8], ct: &str) -> String {
        to_utf8(body, ct).map(Cow::into_owned).unwrap()
    }

    #[test]
    fn unquoted_non_ascii_xml_encoding_is_an_error_not_a_panic() {
        for body in [
            "<?xml encoding=é?><a/>".as_bytes(),
            b"<?xml encoding=\xe9?><a/>",
            "<?xml version=\"1.0\" encoding=é".as_bytes(),
        ] {
            let e = to_utf8(body, "text/xml").err();
            assert!(
                matches!(e, Some(TranslateError::Malformed { format: "XML", .. })),
                "{body:?}: {e:?}"
            );
        }
    }

    #[test]
    fn quoted_non_ascii_xml_encoding_is_an_unsupported_charset() {
        let e = to_utf8(
            "<?xml version=\"1.0\" encoding=\"é\"?><a/>".as_bytes(),
            "text/xml",
        )
        .err();
        assert!(matches!(e, Some(TranslateError::UnsupportedCharset(l)) if l == "é"));
    }

    #[test]
    fn windows_1252_0x80_is_the_euro_sign_not_a_c1_control() {
        assert_eq!(
            text(b"\x80 5, \x93q\x94", "text/plain; charset=windows-1252"),
            "€ 5, \u{201c}q\u{201d}"
        );
        assert_eq!(text(b"\x80", "text/plain; charset=\"cp1252\""), "€");
    }

    #[test]
    fn iso_8859_1_from_the_declaration_is_decoded_and_relabelled() {
        let body = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r>J\xe9r\xf4me</r>";
        assert_eq!(
            text(body, "text/xml"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r>Jérôme</r>"
        );
        let body = b"<?xml version='1.0' encoding = 'latin-1' ?><r>\xe9</r>";
        assert_eq!(
            text(body, "text/xml"),
            "<?xml version='1.0' encoding = 'UTF-8' ?><r>é</r>"
        );
    }

    #[test]
    fn content_type_charset_wins_over_the_declaration() {
        let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><r>\xe9</r>";
        assert_eq!(
            text(body, "text/xml; charset=iso-8859-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r>é</r>"
        );
        let body = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r>é</r>".as_bytes();
        assert_eq!(
            text(body, "text/xml; charset=utf-8"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r>é</r>"
        );
    }

    #[test]
    fn utf16_with_a_bom_is_decoded_and_the_bom_dropped() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>é€</a>";
        let mut le = vec![0xFF, 0xFE];
        le.extend(doc.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xFE, 0xFF];
        be.extend(doc.encode_utf16().flat_map(u16::to_be_bytes));
        let want = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>é€</a>";
        assert_eq!(text(&le, "text/xml"), want);
        assert_eq!(text(&be, "text/xml; charset=iso-8859-1"), want, "the BOM wins");
        assert_eq!(text(b"\xEF\xBB\xBF{\"a\":1}", "application/json"), "{\"a\":1}");
        assert!(to_utf8(&le[..le.len() - 1], "text/xml").is_err(), "odd length");
    }

    #[test]
    fn an_ascii_declaration_claiming_utf16_is_read_as_utf8() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>é</a>".as_bytes();
        assert_eq!(
            text(body, "text/xml"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>é</a>"
        );
    }

    #[test]
    fn unknown_or_replacement_labels_are_unsupported_charsets() {
        for (body, ct) in [
            (&b"{}"[..], "application/json; charset=klingon"),
            (b"<?xml version=\"1.0\" encoding=\"klingon\"?><a/>", "text/xml"),
            (b"{}", "application/json; charset=iso-2022-kr"),
        ] {
            let e = to_utf8(body, ct).err();
            assert!(
                matches!(e, Some(TranslateError::UnsupportedCharset(_))),
                "{ct}: {e:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_without_a_charset_is_malformed() {
        let e = to_utf8(b"{\"a\":\"\xe9\"}", "application/json").err();
        assert!(matches!(
            e,
            Some(TranslateError::Malformed { format: "text", .. })
        ));
        assert!(matches!(
            to_utf8(b"{}", "application/json"),
            Ok(Cow::Borrowed("{}"))
        ));
    }

    #[test]
    fn other_processing_instructions_are_not_declarations() {
        let body = "<?xml-stylesheet encoding=é?><a/>".as_bytes();
        assert_eq!(text(body, "text/xml"), "<?xml-stylesheet encoding=é?><a/>");
    }
}
