//! The JSON shape learned from observed bodies, and its JSON Schema (draft 2020-12).
//!
//! A [`Shape`] counts, at one position of a document, how often each JSON type was seen there;
//! an object position counts how many objects it saw and, per field, in how many of them the field
//! was present (so "required" is "present in every observed object"). A string position keeps its
//! distinct values until there are too many of them: a string field with at most
//! [`ENUM_MAX_VALUES`] distinct values over at least [`ENUM_MIN_SAMPLES`] samples is enum-like.
//!
//! Memory is bounded per tree: at most [`MAX_NODES`] positions, no recursion below
//! [`MAX_DEPTH`], at most [`MAX_FIELDS`] fields per object, and at most [`ENUM_MAX_VALUES`] + 1
//! tracked values per string position, each at most [`ENUM_MAX_VALUE_LEN`] bytes. What is past
//! a bound is not described (the schema never forbids extra properties), so observed bodies still
//! validate against it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// A string field is enum-like with at most this many distinct values...
pub const ENUM_MAX_VALUES: usize = 10;
/// ...over at least this many samples: fewer samples say too little about the value set.
pub const ENUM_MIN_SAMPLES: u64 = 20;
/// Longer strings are free text, not enum values.
pub const ENUM_MAX_VALUE_LEN: usize = 64;
/// Nesting below this depth is typed but not described.
pub const MAX_DEPTH: usize = 8;
/// Fields learned per object position; later new names are not described.
pub const MAX_FIELDS: usize = 64;
/// Positions per learned tree (one side's responses, say).
pub const MAX_NODES: usize = 512;
/// Field names longer than this are not kept (the object is marked incomplete): names come
/// from bodies, and 512 of them a megabyte each would hold half a gigabyte per route.
pub const MAX_NAME_LEN: usize = 256;

/// What was seen at one position.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Values seen here, of any type.
    pub seen: u64,
    pub nulls: u64,
    pub booleans: u64,
    /// Numbers without a fractional part (`10.0` counts: JSON Schema calls it an integer too).
    pub integers: u64,
    /// Numbers with a fractional part.
    pub numbers: u64,
    pub strings: Option<Strings>,
    pub array: Option<Box<Array>>,
    pub object: Option<Box<Object>>,
}

#[derive(Debug, Clone, Default)]
pub struct Strings {
    pub count: u64,
    /// Distinct values while there are few, short ones; `None` once that stopped holding.
    pub values: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct Array {
    pub count: u64,
    pub items: Shape,
}

#[derive(Debug, Clone, Default)]
pub struct Object {
    pub count: u64,
    pub fields: BTreeMap<String, Shape>,
    /// Some field was not learned (a bound was reached).
    pub incomplete: bool,
}

/// JSON types as JSON Schema names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::String => "string",
            Self::Array => "array",
            Self::Object => "object",
        }
    }
}

/// A learned tree and its node budget.
#[derive(Debug, Clone, Default)]
pub struct Learned {
    pub root: Shape,
    nodes: usize,
}

impl Learned {
    pub fn observe(&mut self, v: &Value) {
        let mut budget = MAX_NODES.saturating_sub(self.nodes);
        let before = budget;
        self.root.observe(v, 0, &mut budget);
        self.nodes += before - budget;
    }

    pub fn samples(&self) -> u64 {
        self.root.seen
    }

    /// The schema of everything observed, `None` before the first body.
    pub fn schema(&self) -> Option<Value> {
        if self.root.seen == 0 {
            return None;
        }
        let mut s = self.root.schema();
        if let Value::Object(m) = &mut s {
            m.insert(
                "$schema".into(),
                Value::from("https://json-schema.org/draft/2020-12/schema"),
            );
        }
        Some(s)
    }
}

impl Shape {
    /// Records `v` here. `budget` is how many new positions may still be created.
    fn observe(&mut self, v: &Value, depth: usize, budget: &mut usize) {
        self.seen += 1;
        match v {
            Value::Null => self.nulls += 1,
            Value::Bool(_) => self.booleans += 1,
            Value::Number(n) => {
                let whole =
                    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0);
                if whole {
                    self.integers += 1;
                } else {
                    self.numbers += 1;
                }
            }
            Value::String(s) => {
                let st = self.strings.get_or_insert_with(|| Strings {
                    count: 0,
                    values: Some(BTreeSet::new()),
                });
                st.count += 1;
                if let Some(values) = &mut st.values {
                    if s.len() > ENUM_MAX_VALUE_LEN {
                        st.values = None;
                    } else if !values.contains(s.as_str()) {
                        if values.len() > ENUM_MAX_VALUES {
                            // More than an enum has: stop keeping them.
                            st.values = None;
                        } else {
                            values.insert(s.clone());
                        }
                    }
                }
            }
            Value::Array(items) => {
                let a = self.array.get_or_insert_with(Default::default);
                a.count += 1;
                if depth < MAX_DEPTH {
                    for item in items {
                        a.items.observe(item, depth + 1, budget);
                    }
                }
            }
            Value::Object(fields) => {
                let o = self.object.get_or_insert_with(Default::default);
                o.count += 1;
                if depth >= MAX_DEPTH {
                    o.incomplete |= !fields.is_empty();
                    return;
                }
                for (name, value) in fields {
                    let room = o.fields.len() < MAX_FIELDS && *budget > 0 && name.len() <= MAX_NAME_LEN;
                    let field = if o.fields.contains_key(name) {
                        o.fields.get_mut(name)
                    } else if room {
                        *budget -= 1;
                        Some(o.fields.entry(name.clone()).or_default())
                    } else {
                        None
                    };
                    let Some(field) = field else {
                        o.incomplete = true;
                        continue;
                    };
                    field.observe(value, depth + 1, budget);
                }
            }
        }
    }

    /// The JSON types seen here; integers and fractional numbers together are `number`.
    pub fn kinds(&self) -> BTreeSet<Kind> {
        let mut k = BTreeSet::new();
        if self.nulls > 0 {
            k.insert(Kind::Null);
        }
        if self.booleans > 0 {
            k.insert(Kind::Boolean);
        }
        match (self.integers > 0, self.numbers > 0) {
            (_, true) => {
                k.insert(Kind::Number);
            }
            (true, false) => {
                k.insert(Kind::Integer);
            }
            _ => {}
        }
        if self.strings.is_some() {
            k.insert(Kind::String);
        }
        if self.array.is_some() {
            k.insert(Kind::Array);
        }
        if self.object.is_some() {
            k.insert(Kind::Object);
        }
        k
    }

    /// The string values seen here when they look like an enum (see the module comment).
    pub fn enum_values(&self) -> Option<&BTreeSet<String>> {
        let st = self.strings.as_ref()?;
        let values = st.values.as_ref()?;
        (st.count >= ENUM_MIN_SAMPLES && values.len() <= ENUM_MAX_VALUES).then_some(values)
    }

    /// Whether this position saw more distinct strings than are tracked.
    pub fn many_strings(&self) -> bool {
        self.strings.as_ref().is_some_and(|s| s.values.is_none())
    }

    fn schema(&self) -> Value {
        let kinds = self.kinds();
        let mut m = Map::new();
        let names: Vec<Value> = kinds.iter().map(|k| Value::from(k.name())).collect();
        match names.len() {
            0 => {}
            1 => {
                m.insert("type".into(), names[0].clone());
            }
            _ => {
                m.insert("type".into(), Value::Array(names));
            }
        }
        // `enum` constrains the whole value, so it is only stated for a string (or nullable
        // string) position; other mixes would make observed values invalid.
        let only_strings = kinds.iter().all(|k| matches!(k, Kind::String | Kind::Null));
        if let (true, Some(values)) = (only_strings, self.enum_values()) {
            let mut list: Vec<Value> = values.iter().map(|v| Value::from(v.as_str())).collect();
            if kinds.contains(&Kind::Null) {
                list.push(Value::Null);
            }
            m.insert("enum".into(), Value::Array(list));
        }
        if let Some(a) = &self.array {
            if a.items.seen > 0 {
                m.insert("items".into(), a.items.schema());
            }
        }
        if let Some(o) = &self.object {
            if !o.fields.is_empty() {
                let props: Map<String, Value> =
                    o.fields.iter().map(|(k, f)| (k.clone(), f.schema())).collect();
                let required: Vec<Value> = o
                    .fields
                    .iter()
                    .filter(|(_, f)| f.seen == o.count)
                    .map(|(k, _)| Value::from(k.as_str()))
                    .collect();
                m.insert("properties".into(), Value::Object(props));
                if !required.is_empty() {
                    m.insert("required".into(), Value::Array(required));
                }
            }
        }
        if m.is_empty() {
            return json!({});
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn learn(docs: &[Value]) -> Learned {
        let mut l = Learned::default();
        for d in docs {
            l.observe(d);
        }
        l
    }

    fn assert_valid_for_all(schema: &Value, docs: &[Value]) {
        assert!(
            jsonschema::draft202012::meta::is_valid(schema),
            "not a valid draft 2020-12 schema: {schema}"
        );
        let v = jsonschema::draft202012::new(schema).unwrap();
        for d in docs {
            let errors: Vec<String> = v.iter_errors(d).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{d} does not validate against {schema}: {errors:?}"
            );
        }
    }

    #[test]
    fn types_optionality_and_nullability_are_inferred() {
        let docs = vec![
            json!({"id": 1, "price": 2.5, "name": "a", "tags": ["x"], "note": null, "ok": true}),
            json!({"id": 2, "price": 3, "name": "b", "tags": [], "note": "hi", "ok": false, "extra": {"k": 1}}),
        ];
        let s = learn(&docs).schema().unwrap();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["type"], "object");
        let p = &s["properties"];
        assert_eq!(p["id"]["type"], "integer");
        assert_eq!(p["price"]["type"], "number", "2.5 and 3 together are numbers");
        assert_eq!(p["name"]["type"], "string");
        assert_eq!(p["tags"]["type"], "array");
        assert_eq!(p["tags"]["items"]["type"], "string");
        assert_eq!(p["note"]["type"], json!(["null", "string"]));
        assert_eq!(p["ok"]["type"], "boolean");
        assert_eq!(p["extra"]["properties"]["k"]["type"], "integer");
        assert_eq!(
            s["required"],
            json!(["id", "name", "note", "ok", "price", "tags"]),
            "`extra` is missing from one object, so it is optional"
        );
        assert_valid_for_all(&s, &docs);
    }

    #[test]
    fn a_whole_float_is_an_integer_as_json_schema_says() {
        let s = learn(&[json!({"t": 10}), json!({"t": 10.0})]).schema().unwrap();
        assert_eq!(s["properties"]["t"]["type"], "integer");
    }

    #[test]
    fn a_string_with_few_values_over_enough_samples_is_an_enum() {
        let docs: Vec<Value> = (0..ENUM_MIN_SAMPLES)
            .map(|i| json!({"state": (["open", "paid", "shipped"][i as usize % 3]), "id": format!("id-{i}")}))
            .collect();
        let l = learn(&docs);
        let s = l.schema().unwrap();
        assert_eq!(
            s["properties"]["state"]["enum"],
            json!(["open", "paid", "shipped"])
        );
        assert!(
            s["properties"]["id"].get("enum").is_none(),
            "20 distinct ids are not an enum"
        );
        assert_valid_for_all(&s, &docs);
        // One sample short: too little evidence.
        let few = learn(&docs[..docs.len() - 1]).schema().unwrap();
        assert!(few["properties"]["state"].get("enum").is_none());
    }

    #[test]
    fn a_nullable_enum_lists_null_so_observed_nulls_stay_valid() {
        let mut docs: Vec<Value> = (0..25).map(|i| json!({"s": (["a", "b"][i % 2])})).collect();
        docs.push(json!({"s": null}));
        let s = learn(&docs).schema().unwrap();
        assert_eq!(s["properties"]["s"]["enum"], json!(["a", "b", null]));
        assert_valid_for_all(&s, &docs);
    }

    #[test]
    fn arrays_of_objects_describe_their_items() {
        let docs = vec![
            json!([{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2, "gift": true}]),
            json!([]),
        ];
        let s = learn(&docs).schema().unwrap();
        assert_eq!(s["type"], "array");
        assert_eq!(s["items"]["required"], json!(["qty", "sku"]));
        assert_eq!(s["items"]["properties"]["gift"]["type"], "boolean");
        assert_valid_for_all(&s, &docs);
    }

    #[test]
    fn long_field_names_are_not_kept() {
        let long = "n".repeat(MAX_NAME_LEN + 1);
        let l = learn(&[json!({ long.clone(): 1, "id": 2 })]);
        let o = l.root.object.as_ref().unwrap();
        assert!(o.fields.contains_key("id"));
        assert!(!o.fields.contains_key(&long));
        assert!(o.incomplete);
    }

    #[test]
    fn memory_stays_bounded_for_wide_deep_and_varied_bodies() {
        // Wide: many objects with ever new field names.
        let mut l = Learned::default();
        for i in 0..200 {
            let mut m = Map::new();
            for j in 0..100 {
                m.insert(format!("f{i}_{j}"), json!(j));
            }
            l.observe(&Value::Object(m));
        }
        let fields = l.root.object.as_ref().unwrap().fields.len();
        assert_eq!(fields, MAX_FIELDS);
        assert!(l.root.object.as_ref().unwrap().incomplete);
        // Deep: nesting past the depth bound is typed, not described.
        let mut deep = json!({"leaf": 1});
        for _ in 0..50 {
            deep = json!({"d": deep});
        }
        let mut l = Learned::default();
        l.observe(&deep);
        assert!(l.nodes <= MAX_DEPTH + 1);
        let s = l.schema().unwrap();
        assert_valid_for_all(&s, &[deep]);
        // Varied: distinct values stop being kept past the enum bound.
        let mut l = Learned::default();
        for i in 0..1000 {
            l.observe(&json!({"id": format!("v{i}")}));
        }
        let id = &l.root.object.as_ref().unwrap().fields["id"];
        assert!(id.many_strings());
        // Many positions: the node budget caps the tree.
        let mut l = Learned::default();
        for i in 0..100 {
            let mut m = Map::new();
            for j in 0..MAX_FIELDS {
                m.insert(format!("o{j}"), json!({ format!("k{i}"): {"x": 1, "y": [1]} }));
            }
            l.observe(&Value::Object(m));
        }
        assert!(l.nodes <= MAX_NODES);
    }
}
