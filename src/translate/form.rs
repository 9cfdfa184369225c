//! application/x-www-form-urlencoded <-> JSON. Repeated keys are arrays; nested objects are
//! written with dotted keys (`address.city=Paris`).

use serde_json::{Map, Value};

pub fn form_to_json(body: &[u8]) -> Value {
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        let v = Value::from(v.into_owned());
        match m.get_mut(k.as_ref()) {
            Some(Value::Array(a)) => a.push(v),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                m.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(m)
}

pub fn json_to_form(v: &Value) -> Result<String, String> {
    let Value::Object(m) = v else {
        return Err("a form body is written from an object".into());
    };
    let mut out = form_urlencoded::Serializer::new(String::new());
    write(&mut out, "", m)?;
    Ok(out.finish())
}

fn write(
    out: &mut form_urlencoded::Serializer<'_, String>,
    prefix: &str,
    m: &Map<String, Value>,
) -> Result<(), String> {
    for (k, v) in m {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => write(out, &key, inner)?,
            Value::Array(items) => {
                for item in items {
                    out.append_pair(&key, &scalar(item, &key)?);
                }
            }
            other => {
                out.append_pair(&key, &scalar(other, &key)?);
            }
        }
    }
    Ok(())
}

fn scalar(v: &Value, key: &str) -> Result<String, String> {
    super::xml::scalar_text(v).ok_or_else(|| format!("`{key}`: nested arrays have no form encoding"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_round_trips_with_repeats_and_escapes() {
        let v = form_to_json(b"name=Ada+L%C3%B6we&tag=a&tag=b&empty=");
        assert_eq!(v, json!({"name": "Ada Löwe", "tag": ["a", "b"], "empty": ""}));
        let back = json_to_form(&v).unwrap();
        assert_eq!(form_to_json(back.as_bytes()), v);
        assert_eq!(json_to_form(&json!({"a": {"b": 1}})).unwrap(), "a.b=1");
        assert!(json_to_form(&json!([1])).is_err());
    }
}
