//! The one field-path syntax, for translation ops (`rename: {path: items.*.id}`) and shadow
//! diff `ignore` rules alike: dot-separated keys, a number indexes an array, `*` is every element
//! of an array. `""` (or `.`) is the whole document. A key that contains a dot, or that is `*`,
//! cannot be named. Paths are parsed once, when the config is compiled.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(pub Vec<Seg>);

/// One step of a position in a document, as a comparison walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
    /// XML: which element of that name under the same parent (0 for the first). A path may
    /// name it (`Order.Item.1`, `Order.Item.*`) or not (`Order.Item`: every `Item`).
    Occurrence(usize),
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match s {
                Seg::Key(k) => f.write_str(k)?,
                Seg::Index(n) => write!(f, "{n}")?,
                Seg::All => f.write_str("*")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    /// `""` (or `.`) is the whole document.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s == "." {
            return Ok(Self(Vec::new()));
        }
        let mut segs = Vec::new();
        for part in s.split('.') {
            if part.is_empty() {
                return Err(format!("`{s}` has an empty segment"));
            }
            segs.push(match part {
                "*" => Seg::All,
                p if p.bytes().all(|b| b.is_ascii_digit()) => {
                    Seg::Index(p.parse().map_err(|_| format!("`{p}` is not an index"))?)
                }
                p => Seg::Key(p.to_string()),
            });
        }
        Ok(Self(segs))
    }

    /// The JSONPath-like spelling shadow `ignore` rules used before this syntax: `$.a[*].b`,
    /// `$.a[0]` (JSON) or `/Order/Item[1]/@id` (XML). `None` when `s` is not in that spelling.
    pub fn parse_old_spelling(s: &str) -> Option<Result<Self, String>> {
        match s.strip_prefix('$') {
            Some(rest) => Some(Self::old_steps(s, rest, '.')),
            None if s.starts_with('/') => Some(Self::old_steps(s, s, '/')),
            None => None,
        }
    }

    /// `<sep>name[i]<sep>name[*]...` after the root.
    fn old_steps(whole: &str, mut rest: &str, sep: char) -> Result<Self, String> {
        let mut segs = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let Some((inside, after)) = r.split_once(']') else {
                    return Err(format!("`{whole}`: a `[` is not closed"));
                };
                segs.push(match inside {
                    "*" => Seg::All,
                    n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => match n.parse() {
                        Ok(i) => Seg::Index(i),
                        Err(_) => return Err(format!("`{whole}`: `{n}` is not an index")),
                    },
                    other => return Err(format!("`{whole}`: `[{other}]` is not `[*]` or an index")),
                });
                rest = after;
            } else if let Some(r) = rest.strip_prefix(sep) {
                let end = r.find([sep, '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(format!("`{whole}` has an empty segment"));
                }
                segs.push(Seg::Key(r[..end].to_string()));
                rest = &r[end..];
            } else {
                return Err(format!("`{whole}`: expected `{sep}` or `[` at `{rest}`"));
            }
        }
        Ok(Self(segs))
    }

    /// Whether this path names `at` or something above it (a diff rule covers what is below).
    pub fn covers(&self, at: &[Step<'_>]) -> bool {
        let (mut p, mut a) = (&self.0[..], at);
        loop {
            let Some((seg, p_rest)) = p.split_first() else {
                return true;
            };
            let Some((step, a_rest)) = a.split_first() else {
                return false;
            };
            let (took_seg, ok) = match (seg, step) {
                (Seg::Index(i), Step::Occurrence(n) | Step::Index(n)) => (true, i == n),
                (Seg::All, Step::Occurrence(_) | Step::Index(_)) => (true, true),
                // An unnamed occurrence: every element of that name.
                (_, Step::Occurrence(_)) => (false, true),
                (Seg::Key(k), Step::Key(s)) => (true, k == s),
                // A key of digits (`{"2024": ..}`) parses as an index.
                (Seg::Index(i), Step::Key(s)) => (true, s.parse::<usize>().is_ok_and(|n| n == *i)),
                (Seg::Key(_) | Seg::All, _) => (true, false),
            };
            if !ok {
                return false;
            }
            if took_seg {
                p = p_rest;
            }
            a = a_rest;
        }
    }

    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&Seg::All)
    }

    pub fn split_last(&self) -> Option<(FieldPath, Seg)> {
        let (last, parent) = self.0.split_last()?;
        Some((FieldPath(parent.to_vec()), last.clone()))
    }

    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for s in &self.0 {
            cur = match (s, cur) {
                (Seg::Key(k), Value::Object(m)) => m.get(k)?,
                (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Calls `f` on every value the path reaches (wildcards expand); missing paths reach nothing.
    pub fn for_each_mut<E>(
        &self,
        v: &mut Value,
        f: &mut dyn FnMut(&mut Value) -> Result<(), E>,
    ) -> Result<(), E> {
        visit(&self.0, v, f)
    }

    /// Removes and returns the value at a wildcard-free path.
    pub fn take(&self, v: &mut Value) -> Option<Value> {
        let (parent, last) = self.split_last()?;
        let p = parent.get_mut(v)?;
        match (last, p) {
            (Seg::Key(k), Value::Object(m)) => m.remove(&k),
            (Seg::Index(i), Value::Array(a)) if i < a.len() => Some(a.remove(i)),
            _ => None,
        }
    }

    fn get_mut<'a>(&self, v: &'a mut Value) -> Option<&'a mut Value> {
        let mut cur = v;
        for s in &self.0 {
            cur = match (s, cur) {
                (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
                (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Puts `new` at a wildcard-free path, creating objects on the way. An index may append.
    pub fn put(&self, v: &mut Value, new: Value) -> Result<(), String> {
        let mut cur = v;
        for s in &self.0 {
            if cur.is_null() {
                *cur = match s {
                    Seg::Index(_) => Value::Array(Vec::new()),
                    _ => Value::Object(Map::new()),
                };
            }
            cur = match (s, cur) {
                (Seg::Key(k), Value::Object(m)) => m.entry(k.clone()).or_insert(Value::Null),
                (Seg::Index(i), Value::Array(a)) => {
                    if *i == a.len() {
                        a.push(Value::Null);
                    }
                    a.get_mut(*i)
                        .ok_or_else(|| format!("index {i} is past the array's end"))?
                }
                (s, other) => {
                    return Err(format!("cannot step into {} with {s:?}", kind(other)));
                }
            };
        }
        *cur = new;
        Ok(())
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn visit<E>(segs: &[Seg], v: &mut Value, f: &mut dyn FnMut(&mut Value) -> Result<(), E>) -> Result<(), E> {
    let Some((first, rest)) = segs.split_first() else {
        return f(v);
    };
    match (first, v) {
        (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
            Some(next) => visit(rest, next, f),
            None => Ok(()),
        },
        (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
            Some(next) => visit(rest, next, f),
            None => Ok(()),
        },
        (Seg::All, Value::Array(a)) => {
            for next in a {
                visit(rest, next, f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_reach_nested_keys_and_array_elements() {
        let v = json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        assert_eq!(FieldPath::parse("a.b.1.c").unwrap().get(&v), Some(&json!(2)));
        let mut v2 = v.clone();
        let mut seen = Vec::new();
        FieldPath::parse("a.b.*.c")
            .unwrap()
            .for_each_mut::<()>(&mut v2, &mut |x| {
                seen.push(x.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![json!(1), json!(2)]);
    }

    #[test]
    fn old_diff_spellings_parse_to_the_same_paths_and_print_in_the_new_one() {
        let old = |s: &str| FieldPath::parse_old_spelling(s).unwrap().unwrap();
        assert_eq!(old("$.items[*].id"), FieldPath::parse("items.*.id").unwrap());
        assert_eq!(old("$.a[0][1].b").to_string(), "a.0.1.b");
        assert_eq!(old("/Order/Item[1]/@id").to_string(), "Order.Item.1.@id");
        assert_eq!(old("$").to_string(), ".");
        assert!(FieldPath::parse_old_spelling("items.*.id").is_none());
        for bad in ["$.x[", "$x", "$.a..b", "$.a[x]", "//a"] {
            assert!(FieldPath::parse_old_spelling(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_path_covers_what_is_below_it_and_xml_occurrences_are_optional() {
        let p = |s: &str| FieldPath::parse(s).unwrap();
        let at = [Step::Key("items"), Step::Index(3), Step::Key("id")];
        assert!(p("items.*.id").covers(&at) && p("items").covers(&at) && p("items.3").covers(&at));
        assert!(!p("items.2").covers(&at) && !p("items.*.idx").covers(&at) && !p("items.*.id.x").covers(&at));
        assert!(p("stats.2024").covers(&[Step::Key("stats"), Step::Key("2024")]));
        let xml = [
            Step::Key("Order"),
            Step::Occurrence(0),
            Step::Key("Item"),
            Step::Occurrence(1),
            Step::Key("#text"),
        ];
        assert!(
            p("Order.Item").covers(&xml)
                && p("Order.Item.1.#text").covers(&xml)
                && p("Order.Item.*").covers(&xml)
        );
        assert!(!p("Order.Item.0").covers(&xml) && !p("Order.Other").covers(&xml));
    }

    #[test]
    fn put_creates_objects_and_take_removes() {
        let mut v = json!({});
        FieldPath::parse("x.y").unwrap().put(&mut v, json!(5)).unwrap();
        assert_eq!(v, json!({"x": {"y": 5}}));
        assert_eq!(FieldPath::parse("x.y").unwrap().take(&mut v), Some(json!(5)));
        assert_eq!(v, json!({"x": {}}));
        assert!(FieldPath::parse("a..b").is_err());
    }
}
