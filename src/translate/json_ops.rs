//! Field operations on a JSON document, compiled once from `OpConfig`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::dates::{parse_zone, DateFormat, Zone};
use super::path::{kind, FieldPath, Seg};
use crate::config::transform::{ConvertTo, MoneyTo, OpConfig};

#[derive(Debug)]
pub enum JsonOp {
    Rename {
        parent: FieldPath,
        from: String,
        to: String,
    },
    Move {
        base: FieldPath,
        from: FieldPath,
        to: FieldPath,
        keep: bool,
    },
    Set {
        path: FieldPath,
        value: Value,
        only_missing: bool,
    },
    Delete {
        parent: FieldPath,
        last: Seg,
    },
    Wrap(String),
    Unwrap(String),
    Map {
        path: FieldPath,
        values: BTreeMap<String, Value>,
        default: Option<Value>,
    },
    Convert {
        path: FieldPath,
        to: ConvertTo,
    },
    Date {
        path: FieldPath,
        from: DateFormat,
        to: DateFormat,
        zone: Zone,
    },
    Split {
        path: FieldPath,
        sep: String,
    },
    Join {
        path: FieldPath,
        sep: String,
    },
    Money {
        path: FieldPath,
        to: MoneyTo,
        scale: u32,
    },
    Each {
        path: FieldPath,
        ops: Vec<JsonOp>,
    },
}

/// Why an operation could not be applied to this document.
pub type OpError = String;

impl JsonOp {
    /// `None` for the format conversions, which `mod.rs` compiles itself.
    pub fn compile(op: &OpConfig) -> Result<Option<Self>, String> {
        let p = |s: &str| FieldPath::parse(s);
        Ok(Some(match op {
            OpConfig::XmlToJson(_)
            | OpConfig::JsonToXml(_)
            | OpConfig::SoapWrap(_)
            | OpConfig::SoapUnwrap(_)
            | OpConfig::FormToJson(_)
            | OpConfig::JsonToForm(_) => return Ok(None),
            OpConfig::Rename { path, to } => {
                let (parent, last) = p(path)?.split_last().ok_or("rename needs a field path")?;
                let Seg::Key(from) = last else {
                    return Err(format!("`{path}` must end in a field name"));
                };
                if to.is_empty() || to.contains('.') {
                    return Err("`to` is a plain field name (use `move` to change the nesting)".into());
                }
                Self::Rename {
                    parent,
                    from,
                    to: to.clone(),
                }
            }
            OpConfig::Move { from, to } | OpConfig::Copy { from, to } => {
                let (from, to) = (p(from)?, p(to)?);
                // A wildcard is allowed only in a prefix both paths share: the move happens
                // inside each element.
                let split = from.0.iter().rposition(|s| *s == Seg::All).map_or(0, |i| i + 1);
                let base = FieldPath(from.0[..split].to_vec());
                if to.0.len() < split || to.0[..split] != base.0[..] {
                    return Err("a `*` must be in a prefix `from` and `to` share (or use `each`)".into());
                }
                let (from, to) = (
                    FieldPath(from.0[split..].to_vec()),
                    FieldPath(to.0[split..].to_vec()),
                );
                if from.0.is_empty() || to.has_wildcard() {
                    return Err("`from` and `to` must name fields".into());
                }
                Self::Move {
                    base,
                    from,
                    to,
                    keep: matches!(op, OpConfig::Copy { .. }),
                }
            }
            OpConfig::Set { path, value } | OpConfig::Default { path, value } => {
                let path = p(path)?;
                if path.0.is_empty() {
                    return Err("`path` must name a field".into());
                }
                Self::Set {
                    path,
                    value: value.clone(),
                    only_missing: matches!(op, OpConfig::Default { .. }),
                }
            }
            OpConfig::Delete { path } => {
                let (parent, last) = p(path)?.split_last().ok_or("delete needs a field path")?;
                Self::Delete { parent, last }
            }
            OpConfig::Wrap { key } => Self::Wrap(key.clone()),
            OpConfig::Unwrap { key } => Self::Unwrap(key.clone()),
            OpConfig::Map(m) => Self::Map {
                path: p(&m.path)?,
                values: m.values.clone(),
                default: m.default.clone(),
            },
            OpConfig::Convert { path, to } => Self::Convert {
                path: p(path)?,
                to: *to,
            },
            OpConfig::Date(d) => Self::Date {
                path: p(&d.path)?,
                from: DateFormat::parse(&d.from).map_err(|e| format!("from: {e}"))?,
                to: DateFormat::parse(&d.to).map_err(|e| format!("to: {e}"))?,
                zone: d.tz.as_deref().map(parse_zone).transpose()?.unwrap_or_default(),
            },
            OpConfig::Split { path, separator } | OpConfig::Join { path, separator } => {
                if separator.is_empty() {
                    return Err("`separator` must not be empty".into());
                }
                let (path, sep) = (p(path)?, separator.clone());
                if matches!(op, OpConfig::Split { .. }) {
                    Self::Split { path, sep }
                } else {
                    Self::Join { path, sep }
                }
            }
            OpConfig::Money(m) => {
                if m.scale > 6 {
                    return Err("`scale` is at most 6".into());
                }
                Self::Money {
                    path: p(&m.path)?,
                    to: m.to,
                    scale: m.scale,
                }
            }
            OpConfig::Each { path, ops } => {
                let mut compiled = Vec::new();
                for (i, o) in ops.iter().enumerate() {
                    match Self::compile(o).map_err(|e| format!("ops[{i}]: {e}"))? {
                        Some(c) => compiled.push(c),
                        None => return Err(format!("ops[{i}]: format conversions cannot run per element")),
                    }
                }
                Self::Each {
                    path: p(path)?,
                    ops: compiled,
                }
            }
        }))
    }

    pub fn apply(&self, doc: &mut Value) -> Result<(), OpError> {
        match self {
            Self::Rename { parent, from, to } => parent.for_each_mut(doc, &mut |v| {
                if let Value::Object(m) = v {
                    if let Some(x) = m.remove(from) {
                        m.insert(to.clone(), x);
                    }
                }
                Ok(())
            }),
            Self::Move { base, from, to, keep } => base.for_each_mut(doc, &mut |v| {
                let taken = if *keep { from.get(v).cloned() } else { from.take(v) };
                match taken {
                    Some(x) => to.put(v, x),
                    None => Ok(()),
                }
            }),
            Self::Set {
                path,
                value,
                only_missing,
            } => {
                if *only_missing && path.get(doc).is_some_and(|v| !v.is_null()) {
                    return Ok(());
                }
                if path.has_wildcard() {
                    let Some((parent, Seg::Key(k))) = path.split_last() else {
                        return Err("a wildcard `set` must end in a field name".into());
                    };
                    return parent.for_each_mut(doc, &mut |v| {
                        if let Value::Object(m) = v {
                            let e = m.entry(k.clone()).or_insert(Value::Null);
                            if !*only_missing || e.is_null() {
                                *e = value.clone();
                            }
                        }
                        Ok(())
                    });
                }
                path.put(doc, value.clone())
            }
            Self::Delete { parent, last } => parent.for_each_mut(doc, &mut |v| {
                match (last, v) {
                    (Seg::Key(k), Value::Object(m)) => {
                        m.remove(k);
                    }
                    (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    (Seg::All, Value::Array(a)) => a.clear(),
                    _ => {}
                }
                Ok(())
            }),
            Self::Wrap(key) => {
                let inner = std::mem::take(doc);
                let mut m = Map::new();
                m.insert(key.clone(), inner);
                *doc = Value::Object(m);
                Ok(())
            }
            Self::Unwrap(key) => match doc {
                Value::Object(m) => match m.remove(key) {
                    Some(inner) => {
                        *doc = inner;
                        Ok(())
                    }
                    None => Err(format!("unwrap: the document has no `{key}` field")),
                },
                other => Err(format!("unwrap: the document is {}", kind(other))),
            },
            Self::Map {
                path,
                values,
                default,
            } => path.for_each_mut(doc, &mut |v| {
                let key = match &*v {
                    Value::String(s) => s.clone(),
                    Value::Null => return Ok(()),
                    other => other.to_string(),
                };
                *v = match (values.get(&key), default) {
                    (Some(x), _) => x.clone(),
                    (None, Some(d)) => d.clone(),
                    (None, None) => return Err(format!("map: `{key}` has no mapping")),
                };
                Ok(())
            }),
            Self::Convert { path, to } => path.for_each_mut(doc, &mut |v| convert(v, *to)),
            Self::Date { path, from, to, zone } => path.for_each_mut(doc, &mut |v| {
                if v.is_null() || v.as_str() == Some("") {
                    return Ok(());
                }
                let ms = from.read(v, zone).map_err(|e| format!("date: {e}"))?;
                *v = to.write(ms, zone);
                Ok(())
            }),
            Self::Split { path, sep } => path.for_each_mut(doc, &mut |v| {
                if let Value::String(s) = v {
                    let parts = if s.is_empty() {
                        Vec::new()
                    } else {
                        s.split(sep.as_str()).map(|p| Value::from(p.trim())).collect()
                    };
                    *v = Value::Array(parts);
                }
                Ok(())
            }),
            Self::Join { path, sep } => path.for_each_mut(doc, &mut |v| {
                if let Value::Array(a) = v {
                    let parts: Vec<String> = a
                        .iter()
                        .map(|x| match x {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    *v = Value::from(parts.join(sep));
                }
                Ok(())
            }),
            Self::Money { path, to, scale } => path.for_each_mut(doc, &mut |v| {
                if v.is_null() {
                    return Ok(());
                }
                *v = match to {
                    MoneyTo::Decimal => Value::from(cents_to_decimal(v, *scale)?),
                    MoneyTo::Cents => Value::from(decimal_to_cents(v, *scale)?),
                };
                Ok(())
            }),
            Self::Each { path, ops } => path.for_each_mut(doc, &mut |v| {
                let items: Vec<&mut Value> = match v {
                    Value::Array(a) => a.iter_mut().collect(),
                    other => vec![other],
                };
                for item in items {
                    for op in ops {
                        op.apply(item)?;
                    }
                }
                Ok(())
            }),
        }
    }
}

fn convert(v: &mut Value, to: ConvertTo) -> Result<(), OpError> {
    let new = match (to, &*v) {
        (_, Value::Null) => return Ok(()),
        (ConvertTo::String, Value::String(_)) => return Ok(()),
        (ConvertTo::String, Value::Number(n)) => Value::from(n.to_string()),
        (ConvertTo::String, Value::Bool(b)) => Value::from(b.to_string()),
        (ConvertTo::Number, Value::Number(_)) => return Ok(()),
        (ConvertTo::Number, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Value::from(i)
            } else {
                match t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(n) => Value::Number(n),
                    None => return Err(format!("convert: `{s}` is not a number")),
                }
            }
        }
        (ConvertTo::Number, Value::Bool(b)) => Value::from(u8::from(*b)),
        (ConvertTo::Bool, Value::Bool(_)) => return Ok(()),
        (ConvertTo::Bool, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "y" | "yes" | "t" => Value::Bool(true),
            "false" | "0" | "n" | "no" | "f" | "" => Value::Bool(false),
            _ => return Err(format!("convert: `{s}` is not a boolean")),
        },
        (ConvertTo::Bool, Value::Number(n)) => Value::Bool(n.as_f64() != Some(0.0)),
        (_, other) => return Err(format!("convert: cannot convert {}", kind(other))),
    };
    *v = new;
    Ok(())
}

fn cents_to_decimal(v: &Value, scale: u32) -> Result<String, OpError> {
    let cents: i64 = match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("money: {n} is not whole minor units"))?,
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("money: `{s}` is not whole minor units"))?,
        other => return Err(format!("money: expected minor units, got {}", kind(other))),
    };
    if scale == 0 {
        return Ok(cents.to_string());
    }
    let unit = 10i64.pow(scale);
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    let unit = unit as u64;
    Ok(format!(
        "{sign}{}.{:0width$}",
        a / unit,
        a % unit,
        width = scale as usize
    ))
}

fn decimal_to_cents(v: &Value, scale: u32) -> Result<i64, OpError> {
    // Parsed as text so that 19.99 becomes 1999 exactly, never 1998.9999.
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().replace(',', "."),
        other => return Err(format!("money: expected a decimal, got {}", kind(other))),
    };
    let bad = || format!("money: `{text}` is not a decimal amount with at most {scale} places");
    let (neg, t) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > scale as usize
    {
        return Err(bad());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<width$}", width = scale as usize)
            .parse()
            .map_err(|_| bad())?
    };
    let n = whole
        .checked_mul(10i64.pow(scale))
        .and_then(|w| w.checked_add(frac_val))
        .ok_or_else(bad)?;
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(yaml: &str, mut doc: Value) -> Result<Value, String> {
        let ops: Vec<crate::config::transform::OpEntry> = serde_yaml_ng::from_str(yaml).unwrap();
        for o in &ops {
            JsonOp::compile(&o.0)?.unwrap().apply(&mut doc)?;
        }
        Ok(doc)
    }

    #[test]
    fn rename_move_copy_and_delete_reshape_nested_fields() {
        let doc = json!({"CUST_NO": "42", "ADDR": {"ZIP": "75001"}, "TMP": 1, "lines": [{"Q": 1}, {"Q": 2}]});
        let out = run(
            "- rename: {path: CUST_NO, to: customer_id}\n\
             - move: {from: ADDR.ZIP, to: address.postcode}\n\
             - copy: {from: customer_id, to: meta.owner}\n\
             - delete: {path: TMP}\n\
             - rename: {path: lines.*.Q, to: quantity}\n\
             - move: {from: lines.*.quantity, to: lines.*.qty.value}",
            doc,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"customer_id": "42", "ADDR": {}, "address": {"postcode": "75001"},
                   "meta": {"owner": "42"}, "lines": [{"qty": {"value": 1}}, {"qty": {"value": 2}}]})
        );
    }

    #[test]
    fn set_default_wrap_and_unwrap() {
        let out = run(
            "- set: {path: version, value: 2}\n- default: {path: currency, value: EUR}\n\
             - default: {path: version, value: 9}\n- wrap: {key: data}",
            json!({}),
        )
        .unwrap();
        assert_eq!(out, json!({"data": {"version": 2, "currency": "EUR"}}));
        assert_eq!(
            run("- unwrap: {key: data}", out).unwrap(),
            json!({"version": 2, "currency": "EUR"})
        );
        assert!(run("- unwrap: {key: data}", json!({"x": 1})).is_err());
    }

    #[test]
    fn enum_maps_use_the_default_or_fail() {
        let yaml = "- map: {path: s, values: {A: active, C: closed}}";
        assert_eq!(run(yaml, json!({"s": "A"})).unwrap(), json!({"s": "active"}));
        assert!(run(yaml, json!({"s": "Z"})).unwrap_err().contains("`Z`"));
        let yaml = "- map: {path: s, values: {A: active}, default: unknown}";
        assert_eq!(run(yaml, json!({"s": "Z"})).unwrap(), json!({"s": "unknown"}));
    }

    #[test]
    fn conversions_split_join_and_money() {
        let out = run(
            "- convert: {path: n, to: number}\n- convert: {path: b, to: bool}\n- convert: {path: s, to: string}\n\
             - split: {path: tags, separator: ','}\n- join: {path: names, separator: ' '}\n\
             - money: {path: total, to: decimal}\n- money: {path: price, to: cents}",
            json!({"n": "12", "b": "Y", "s": 7, "tags": "a, b,c", "names": ["Ada", "Lovelace"],
                   "total": 1999, "price": "0.07"}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"n": 12, "b": true, "s": "7", "tags": ["a", "b", "c"], "names": "Ada Lovelace",
                   "total": "19.99", "price": 7})
        );
        assert_eq!(cents_to_decimal(&json!(-5), 2).unwrap(), "-0.05");
        assert!(decimal_to_cents(&json!("1.999"), 2).is_err());
        assert!(run("- convert: {path: n, to: number}", json!({"n": "abc"})).is_err());
    }

    #[test]
    fn each_runs_ops_on_every_array_element() {
        let out = run(
            "- each: {path: items, ops: [{rename: {path: SKU, to: sku}}, {money: {path: P, to: decimal}}]}",
            json!({"items": [{"SKU": "a", "P": 100}, {"SKU": "b", "P": 250}]}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"items": [{"sku": "a", "P": "1.00"}, {"sku": "b", "P": "2.50"}]})
        );
    }

    #[test]
    fn wildcards_outside_a_shared_prefix_are_refused() {
        let op: crate::config::transform::OpEntry =
            serde_yaml_ng::from_str("move: {from: a.*.x, to: b.x}").unwrap();
        assert!(JsonOp::compile(&op.0).is_err());
    }
}
