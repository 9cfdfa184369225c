//! Field paths: dot-separated keys, a number indexes an array, `*` is every element.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(pub Vec<Seg>);

impl Path {
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

    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&Seg::All)
    }

    pub fn split_last(&self) -> Option<(Path, Seg)> {
        let (last, parent) = self.0.split_last()?;
        Some((Path(parent.to_vec()), last.clone()))
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
        assert_eq!(Path::parse("a.b.1.c").unwrap().get(&v), Some(&json!(2)));
        let mut v2 = v.clone();
        let mut seen = Vec::new();
        Path::parse("a.b.*.c")
            .unwrap()
            .for_each_mut::<()>(&mut v2, &mut |x| {
                seen.push(x.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![json!(1), json!(2)]);
    }

    #[test]
    fn put_creates_objects_and_take_removes() {
        let mut v = json!({});
        Path::parse("x.y").unwrap().put(&mut v, json!(5)).unwrap();
        assert_eq!(v, json!({"x": {"y": 5}}));
        assert_eq!(Path::parse("x.y").unwrap().take(&mut v), Some(json!(5)));
        assert_eq!(v, json!({"x": {}}));
        assert!(Path::parse("a..b").is_err());
    }
}
