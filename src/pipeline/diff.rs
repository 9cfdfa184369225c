//! Comparing a legacy and a modern response in one shape: status, chosen headers, and the body
//! flattened into `path = value` leaves (JSON semantically, XML normalised), so that a mismatch
//! reads field by field: `$.total: 10 != 10.5`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::translate::path::{FieldPath, Step};

/// How bodies are compared.
#[derive(Debug, Clone, Default)]
pub struct DiffRules {
    /// Fields whose values are ignored, with everything below them (`meta.generatedAt`,
    /// `items.*.id`; in XML `Order.Item.@id`, `Order.Note.#text`), compiled by [`ignore_rule`].
    pub ignore: Vec<FieldPath>,
    pub numeric_tolerance: f64,
    pub ignore_array_order: bool,
    /// Report the kind of each differing value (`<string, 12 chars>`, `<number>`) instead of the
    /// value: response fields may be personal data.
    pub redact_values: bool,
    /// Fields whose values always show as `[REDACTED]` (`redact.json_paths`), with everything
    /// below them; they are still compared.
    pub redact: Vec<FieldPath>,
}

/// One `ignore` entry, in the field-path syntax (`items.*.id`) or in the old JSONPath-like
/// spelling (`$.items[*].id`, `/Order/@id`), which still loads: `true` says it was the old one.
pub fn ignore_rule(s: &str) -> Result<(FieldPath, bool), String> {
    match FieldPath::parse_old_spelling(s) {
        Some(old) => old.map(|p| (p, true)),
        None => FieldPath::parse(s).map(|p| (p, false)),
    }
}

/// `shadow.ignore` entries in the old spelling, as (key suffix, warning naming the new one).
pub fn ignore_warnings(patterns: &[String]) -> Vec<(String, String)> {
    patterns
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match ignore_rule(s) {
            Ok((p, true)) => Some((
                format!("ignore[{i}]"),
                format!("`{s}` is the old spelling; write `{p}`"),
            )),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    pub path: String,
    pub primary: Option<String>,
    pub shadow: Option<String>,
    pub kind: DiffKind,
}

/// How two answers differ at one path: what drift statistics count, and what noise learning may
/// explain (a volatile value can explain a different value, never a missing field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    MissingOnPrimary,
    MissingOnShadow,
    TypeChanged,
    ValueDiffers,
}

impl DiffKind {
    pub const ALL: [DiffKind; 4] = [
        Self::MissingOnPrimary,
        Self::MissingOnShadow,
        Self::TypeChanged,
        Self::ValueDiffers,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::MissingOnPrimary => "missing_on_primary",
            Self::MissingOnShadow => "missing_on_shadow",
            Self::TypeChanged => "type_changed",
            Self::ValueDiffers => "value_differs",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A header or a status: present on both sides or not.
    pub fn of_presence(primary: bool, shadow: bool) -> Self {
        match (primary, shadow) {
            (false, _) => Self::MissingOnPrimary,
            (_, false) => Self::MissingOnShadow,
            _ => Self::ValueDiffers,
        }
    }
}

/// The field a diff path names, generalised so that every element of an array is one field:
/// `$.items[3].ts` is `items.*.ts` and `/Order/Item[1]/#text` is `Order.Item.#text` (in the
/// field-path syntax of `ignore` rules, where an XML element name covers all its occurrences).
/// `status`, `header NAME` and `body` stay as they are.
pub fn field_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix('$') {
        let mut out = String::with_capacity(rest.len());
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '[' {
                let tail = &rest[i + 1..];
                if let Some(end) = tail.find(']') {
                    if end > 0 && tail[..end].bytes().all(|b| b.is_ascii_digit()) {
                        out.push_str(".*");
                        for _ in 0..=end {
                            chars.next();
                        }
                        continue;
                    }
                }
            }
            out.push(c);
        }
        let out = out.strip_prefix('.').unwrap_or(&out);
        return if out.is_empty() {
            ".".into()
        } else {
            out.to_string()
        };
    }
    if let Some(rest) = path.strip_prefix('/') {
        let mut out = String::with_capacity(rest.len());
        for (i, seg) in rest.split('/').enumerate() {
            if i > 0 {
                out.push('.');
            }
            // `Item[1]`: the occurrence goes, the name covers them all.
            let name = match seg.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
                Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => seg,
            };
            out.push_str(name);
        }
        return out;
    }
    path.to_string()
}

#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
    /// `{}` or `[]`: an empty object or array.
    Empty(&'static str),
    /// A value under a `redact.json_paths` field: compared, never shown.
    Redacted(Box<Leaf>),
}

impl Leaf {
    fn show(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(b) => b.to_string(),
            Self::Number(n) => n.to_string(),
            Self::Text(t) => format!("{t:?}"),
            Self::Empty(e) => format!("{e:?}"),
            Self::Redacted(_) => crate::telemetry::redact::MARKER.into(),
        }
    }

    /// What kind of value this is, without the value.
    fn shape(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(_) => "<boolean>".into(),
            Self::Number(_) => "<number>".into(),
            Self::Text(t) => format!("<string, {} chars>", t.chars().count()),
            Self::Empty(e) => (*e).into(),
            Self::Redacted(_) => crate::telemetry::redact::MARKER.into(),
        }
    }
}

/// A header or raw body value, redacted to its size.
pub fn value_size(v: &[u8]) -> String {
    format!("<{} bytes>", v.len())
}

/// Compares two bodies; `content_type` decides JSON, XML or bytes.
pub fn diff_bodies(content_type: &str, primary: &[u8], shadow: &[u8], rules: &DiffRules) -> Vec<FieldDiff> {
    let ct = content_type.to_ascii_lowercase();
    let flat = |b: &[u8]| -> Option<BTreeMap<String, Leaf>> {
        if ct.contains("json") {
            let v: serde_json::Value = serde_json::from_slice(b).ok()?;
            let mut out = BTreeMap::new();
            let mut budget = Budget::default();
            flatten_json("$", &mut Vec::new(), &v, rules, &mut out, &mut budget);
            (!budget.exceeded()).then_some(out)
        } else if ct.contains("xml") {
            flatten_xml(b, rules)
        } else {
            None
        }
    };
    match (flat(primary), flat(shadow)) {
        (Some(a), Some(b)) => compare(&a, &b, rules),
        _ if primary == shadow => Vec::new(),
        _ if rules.redact_values => vec![FieldDiff {
            path: "body".into(),
            primary: Some(value_size(primary)),
            shadow: Some(value_size(shadow)),
            kind: DiffKind::ValueDiffers,
        }],
        _ => vec![FieldDiff {
            path: "body".into(),
            primary: Some(preview(primary)),
            shadow: Some(preview(shadow)),
            kind: DiffKind::ValueDiffers,
        }],
    }
}

fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], b.len())
    } else {
        s.into_owned()
    }
}

/// Every leaf's path repeats its parents' keys, so a body of long keys over many leaves (a
/// 500 KB key above a 250,000-item array) would flatten to hundreds of GB. Past these bounds a
/// body is compared as bytes instead.
const MAX_FLAT_PATH_BYTES: usize = 8 << 20;
const MAX_FLAT_LEAVES: usize = 100_000;

#[derive(Default)]
struct Budget {
    path_bytes: usize,
    leaves: usize,
}

impl Budget {
    /// Accounts for a path about to be made; `false` once over a bound.
    fn take(&mut self, path_len: usize, leaf: bool) -> bool {
        self.path_bytes = self.path_bytes.saturating_add(path_len);
        self.leaves += usize::from(leaf);
        !self.exceeded()
    }

    fn exceeded(&self) -> bool {
        self.path_bytes > MAX_FLAT_PATH_BYTES || self.leaves > MAX_FLAT_LEAVES
    }
}

fn flatten_json<'v>(
    path: &str,
    at: &mut Vec<Step<'v>>,
    v: &'v serde_json::Value,
    rules: &DiffRules,
    out: &mut BTreeMap<String, Leaf>,
    budget: &mut Budget,
) {
    if budget.exceeded() || ignored(at, rules) {
        return;
    }
    let is_leaf = !matches!(v, serde_json::Value::Object(m) if !m.is_empty())
        && !matches!(v, serde_json::Value::Array(a) if !a.is_empty());
    if is_leaf && !budget.take(path.len(), true) {
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            if m.is_empty() {
                out.insert(path.to_string(), secret(at, rules, Leaf::Empty("{}")));
            }
            for (k, v) in m {
                if !budget.take(path.len() + 1 + k.len(), false) {
                    return;
                }
                at.push(Step::Key(k));
                flatten_json(&format!("{path}.{k}"), at, v, rules, out, budget);
                at.pop();
            }
        }
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                out.insert(path.to_string(), secret(at, rules, Leaf::Empty("[]")));
            }
            let mut items: Vec<&serde_json::Value> = items.iter().collect();
            if rules.ignore_array_order {
                items.sort_by_cached_key(|v| v.to_string());
            }
            for (i, v) in items.into_iter().enumerate() {
                if !budget.take(path.len() + 8, false) {
                    return;
                }
                at.push(Step::Index(i));
                flatten_json(&format!("{path}[{i}]"), at, v, rules, out, budget);
                at.pop();
            }
        }
        serde_json::Value::Null => {
            out.insert(path.to_string(), secret(at, rules, Leaf::Null));
        }
        serde_json::Value::Bool(b) => {
            out.insert(path.to_string(), secret(at, rules, Leaf::Bool(*b)));
        }
        serde_json::Value::Number(n) => {
            let n = Leaf::Number(n.as_f64().unwrap_or(f64::NAN));
            out.insert(path.to_string(), secret(at, rules, n));
        }
        serde_json::Value::String(s) => {
            out.insert(path.to_string(), secret(at, rules, Leaf::Text(s.clone())));
        }
    }
}

/// Deeper XML is compared byte for byte, as translation refuses it (`translate::xml`).
const MAX_XML_DEPTH: usize = 256;

/// XML as leaves: `/Order/@id`, `/Order/Item[1]/#text`. Whitespace between elements, comments
/// and attribute order do not count.
fn flatten_xml(b: &[u8], rules: &DiffRules) -> Option<BTreeMap<String, Leaf>> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(b).ok()?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut out = BTreeMap::new();
    // (path of the element, per-child-name counters, its name and occurrence for `ignore`)
    let mut budget = Budget::default();
    let mut stack: Vec<(String, BTreeMap<String, usize>, String, usize)> =
        vec![(String::new(), BTreeMap::new(), String::new(), 0)];
    let mut leaf = |stack: &[(String, BTreeMap<String, usize>, String, usize)],
                    below: Option<(&str, usize)>,
                    last: Option<&str>,
                    path: String,
                    value: Leaf| {
        let mut value = value;
        if !rules.ignore.is_empty() || !rules.redact.is_empty() {
            let mut at: Vec<Step<'_>> = Vec::new();
            let elements = stack[1..]
                .iter()
                .map(|(_, _, n, o)| (n.as_str(), *o))
                .chain(below);
            for (name, occurrence) in elements {
                at.extend([Step::Key(name), Step::Occurrence(occurrence)]);
            }
            at.extend(last.map(Step::Key));
            if ignored(&at, rules) {
                return;
            }
            value = secret(&at, rules, value);
        }
        out.insert(path, value);
    };
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                // Every level's path repeats its parents', so deep nesting costs its square.
                if stack.len() > MAX_XML_DEPTH {
                    return None;
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let (path, n) = child_path(&mut stack, &name);
                if !budget.take(path.len(), true) {
                    return None;
                }
                for a in e.attributes().flatten() {
                    if !budget.take(path.len() + a.key.as_ref().len() + 2, true) {
                        return None;
                    }
                    let k = format!("@{}", String::from_utf8_lossy(a.key.as_ref()));
                    let v = a.unescape_value().ok()?.into_owned();
                    leaf(
                        &stack,
                        Some((&name, n)),
                        Some(&k),
                        format!("{path}/{k}"),
                        Leaf::Text(v),
                    );
                }
                stack.push((path, BTreeMap::new(), name, n));
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let (path, n) = child_path(&mut stack, &name);
                if !budget.take(path.len(), true) {
                    return None;
                }
                let mut any = false;
                for a in e.attributes().flatten() {
                    if !budget.take(path.len() + a.key.as_ref().len() + 2, true) {
                        return None;
                    }
                    any = true;
                    let k = format!("@{}", String::from_utf8_lossy(a.key.as_ref()));
                    let v = a.unescape_value().ok()?.into_owned();
                    leaf(
                        &stack,
                        Some((&name, n)),
                        Some(&k),
                        format!("{path}/{k}"),
                        Leaf::Text(v),
                    );
                }
                if !any {
                    leaf(&stack, Some((&name, n)), None, path, Leaf::Null);
                }
            }
            Event::Text(t) => {
                let raw = t.decode().ok()?;
                let v = quick_xml::escape::unescape(&raw).ok()?.trim().to_string();
                if !v.is_empty() {
                    let path = stack.last().map(|e| e.0.clone()).unwrap_or_default();
                    if !budget.take(path.len() + 6, true) {
                        return None;
                    }
                    leaf(
                        &stack,
                        None,
                        Some("#text"),
                        format!("{path}/#text"),
                        Leaf::Text(v),
                    );
                }
            }
            Event::CData(c) => {
                let v = String::from_utf8_lossy(&c).trim().to_string();
                let path = stack.last().map(|e| e.0.clone()).unwrap_or_default();
                if !budget.take(path.len() + 6, true) {
                    return None;
                }
                leaf(
                    &stack,
                    None,
                    Some("#text"),
                    format!("{path}/#text"),
                    Leaf::Text(v),
                );
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Some(out)
}

/// The path of the next child called `name`, and which of its parent's children of that name
/// it is (0 for the first).
fn child_path(stack: &mut [(String, BTreeMap<String, usize>, String, usize)], name: &str) -> (String, usize) {
    let Some((parent, counts, _, _)) = stack.last_mut() else {
        return (format!("/{name}"), 0);
    };
    let n = counts.entry(name.to_string()).or_insert(0);
    let at = *n;
    let path = if at == 0 {
        format!("{parent}/{name}")
    } else {
        format!("{parent}/{name}[{at}]")
    };
    *n += 1;
    (path, at)
}

/// `leaf`, hidden when it lies under a `redact` field.
fn secret(at: &[Step<'_>], rules: &DiffRules, leaf: Leaf) -> Leaf {
    if rules.redact.iter().any(|p| p.covers(at)) {
        Leaf::Redacted(Box::new(leaf))
    } else {
        leaf
    }
}

fn ignored(at: &[Step<'_>], rules: &DiffRules) -> bool {
    rules.ignore.iter().any(|p| p.covers(at))
}

fn kind_of(a: Option<&Leaf>, b: Option<&Leaf>) -> DiffKind {
    fn bare(l: &Leaf) -> &Leaf {
        match l {
            Leaf::Redacted(inner) => bare(inner),
            other => other,
        }
    }
    match (a.map(bare), b.map(bare)) {
        (None, _) => DiffKind::MissingOnPrimary,
        (_, None) => DiffKind::MissingOnShadow,
        (Some(Leaf::Empty(x)), Some(Leaf::Empty(y))) if x != y => DiffKind::TypeChanged,
        (Some(x), Some(y)) if std::mem::discriminant(x) != std::mem::discriminant(y) => DiffKind::TypeChanged,
        _ => DiffKind::ValueDiffers,
    }
}

fn compare(a: &BTreeMap<String, Leaf>, b: &BTreeMap<String, Leaf>, rules: &DiffRules) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let same = match (a.get(k), b.get(k)) {
            (Some(Leaf::Number(x)), Some(Leaf::Number(y))) => (x - y).abs() <= rules.numeric_tolerance,
            (x, y) => x == y,
        };
        if !same {
            let show = if rules.redact_values {
                Leaf::shape
            } else {
                Leaf::show
            };
            out.push(FieldDiff {
                path: k.clone(),
                primary: a.get(k).map(show),
                shadow: b.get(k).map(show),
                kind: kind_of(a.get(k), b.get(k)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ignore: &[&str]) -> DiffRules {
        DiffRules {
            ignore: ignore.iter().map(|s| ignore_rule(s).unwrap().0).collect(),
            ..DiffRules::default()
        }
    }

    #[test]
    fn json_is_compared_semantically_field_by_field() {
        let a = br#"{"id": 7, "total": 10, "meta": {"at": "x"}, "tags": ["a","b"]}"#;
        let b = br#"{"tags": ["a","b"], "total": 10.5, "id": 7, "meta": {"at": "y"}}"#;
        let d = diff_bodies("application/json", a, b, &rules(&[]));
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["$.meta.at", "$.total"]);
        assert_eq!(d[1].primary.as_deref(), Some("10"));
        assert_eq!(d[1].shadow.as_deref(), Some("10.5"));
        assert!(diff_bodies("application/json", a, b, &rules(&["$.meta", "$.total"])).is_empty());
    }

    #[test]
    fn tolerance_wildcards_and_array_order() {
        let a = br#"{"items":[{"id":1,"p":1.0},{"id":2,"p":2.0}]}"#;
        let b = br#"{"items":[{"id":2,"p":2.001},{"id":1,"p":1.0}]}"#;
        let mut r = rules(&[]);
        assert!(!diff_bodies("application/json", a, b, &r).is_empty());
        r.ignore_array_order = true;
        r.numeric_tolerance = 0.01;
        assert!(diff_bodies("application/json", a, b, &r).is_empty());
        let r = rules(&["$.items[*].p"]);
        let c = br#"{"items":[{"id":1,"p":9},{"id":2,"p":8}]}"#;
        assert!(diff_bodies("application/json", a, c, &r).is_empty());
    }

    /// A long key above a long array: every leaf's path would repeat the key. Past the bounds
    /// the bodies are compared as bytes, at once and without the memory.
    #[test]
    fn bodies_that_would_flatten_past_the_bounds_are_compared_as_bytes() {
        let key = "k".repeat(200_000);
        let items = vec!["0"; 100_000].join(",");
        let a = format!("{{\"{key}\":[{items}]}}");
        let b = format!("{{\"{key}\":[{items},1]}}");
        let started = std::time::Instant::now();
        let d = diff_bodies("application/json", a.as_bytes(), b.as_bytes(), &rules(&[]));
        assert_eq!(d.len(), 1, "{:?}", d.iter().map(|f| &f.path).collect::<Vec<_>>());
        assert_eq!(d[0].path, "body");
        let name = "n".repeat(200_000);
        let xml = |extra: &str| format!("<{name}>{}{extra}</{name}>", "<i/>".repeat(100_000));
        let d = diff_bodies(
            "text/xml",
            xml("").as_bytes(),
            xml("<j/>").as_bytes(),
            &rules(&[]),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "body");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Within the bounds, the same shapes are still compared field by field.
        let small = |n: usize| format!("{{\"{}\":[{}]}}", "k".repeat(100), vec!["0"; n].join(","));
        let d = diff_bodies(
            "application/json",
            small(10).as_bytes(),
            small(11).as_bytes(),
            &rules(&[]),
        );
        assert_eq!(d.len(), 1);
        assert!(d[0].path.ends_with("[10]"), "{}", d[0].path);
    }

    #[test]
    fn xml_is_normalised() {
        let a =
            b"<Order id=\"7\" cur=\"EUR\">\n  <Total>10</Total>\n  <Item>a</Item><Item>b</Item>\n</Order>";
        let b = b"<Order cur=\"EUR\" id=\"7\"><Total>10</Total><Item>a</Item><Item>c</Item></Order>";
        let d = diff_bodies("application/xml", a, b, &rules(&[]));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "/Order/Item[1]/#text");
    }

    #[test]
    fn a_key_with_an_unclosed_bracket_under_a_wildcard_pattern_is_compared_not_a_panic() {
        // `{"x[": ..}` flattens to `$.x[`: the wildcard's scan for `]` ran off the end.
        let a = br#"{"x[": 1, "y": 1}"#;
        let b = br#"{"x[": 2, "y": 1}"#;
        let d = diff_bodies("application/json", a, b, &rules(&["$.x[*]"]));
        assert_eq!(d.len(), 1, "{d:?}");
        let (p, _) = ignore_rule("$.x[*]").unwrap();
        assert!(p.covers(&[Step::Key("x"), Step::Index(1)]));
        assert!(!p.covers(&[Step::Key("x[")]));
        assert!(!p.covers(&[Step::Key("x[1")]));
    }

    /// Each differing field as (path, primary value, shadow value), as the diff view shows it.
    fn shown(d: &[FieldDiff]) -> Vec<(&str, Option<&str>, Option<&str>)> {
        d.iter()
            .map(|f| (f.path.as_str(), f.primary.as_deref(), f.shadow.as_deref()))
            .collect()
    }

    /// The paths that differ between `a` and `b` once `ignore` applies.
    fn diff_paths(content_type: &str, a: &[u8], b: &[u8], ignore: &[&str]) -> Vec<String> {
        diff_bodies(content_type, a, b, &rules(ignore))
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    #[test]
    fn ignore_rules_use_the_field_path_syntax_of_translation_ops() {
        let a = br#"{"items":[{"id":1,"p":1},{"id":2,"p":2}],"meta":{"at":"x"},"n":1}"#;
        let b = br#"{"items":[{"id":9,"p":1},{"id":8,"p":3}],"meta":{"at":"y"},"n":1}"#;
        let paths = |ignore: &[&str]| diff_paths("application/json", a, b, ignore);
        assert_eq!(paths(&["items.*.id", "meta"]), ["$.items[1].p"]);
        assert_eq!(
            paths(&["items.0.id", "meta.at"]),
            ["$.items[1].id", "$.items[1].p"]
        );
        // The old spelling still loads, to the same path.
        assert_eq!(
            paths(&["$.items[*].id", "$.meta"]),
            paths(&["items.*.id", "meta"])
        );
        assert_eq!(
            ignore_rule("$.items[*].id").unwrap(),
            (FieldPath::parse("items.*.id").unwrap(), true)
        );
        assert!(!ignore_rule("items.*.id").unwrap().1);
        assert!(ignore_rule("$.x[").is_err() && ignore_rule("a..b").is_err());
    }

    #[test]
    fn xml_ignore_rules_name_elements_attributes_and_text() {
        let a = b"<Order id=\"7\"><Item>a</Item><Item>b</Item><At>1</At></Order>";
        let b = b"<Order id=\"8\"><Item>c</Item><Item>d</Item><At>2</At></Order>";
        let paths = |ignore: &[&str]| diff_paths("text/xml", a, b, ignore);
        assert_eq!(paths(&["Order.Item", "Order.@id"]), ["/Order/At/#text"]);
        assert_eq!(
            paths(&["Order.Item.1.#text", "Order.At"]),
            ["/Order/@id", "/Order/Item/#text"]
        );
        assert_eq!(
            paths(&["/Order/Item[*]", "/Order/@id"]),
            paths(&["Order.Item.*", "Order.@id"])
        );
    }

    #[test]
    fn old_spellings_warn_with_the_new_one() {
        let w = ignore_warnings(&[
            "meta.at".into(),
            "$.items[*].id".into(),
            "/Order/Item[1]/@id".into(),
        ]);
        assert_eq!(
            w,
            [
                (
                    "ignore[1]".to_string(),
                    "`$.items[*].id` is the old spelling; write `items.*.id`".to_string()
                ),
                (
                    "ignore[2]".to_string(),
                    "`/Order/Item[1]/@id` is the old spelling; write `Order.Item.1.@id`".to_string()
                ),
            ]
        );
    }

    #[test]
    fn xml_nested_beyond_the_depth_limit_compares_as_bytes() {
        // Each level's path is as long as the depth: without a limit, time and memory grow
        // with its square (100 000 levels took 19 s).
        let deep = |leaf: &str| format!("{}{leaf}{}", "<a>".repeat(1000), "</a>".repeat(1000));
        let d = diff_bodies(
            "text/xml",
            deep("x").as_bytes(),
            deep("y").as_bytes(),
            &rules(&[]),
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "body");
        let shallow = |leaf: &str| format!("{}{leaf}{}", "<a>".repeat(100), "</a>".repeat(100));
        let d = diff_bodies(
            "text/xml",
            shallow("x").as_bytes(),
            shallow("y").as_bytes(),
            &rules(&[]),
        );
        assert!(d[0].path.ends_with("/a/#text"), "{d:?}");
    }

    #[test]
    fn fields_under_redact_paths_are_compared_but_shown_as_the_marker() {
        let a = br#"{"user":{"email":"alice@example.com","card":{"pan":"4111"}},"n":1}"#;
        let b = br#"{"user":{"email":"bob@example.org","card":{"pan":"4222"}},"n":1}"#;
        let r = DiffRules {
            redact: vec![
                FieldPath::parse("user.email").unwrap(),
                FieldPath::parse("user.card").unwrap(),
            ],
            ..DiffRules::default()
        };
        let d = diff_bodies("application/json", a, b, &r);
        let shown = shown(&d);
        assert_eq!(
            shown,
            [
                ("$.user.card.pan", Some("[REDACTED]"), Some("[REDACTED]")),
                ("$.user.email", Some("[REDACTED]"), Some("[REDACTED]")),
            ]
        );
        let same = diff_bodies("application/json", a, a, &r);
        assert!(same.is_empty(), "{same:?}");
    }

    #[test]
    fn redacted_diffs_keep_paths_and_kinds_but_no_values() {
        let a = br#"{"email":"alice@example.com","n":1,"ok":true,"tags":[],"x":null}"#;
        let b = br#"{"email":"bob@example.org","n":2,"ok":false,"tags":["vip"],"x":"set"}"#;
        let r = DiffRules {
            redact_values: true,
            ..DiffRules::default()
        };
        let d = diff_bodies("application/json", a, b, &r);
        let shown = shown(&d);
        assert_eq!(
            shown,
            [
                ("$.email", Some("<string, 17 chars>"), Some("<string, 15 chars>")),
                ("$.n", Some("<number>"), Some("<number>")),
                ("$.ok", Some("<boolean>"), Some("<boolean>")),
                ("$.tags", Some("[]"), None),
                ("$.tags[0]", None, Some("<string, 3 chars>")),
                ("$.x", Some("null"), Some("<string, 3 chars>")),
            ]
        );
        let raw = diff_bodies("text/plain", b"alice", b"bob", &r);
        assert_eq!(raw[0].primary.as_deref(), Some("<5 bytes>"));
        assert_eq!(raw[0].shadow.as_deref(), Some("<3 bytes>"));
    }

    #[test]
    fn each_diff_says_which_side_lacks_the_field_or_whether_its_type_or_value_changed() {
        let a = br#"{"gone":1,"n":1,"t":"x","o":{},"r":{"card":"4111"}}"#;
        let b = br#"{"new":1,"n":2,"t":3,"o":[],"r":{"card":"4222"}}"#;
        let r = DiffRules {
            redact: vec![FieldPath::parse("r").unwrap()],
            ..DiffRules::default()
        };
        let kinds: Vec<(String, DiffKind)> = diff_bodies("application/json", a, b, &r)
            .into_iter()
            .map(|d| (d.path, d.kind))
            .collect();
        let want = [
            ("$.gone", DiffKind::MissingOnShadow),
            ("$.n", DiffKind::ValueDiffers),
            ("$.new", DiffKind::MissingOnPrimary),
            ("$.o", DiffKind::TypeChanged),
            ("$.r.card", DiffKind::ValueDiffers),
            ("$.t", DiffKind::TypeChanged),
        ];
        let want: Vec<(String, DiffKind)> = want.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(kinds, want);
    }

    #[test]
    fn field_keys_generalise_array_indices_and_xml_occurrences() {
        assert_eq!(field_key("$.items[3].ts"), "items.*.ts");
        assert_eq!(field_key("$.a[0][12].b"), "a.*.*.b");
        assert_eq!(field_key("$.generated_at"), "generated_at");
        assert_eq!(field_key("$.stats.2024"), "stats.2024");
        assert_eq!(field_key("$"), ".");
        // Not an index: kept as written, and never a panic.
        assert_eq!(field_key("$.x["), "x[");
        assert_eq!(field_key("$.x[a]"), "x[a]");
        assert_eq!(field_key("/Order/Item[1]/#text"), "Order.Item.#text");
        assert_eq!(field_key("/Order/Item/#text"), "Order.Item.#text");
        assert_eq!(field_key("/Order/@id"), "Order.@id");
        for same in ["status", "header x-request-id", "body"] {
            assert_eq!(field_key(same), same);
        }
        // A generalised key is an `ignore` rule that covers the field it came from.
        let p = FieldPath::parse(&field_key("$.items[3].ts")).unwrap();
        assert!(p.covers(&[Step::Key("items"), Step::Index(7), Step::Key("ts")]));
    }

    #[test]
    fn other_bodies_compare_as_bytes() {
        assert!(diff_bodies("text/plain", b"x", b"x", &rules(&[])).is_empty());
        assert_eq!(diff_bodies("text/plain", b"x", b"y", &rules(&[]))[0].path, "body");
    }
}
