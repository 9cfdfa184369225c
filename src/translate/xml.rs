//! XML <-> JSON with quick-xml. The mapping: an element's content is the value of its name;
//! attributes are `@name`, text next to attributes or children is `#text`; a repeated element is
//! an array (and so is any element whose path is listed in `array_paths`); `<a/>` is `null`,
//! `<a></a>` is `""`; all text stays a string (use `convert` for numbers). Namespace prefixes
//! are dropped (local names) unless kept.

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// Element paths (dot-separated local names below the root; `*` matches any name) that are
/// always arrays.
#[derive(Debug, Clone, Default)]
pub struct XmlRead {
    pub array_paths: Vec<Vec<String>>,
    pub keep_prefixes: bool,
}

impl XmlRead {
    pub fn new(array_paths: &[String], keep_prefixes: bool) -> Self {
        Self {
            array_paths: array_paths
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect(),
            keep_prefixes,
        }
    }

    /// `open` are the frames below the root (their names are the path so far), `name` the child.
    fn is_array(&self, open: &[Frame], name: &str) -> bool {
        self.array_paths.iter().any(|p| {
            p.len() == open.len() + 1
                && p.iter()
                    .zip(open.iter().map(|f| f.name.as_str()).chain(std::iter::once(name)))
                    .all(|(a, b)| a == "*" || a == b)
        })
    }
}

struct Frame {
    name: String,
    attrs: Map<String, Value>,
    children: Vec<(String, Value)>,
    text: String,
}

/// Depth beyond which a document is refused: a guard against pathological nesting.
const MAX_DEPTH: usize = 256;

/// Returns the root element's name and its content.
pub fn xml_to_json(text: &str, opts: &XmlRead) -> Result<(String, Value), String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        match ev {
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err("content after the root element".into());
            }
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                }
                let frame = open(&s, opts)?;
                stack.push(frame);
            }
            Event::Empty(s) => {
                let frame = open(&s, opts)?;
                let value = if frame.attrs.is_empty() {
                    Value::Null
                } else {
                    Value::Object(frame.attrs)
                };
                finish(&mut stack, &mut root, frame.name, value, opts);
            }
            Event::Text(t) => {
                let s = t.xml_content().map_err(|e| e.to_string())?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| e.to_string())?;
                push_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity `&{name};`"))?
                            .to_string()
                    }
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::End(_) => {
                let Some(frame) = stack.pop() else {
                    return Err("unbalanced end tag".into());
                };
                let value = build(frame.attrs, frame.children, frame.text);
                finish(&mut stack, &mut root, frame.name, value, opts);
            }
            Event::DocType(_) => return Err("DOCTYPE declarations are refused".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

fn push_text(stack: &mut [Frame], s: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(f) => {
            f.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None => Err("text outside the root element".into()),
    }
}

fn local(name: &[u8], keep_prefixes: bool) -> Result<String, String> {
    let n = std::str::from_utf8(name).map_err(|_| "a name is not UTF-8".to_string())?;
    Ok(match (keep_prefixes, n.rsplit_once(':')) {
        (false, Some((_, l))) => l.to_string(),
        _ => n.to_string(),
    })
}

fn open(s: &quick_xml::events::BytesStart<'_>, opts: &XmlRead) -> Result<Frame, String> {
    let name = local(s.name().as_ref(), opts.keep_prefixes)?;
    let mut attrs = Map::new();
    for a in s.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = a.key.as_ref();
        if !opts.keep_prefixes && (key == b"xmlns" || key.starts_with(b"xmlns:")) {
            continue;
        }
        let v = a.unescape_value().map_err(|e| e.to_string())?;
        attrs.insert(
            format!("@{}", local(key, opts.keep_prefixes)?),
            Value::from(v.into_owned()),
        );
    }
    Ok(Frame {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

fn build(attrs: Map<String, Value>, children: Vec<(String, Value)>, text: String) -> Value {
    if attrs.is_empty() && children.is_empty() {
        return Value::from(text.trim());
    }
    let mut m = attrs;
    for (k, v) in children {
        match m.get_mut(&k) {
            Some(Value::Array(a)) => a.push(v),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                m.insert(k, v);
            }
        }
    }
    let t = text.trim();
    if !t.is_empty() {
        m.insert("#text".into(), Value::from(t));
    }
    Value::Object(m)
}

fn finish(
    stack: &mut [Frame],
    root: &mut Option<(String, Value)>,
    name: String,
    value: Value,
    opts: &XmlRead,
) {
    let depth = stack.len();
    match stack.last_mut() {
        None => *root = Some((name, value)),
        Some(_) => {
            // The path below the root: the names of the open frames after the root, then this one.
            let forced = !opts.array_paths.is_empty() && opts.is_array(&stack[1..], &name);
            let parent = &mut stack[depth - 1];
            if forced && !parent.children.iter().any(|(k, _)| *k == name) {
                parent.children.push((name, Value::Array(vec![value])));
            } else if forced {
                if let Some((_, Value::Array(a))) = parent.children.iter_mut().find(|(k, _)| *k == name) {
                    a.push(value);
                }
            } else {
                parent.children.push((name, value));
            }
        }
    }
}

/// How the JSON side is written back.
#[derive(Debug, Clone, Default)]
pub struct XmlWrite {
    pub root: Option<String>,
    /// `(prefix, uri)`; an empty prefix is the default namespace.
    pub namespaces: Vec<(String, String)>,
    /// Children named here are written first, in this order (`xsd:sequence`).
    pub order: Vec<String>,
}

pub fn json_to_xml(v: &Value, opts: &XmlWrite) -> Result<String, String> {
    let (root, content) = match (&opts.root, v) {
        (Some(r), v) => (r.as_str(), v),
        (None, Value::Object(m)) if m.len() == 1 => match m.iter().next() {
            Some((k, v)) => (k.as_str(), v),
            None => return Err("nothing to write".into()),
        },
        _ => return Err("without `root` the document must be an object with exactly one key".into()),
    };
    let mut out = String::with_capacity(256);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let ns: String = opts
        .namespaces
        .iter()
        .map(|(p, u)| {
            if p.is_empty() {
                format!(r#" xmlns="{}""#, escape(u.as_str()))
            } else {
                format!(r#" xmlns:{p}="{}""#, escape(u.as_str()))
            }
        })
        .collect();
    if matches!(content, Value::Array(_)) {
        return Err("the root element cannot be an array".into());
    }
    write_element(&mut out, root, content, &ns, &opts.order, 0)?;
    Ok(out)
}

pub fn check_name(n: &str) -> Result<(), String> {
    let mut chars = n.chars();
    let ok = match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {
            chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        }
        _ => false,
    };
    if ok && !n.to_ascii_lowercase().starts_with("xml") {
        Ok(())
    } else {
        Err(format!("`{n}` is not an XML element name"))
    }
}

/// Writes `<name extra...>content</name>`; `extra` is raw attribute text (namespace declarations).
pub fn write_element(
    out: &mut String,
    name: &str,
    v: &Value,
    extra: &str,
    order: &[String],
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    check_name(name)?;
    match v {
        Value::Array(items) => {
            for item in items {
                if matches!(item, Value::Array(_)) {
                    return Err(format!("`{name}`: arrays of arrays have no XML form"));
                }
                write_element(out, name, item, extra, order, depth + 1)?;
            }
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str(extra);
            out.push_str("/>");
        }
        Value::Object(m) => {
            out.push('<');
            out.push_str(name);
            out.push_str(extra);
            for (k, a) in m {
                if let Some(attr) = k.strip_prefix('@') {
                    check_name(attr)?;
                    out.push(' ');
                    out.push_str(attr);
                    out.push_str("=\"");
                    out.push_str(&escape(scalar(a, k)?));
                    out.push('"');
                }
            }
            out.push('>');
            let mut children: Vec<(&String, &Value)> =
                m.iter().filter(|(k, _)| !k.starts_with('@')).collect();
            if !order.is_empty() {
                // Stable: names not in `order` keep their (name) order after the listed ones.
                children.sort_by_key(|(k, _)| order.iter().position(|o| o == *k).unwrap_or(usize::MAX));
            }
            for (k, c) in children {
                if k == "#text" {
                    out.push_str(&escape(scalar(c, k)?));
                } else {
                    write_element(out, k, c, "", order, depth + 1)?;
                }
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        scalar_value => {
            out.push('<');
            out.push_str(name);
            out.push_str(extra);
            out.push('>');
            out.push_str(&escape(scalar(scalar_value, name)?));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
    Ok(())
}

fn scalar(v: &Value, key: &str) -> Result<String, String> {
    scalar_text(v).ok_or_else(|| format!("`{key}` must be a plain value"))
}

/// A JSON scalar written as text (`null` as nothing); `None` for an array or an object.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attributes_text_repeats_and_namespaces_map_to_json() {
        let xml = r#"<?xml version="1.0"?>
            <o:Order xmlns:o="urn:orders" id="7">
              <o:Customer type="vip">Ada &amp; Co</o:Customer>
              <o:Line><o:Sku>A</o:Sku></o:Line>
              <o:Line><o:Sku>B</o:Sku></o:Line>
              <o:Note/>
              <o:Empty></o:Empty>
              <o:Memo><![CDATA[<b>hi</b>]]></o:Memo>
            </o:Order>"#;
        let (root, v) = xml_to_json(xml, &XmlRead::default()).unwrap();
        assert_eq!(root, "Order");
        assert_eq!(
            v,
            json!({"@id": "7", "Customer": {"@type": "vip", "#text": "Ada & Co"},
                   "Line": [{"Sku": "A"}, {"Sku": "B"}], "Note": null, "Empty": "", "Memo": "<b>hi</b>"})
        );
    }

    #[test]
    fn array_paths_force_arrays_for_single_elements() {
        let xml = "<r><Lines><Line><Sku>A</Sku></Line></Lines></r>";
        let (_, v) = xml_to_json(xml, &XmlRead::new(&["Lines.Line".into()], false)).unwrap();
        assert_eq!(v, json!({"Lines": {"Line": [{"Sku": "A"}]}}));
        let (_, v) = xml_to_json(xml, &XmlRead::new(&["*.Line".into()], false)).unwrap();
        assert_eq!(v, json!({"Lines": {"Line": [{"Sku": "A"}]}}));
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_partial_document() {
        for bad in [
            "<a><b></a>",
            "<a>",
            "",
            "<a/><b/>",
            "<!DOCTYPE x><a/>",
            "<a>&bogus;</a>",
            "text",
        ] {
            assert!(xml_to_json(bad, &XmlRead::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_writes_back_to_xml_with_escaping_and_namespaces() {
        let v = json!({"@id": "7", "name": "a<b", "line": [{"sku": "A"}, {"sku": "B"}], "none": null});
        let opts = XmlWrite {
            root: Some("order".into()),
            order: Vec::new(),
            namespaces: vec![("".into(), "urn:o".into())],
        };
        let xml = json_to_xml(&v, &opts).unwrap();
        assert!(xml.contains(r#"<order xmlns="urn:o" id="7">"#), "{xml}");
        assert!(xml.contains("<name>a&lt;b</name>"), "{xml}");
        let (_, back) = xml_to_json(&xml, &XmlRead::default()).unwrap();
        assert_eq!(back, v);
        assert!(json_to_xml(&json!({"1bad": 1}), &XmlWrite::default()).is_err());
    }

    #[test]
    fn an_element_order_hint_writes_children_in_schema_order() {
        let v = serde_json::json!({"Order": {"Total": 1, "CUST_NO": "C1", "Id": 7, "Lines": {"Qty": 2, "Sku": "A"}}});
        let sorted = json_to_xml(&v, &XmlWrite::default()).unwrap();
        assert!(sorted.contains("<Order><CUST_NO>C1</CUST_NO><Id>7</Id><Lines><Qty>2</Qty><Sku>A</Sku></Lines><Total>1</Total></Order>"), "{sorted}");
        let hinted = XmlWrite {
            order: ["Id", "CUST_NO", "Lines", "Total", "Sku", "Qty"]
                .map(String::from)
                .to_vec(),
            ..XmlWrite::default()
        };
        let xml = json_to_xml(&v, &hinted).unwrap();
        assert!(xml.contains("<Order><Id>7</Id><CUST_NO>C1</CUST_NO><Lines><Sku>A</Sku><Qty>2</Qty></Lines><Total>1</Total></Order>"), "{xml}");
    }
}
