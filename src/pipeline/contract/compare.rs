//! Differences between what legacy and modern answer, and which of them break a client.
//!
//! The client was written against legacy, so modern breaks it when it sends something the client
//! never got from legacy, or stops sending something it did:
//! - `missing_on_modern`: a field legacy sent is never sent by modern (breaking);
//! - `became_optional`: a field legacy sent in every object is absent from some modern ones
//!   (breaking);
//! - `type_changed`: modern sends a JSON type legacy never sent there (breaking; `integer` where
//!   legacy sent `number` is not new, `number` where legacy sent only `integer` is); a modern
//!   type set that is narrower than legacy's is reported as not breaking;
//! - `became_nullable`: modern sends `null` where legacy never did (breaking);
//! - `new_enum_value`: legacy's values there are enum-like and modern sends a value legacy never
//!   produced (breaking);
//! - `new_field_on_modern`: a field only modern sends (not breaking: clients ignore it);
//! - `status_set_changed`: the sets of status codes differ; breaking when modern answers with a
//!   status legacy never gave, not breaking when it only gives fewer of them.
//!
//! Paths use the field-path syntax of the shadow diffs (`items.*.price`); `$` is the body itself.

use serde::Serialize;
use serde_json::Value;

use super::shape::{Kind, Shape};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub kind: &'static str,
    pub path: String,
    /// What the difference is about: `response` (bodies) or `status`.
    #[serde(rename = "in")]
    pub within: &'static str,
    pub legacy: Value,
    pub modern: Value,
    pub breaking: bool,
}

/// Status-code sets: `legacy` and `modern` sorted.
pub fn statuses(legacy: &[u16], modern: &[u16]) -> Option<Difference> {
    if legacy == modern || legacy.is_empty() || modern.is_empty() {
        return None;
    }
    Some(Difference {
        kind: "status_set_changed",
        path: "status".into(),
        within: "status",
        legacy: Value::from(legacy.to_vec()),
        modern: Value::from(modern.to_vec()),
        breaking: modern.iter().any(|s| !legacy.contains(s)),
    })
}

/// Body shapes, from the root down.
pub fn shapes(legacy: &Shape, modern: &Shape) -> Vec<Difference> {
    let mut out = Vec::new();
    if legacy.seen > 0 && modern.seen > 0 {
        walk("$", legacy, modern, &mut out);
    }
    out
}

fn join(path: &str, field: &str) -> String {
    if path == "$" {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn kinds_value(k: &std::collections::BTreeSet<Kind>) -> Value {
    Value::from(k.iter().map(|k| k.name()).collect::<Vec<_>>())
}

fn walk(path: &str, legacy: &Shape, modern: &Shape, out: &mut Vec<Difference>) {
    let (lk, mk) = (legacy.kinds(), modern.kinds());
    let covered = |k: &Kind| lk.contains(k) || (*k == Kind::Integer && lk.contains(&Kind::Number));
    let new_kinds: Vec<Kind> = mk
        .iter()
        .copied()
        .filter(|k| *k != Kind::Null && !covered(k))
        .collect();
    let (l_no_null, m_no_null): (Vec<_>, Vec<_>) = (
        lk.iter().filter(|k| **k != Kind::Null).collect(),
        mk.iter().filter(|k| **k != Kind::Null).collect(),
    );
    if !new_kinds.is_empty() {
        out.push(diff(
            "type_changed",
            path,
            kinds_value(&lk),
            kinds_value(&mk),
            true,
        ));
    } else if l_no_null != m_no_null && !m_no_null.is_empty() {
        out.push(diff(
            "type_changed",
            path,
            kinds_value(&lk),
            kinds_value(&mk),
            false,
        ));
    }
    if mk.contains(&Kind::Null) && !lk.contains(&Kind::Null) {
        out.push(diff(
            "became_nullable",
            path,
            Value::Bool(false),
            Value::Bool(true),
            true,
        ));
    }
    if let Some(values) = legacy.enum_values() {
        if modern.many_strings() {
            out.push(diff(
                "new_enum_value",
                path,
                Value::from(values.iter().cloned().collect::<Vec<_>>()),
                Value::from(format!(
                    "more than {} distinct values",
                    super::shape::ENUM_MAX_VALUES
                )),
                true,
            ));
        } else if let Some(m) = modern.strings.as_ref().and_then(|s| s.values.as_ref()) {
            let new: Vec<&String> = m.iter().filter(|v| !values.contains(*v)).collect();
            if !new.is_empty() {
                out.push(diff(
                    "new_enum_value",
                    path,
                    Value::from(values.iter().cloned().collect::<Vec<_>>()),
                    Value::from(new.into_iter().cloned().collect::<Vec<_>>()),
                    true,
                ));
            }
        }
    }
    if let (Some(la), Some(ma)) = (&legacy.array, &modern.array) {
        if la.items.seen > 0 && ma.items.seen > 0 {
            walk(&join(path, "*"), &la.items, &ma.items, out);
        }
    }
    let (Some(lo), Some(mo)) = (&legacy.object, &modern.object) else {
        return;
    };
    for (name, lf) in &lo.fields {
        let p = join(path, name);
        let required = lf.seen == lo.count;
        match mo.fields.get(name) {
            // A field modern's object was too big to learn is not known to be missing.
            None if mo.incomplete => {}
            None => out.push(diff(
                "missing_on_modern",
                &p,
                Value::from(if required { "required" } else { "optional" }),
                Value::from("absent"),
                true,
            )),
            Some(mf) => {
                if required && mf.seen < mo.count {
                    out.push(diff(
                        "became_optional",
                        &p,
                        Value::from("required"),
                        Value::from("optional"),
                        true,
                    ));
                }
                walk(&p, lf, mf, out);
            }
        }
    }
    for (name, mf) in &mo.fields {
        if !lo.fields.contains_key(name) && !lo.incomplete {
            let required = mf.seen == mo.count;
            out.push(diff(
                "new_field_on_modern",
                &join(path, name),
                Value::from("absent"),
                Value::from(if required { "required" } else { "optional" }),
                false,
            ));
        }
    }
}

fn diff(kind: &'static str, path: &str, legacy: Value, modern: Value, breaking: bool) -> Difference {
    Difference {
        kind,
        path: path.to_string(),
        within: "response",
        legacy,
        modern,
        breaking,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::super::shape::{Learned, ENUM_MIN_SAMPLES};
    use super::*;

    fn learn(docs: &[Value]) -> Learned {
        let mut l = Learned::default();
        for d in docs {
            l.observe(d);
        }
        l
    }

    fn kinds(d: &[Difference]) -> Vec<(&str, &str, bool)> {
        d.iter().map(|d| (d.kind, d.path.as_str(), d.breaking)).collect()
    }

    fn orders(state: impl Fn(usize) -> &'static str, f: impl Fn(usize) -> Value) -> Vec<Value> {
        (0..ENUM_MIN_SAMPLES as usize)
            .map(|i| {
                let mut v = f(i);
                v["state"] = Value::from(state(i));
                v
            })
            .collect()
    }

    #[test]
    fn equal_shapes_have_no_differences() {
        let l = learn(&orders(
            |i| ["open", "paid"][i % 2],
            |i| json!({"id": i, "total": 1.5}),
        ));
        let m = learn(&orders(
            |i| ["paid", "open"][i % 2],
            |i| json!({"id": i, "total": 2.25}),
        ));
        assert_eq!(shapes(&l.root, &m.root), vec![]);
    }

    #[test]
    fn a_dropped_field_a_changed_type_and_a_new_enum_value_are_breaking() {
        let l = learn(&orders(
            |i| ["open", "paid"][i % 2],
            |i| json!({"id": i, "total": 10, "currency": "EUR"}),
        ));
        let m = learn(&orders(
            |i| ["open", "paid", "refunded"][i % 3],
            |i| json!({"id": i, "total": "10.00"}),
        ));
        let d = shapes(&l.root, &m.root);
        assert_eq!(
            kinds(&d),
            vec![
                ("missing_on_modern", "currency", true),
                ("new_enum_value", "state", true),
                ("type_changed", "total", true),
            ]
        );
        assert_eq!(d[1].modern, json!(["refunded"]));
        assert_eq!(d[2].legacy, json!(["integer"]));
        assert_eq!(d[2].modern, json!(["string"]));
    }

    #[test]
    fn a_new_field_on_modern_is_not_breaking() {
        let l = learn(&[json!({"id": 1})]);
        let m = learn(&[json!({"id": 1, "links": {"self": "/x"}})]);
        assert_eq!(
            kinds(&shapes(&l.root, &m.root)),
            vec![("new_field_on_modern", "links", false)]
        );
    }

    #[test]
    fn a_required_field_turning_optional_or_nullable_is_breaking() {
        let l = learn(&[json!({"a": 1, "b": "x"}), json!({"a": 2, "b": "y"})]);
        let m = learn(&[json!({"a": 1, "b": null}), json!({"b": "y"})]);
        assert_eq!(
            kinds(&shapes(&l.root, &m.root)),
            vec![("became_optional", "a", true), ("became_nullable", "b", true)]
        );
    }

    #[test]
    fn integers_where_legacy_sent_numbers_are_fine_but_not_the_reverse() {
        let num = learn(&[json!({"p": 1.5}), json!({"p": 2})]);
        let int = learn(&[json!({"p": 1}), json!({"p": 2})]);
        assert_eq!(
            kinds(&shapes(&num.root, &int.root)),
            vec![("type_changed", "p", false)]
        );
        assert_eq!(
            kinds(&shapes(&int.root, &num.root)),
            vec![("type_changed", "p", true)]
        );
    }

    #[test]
    fn array_items_are_compared_with_a_star_path() {
        let l = learn(&[json!({"items": [{"sku": "a", "qty": 1}]})]);
        let m = learn(&[json!({"items": [{"sku": "a"}]})]);
        assert_eq!(
            kinds(&shapes(&l.root, &m.root)),
            vec![("missing_on_modern", "items.*.qty", true)]
        );
    }

    #[test]
    fn status_sets_break_only_when_modern_adds_a_status() {
        assert_eq!(statuses(&[200, 404], &[200, 404]), None);
        let fewer = statuses(&[200, 404], &[200]).unwrap();
        assert!(!fewer.breaking);
        let more = statuses(&[200], &[200, 500]).unwrap();
        assert!(more.breaking);
        assert_eq!(more.kind, "status_set_changed");
        assert_eq!(more.modern, json!([200, 500]));
        assert_eq!(statuses(&[200], &[]), None, "nothing seen from modern yet");
    }

    #[test]
    fn a_legacy_string_that_is_not_enum_like_never_reports_new_values() {
        let l = learn(&[json!({"s": "a"}), json!({"s": "b"})]);
        let m = learn(&[json!({"s": "c"})]);
        assert_eq!(shapes(&l.root, &m.root), vec![]);
    }
}
