//! Request-body validation against a JSON Schema, compiled once per snapshot.

use std::path::Path;

use serde_json::Value;

pub struct SchemaCheck {
    validator: jsonschema::Validator,
    pub max_body: u64,
}

/// One failing place: a JSON pointer into the body and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

impl SchemaCheck {
    pub fn load(file: &Path, max_body: u64) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("{} is not a valid JSON Schema: {e}", file.display()))?;
        Ok(Self { validator, max_body })
    }

    /// Every violation (capped at 50), or a single one at `""` when the body is not JSON.
    pub fn check(&self, body: &[u8]) -> Result<(), Vec<Violation>> {
        let instance: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Err(vec![Violation {
                    pointer: String::new(),
                    message: format!("the body is not JSON: {e}"),
                }])
            }
        };
        let errors: Vec<Violation> = self
            .validator
            .iter_errors(&instance)
            .take(50)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failing_pointer_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(
            &f,
            r#"{"type":"object","required":["id"],"properties":{"id":{"type":"string"},
                "lines":{"type":"array","items":{"type":"object","properties":{"qty":{"type":"integer","minimum":1}}}}}}"#,
        )
        .unwrap();
        let s = SchemaCheck::load(&f, 1024).unwrap();
        assert!(s.check(br#"{"id":"a","lines":[{"qty":1}]}"#).is_ok());
        let errs = s.check(br#"{"lines":[{"qty":0},{"qty":"x"}]}"#).unwrap_err();
        let mut pointers: Vec<&str> = errs.iter().map(|v| v.pointer.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, vec!["", "/lines/0/qty", "/lines/1/qty"]);
        assert_eq!(s.check(b"nope").unwrap_err()[0].pointer, "");
        std::fs::write(&f, r#"{"type": 12}"#).unwrap();
        assert!(SchemaCheck::load(&f, 1024).is_err());
    }
}
