//! The JSON Schema of the config file (`ficus schema`, committed as `config/ficus.schema.json`),
//! derived from the serde structs in `file.rs` and `transform.rs` so that it cannot drift from
//! what ficus reads. Value types with a hand-written deserializer get a hand-written schema
//! here that accepts what that deserializer accepts.
//!
//! The schema checks shape only (keys, types, units); cross-references (a route naming an
//! upstream) and ranges that `ficus check` enforces are left to it.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::file::{FileConfig, HumanDuration, HumanDurationOpt, RetryCondition};
use super::transform::SoapVersion;
use super::values::{ByteSize, StatusPattern};

/// The command that rewrites the committed schema, named by the test that finds it stale.
pub const REGENERATE: &str = "cargo run -- schema > config/ficus.schema.json";

/// The schema as pretty-printed JSON with a trailing newline, exactly as committed.
pub fn generate() -> String {
    // Draft 7: what editors' YAML language servers understand best.
    let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.root_schema_for::<FileConfig>();
    schema.insert("title".into(), "ficus config".into());
    let mut out = serde_json::to_string_pretty(&schema).unwrap_or_default();
    out.push('\n');
    out
}

/// humantime's grammar: numbers (with an optional fraction) each followed by a unit, e.g.
/// `250ms`, `1m 30s`, `1.5s`; `0` alone is the one bare number it takes.
const DURATION_PATTERN: &str = concat!(
    r"^\s*(?:\d+(?:\.\d+)?\s*",
    r"(?:nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s",
    r"|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w",
    r"|months|month|M|years|year|yrs|yr|y)\s*)+$|^\s*0\s*$"
);

fn duration_schema() -> Schema {
    json_schema!({
        "description": "A duration: a number and a unit, e.g. `250ms`, `30s`, `5m`, `1m 30s`, `1.5s`.",
        "anyOf": [
            { "type": "string", "pattern": DURATION_PATTERN },
            // YAML reads an unquoted `0` as a number; ficus reads it as the string it was.
            { "const": 0 }
        ]
    })
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        duration_schema()
    }
}

impl JsonSchema for HumanDurationOpt {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "OptionalDuration".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [g.subschema_for::<HumanDuration>(), { "type": "null" }]
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A byte count: `16384`, or a whole number with a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. `64KiB`.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*\d+\s*(?:B|KB|MB|GB|KiB|MiB|GiB)?\s*$" }
            ]
        })
    }
}

impl JsonSchema for StatusPattern {
    fn schema_name() -> Cow<'static, str> {
        "StatusPattern".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An HTTP status (`201`) or a class (`\"2xx\"`).",
            "anyOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "enum": ["1xx", "2xx", "3xx", "4xx", "5xx"] }
            ]
        })
    }
}

impl JsonSchema for RetryCondition {
    fn schema_name() -> Cow<'static, str> {
        "RetryCondition".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A status the upstream answered, or `connect-error`, `reset`, `timeout`.",
            "anyOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "enum": ["connect-error", "reset", "timeout"] }
            ]
        })
    }
}

impl JsonSchema for SoapVersion {
    fn schema_name() -> Cow<'static, str> {
        "SoapVersion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // An unquoted `1.1` is a YAML number; ficus reads the variant from its text all the same.
        json_schema!({ "enum": ["1.1", "1.2", 1.1, 1.2] })
    }
}

/// For `key` and `scope`: one request key, or a list of them.
pub fn one_or_many(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } }
        ]
    })
}

/// For percentages (`super::values::percent`): a number, or a number with `%`.
pub fn percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A percentage from 0 to 100: `5%`, or a number (`5`, `2.5`).",
        "anyOf": [
            { "type": "number", "minimum": 0, "maximum": 100 },
            { "type": "string", "pattern": r"^\s*\d+(?:\.\d+)?\s*%\s*$" }
        ]
    })
}

/// For lists of networks (`ipnet::IpNet`): an address with its prefix length.
pub fn cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "description": "A network: an address and a prefix length, e.g. `10.0.0.0/8`, `fd00::/8`.",
            "type": "string",
            "anyOf": [
                { "pattern": r"^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)/(?:3[0-2]|[12]?\d)$" },
                { "pattern": r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/(?:12[0-8]|1[01]\d|[1-9]?\d)$" }
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> jsonschema::Validator {
        let schema: serde_json::Value = match serde_json::from_str(&generate()) {
            Ok(v) => v,
            Err(e) => panic!("the generated schema is not JSON: {e}"),
        };
        match jsonschema::validator_for(&schema) {
            Ok(v) => v,
            Err(e) => panic!("the generated schema is not a valid JSON Schema: {e}"),
        }
    }

    fn yaml_to_json(text: &str) -> serde_json::Value {
        match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("not YAML: {e}"),
        }
    }

    fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
        v.iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    fn config_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn committed_schema_is_up_to_date() {
        let path = config_dir().join("ficus.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generate(),
            "config/ficus.schema.json is out of date with the config types; regenerate it with\n  {REGENERATE}"
        );
    }

    #[test]
    fn every_yaml_file_under_config_validates_against_the_schema() {
        let v = validator();
        let mut seen = 0;
        let entries = match std::fs::read_dir(config_dir()) {
            Ok(e) => e,
            Err(e) => panic!("config/: {e}"),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let errs = errors(&v, &yaml_to_json(&text));
            assert!(errs.is_empty(), "{}:\n{}", path.display(), errs.join("\n"));
            seen += 1;
        }
        assert!(
            seen >= 2,
            "expected config/ficus.example.yaml and config/demo.yaml"
        );
    }

    #[test]
    fn a_typo_key_fails_validation() {
        let v = validator();
        let doc = yaml_to_json("listeners:\n  - name: public\n    bind: 127.0.0.1:8080\n    limitz: {}\n");
        let errs = errors(&v, &doc);
        assert!(!errs.is_empty(), "`limitz` was accepted");
        assert!(errs.iter().any(|e| e.contains("limitz")), "{errs:?}");
        let top = yaml_to_json("upstream: {}\n");
        assert!(!v.is_valid(&top), "a top-level typo was accepted");
    }

    #[test]
    fn durations_and_sizes_take_what_the_parsers_take() {
        let v = validator();
        let ok = |y: &str| v.is_valid(&yaml_to_json(y));
        for good in [
            "shutdown: { drain_timeout: 30s }",
            "shutdown: { drain_timeout: 1m 30s }",
            "shutdown: { drain_timeout: 1.5s }",
            "shutdown: { drain_timeout: 250ms }",
            "shutdown: { drain_timeout: 0 }",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: 10MiB } }]",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: 16384 } }]",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: 16 KiB } }]",
        ] {
            assert!(ok(good), "refused: {good}");
            assert!(
                serde_yaml_ng::from_str::<FileConfig>(good).is_ok(),
                "ficus refuses: {good}"
            );
        }
        for bad in [
            "shutdown: { drain_timeout: 30 }",
            "shutdown: { drain_timeout: 30 seconds please }",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: 10mb } }]",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: -1 } }]",
            "listeners: [{ name: a, bind: '127.0.0.1:1', limits: { max_body_bytes: 1.5MiB } }]",
        ] {
            assert!(!ok(bad), "accepted: {bad}");
            assert!(
                serde_yaml_ng::from_str::<FileConfig>(bad).is_err(),
                "ficus takes: {bad}"
            );
        }
    }
}
