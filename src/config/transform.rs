//! The `transforms:` section as the user writes it: plain serde structs, compiled by
//! `crate::translate::compile`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::{ByteSize, StatusPattern};

/// A named translation between a backend's dialect and the modern API, per direction.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// What is done to the client's request before it goes to the backend.
    #[serde(default)]
    pub request: Option<DirectionConfig>,
    /// What is done to the backend's answer before the client sees it.
    #[serde(default)]
    pub response: Option<DirectionConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectionConfig {
    /// Media types (without parameters) whose bodies the `ops` apply to; other bodies stream
    /// through untouched.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Bodies to translate are buffered up to this; larger ones get 413 (request) or 502
    /// (response).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Body operations, applied in order.
    #[serde(default)]
    pub ops: Vec<OpEntry>,
    #[serde(default)]
    pub headers: HeaderOpsConfig,
    /// Request only: the path (and optionally query) sent to the backend, with `{name}` filled
    /// from the route's `path_template` captures.
    #[serde(default)]
    pub path: Option<String>,
    /// Request only: query parameter changes.
    #[serde(default)]
    pub query: Option<QueryOpsConfig>,
    /// Request only: the method sent to the backend (a GET that a SOAP service wants as POST).
    #[serde(default)]
    pub method: Option<String>,
    /// Request only: the JSON the `ops` start from when the client sent no body; string values
    /// `"{name}"` are filled from the route's `path_template` captures.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Response only: status rules, first match wins, checked on the legacy body.
    #[serde(default)]
    pub status: Vec<StatusRuleConfig>,
    /// Response only: legacy error bodies become RFC 9457 problem+json.
    #[serde(default)]
    pub errors: Option<ErrorsConfig>,
}

fn default_content_types() -> Vec<String> {
    vec!["application/json".into()]
}
fn default_max_body() -> ByteSize {
    ByteSize(1024 * 1024)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    /// Set (replacing) these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Rename: old name -> new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryOpsConfig {
    /// Set these parameters (values may use `{capture}`).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatusRuleConfig {
    pub when: ConditionConfig,
    pub status: u16,
}

/// Set `json_path` with `equals` (or alone: the field exists), and/or `body_contains`; also
/// optionally the backend `status` it applies to. All given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    #[serde(default)]
    pub json_path: Option<String>,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub status: Option<StatusPattern>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Which backend statuses (after the `status` rules) are errors.
    #[serde(default = "default_error_statuses")]
    pub statuses: Vec<StatusPattern>,
    /// Where in the legacy body the human-readable message is.
    #[serde(default)]
    pub detail: Option<String>,
    /// Where the legacy error code is; it is appended to `type_prefix` and kept as `code`.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default = "default_type_prefix")]
    pub type_prefix: String,
}

fn default_error_statuses() -> Vec<StatusPattern> {
    vec![
        StatusPattern::Class("4xx".into()),
        StatusPattern::Class("5xx".into()),
    ]
}
fn default_type_prefix() -> String {
    "urn:ficus:problem:upstream-error".into()
}

/// One `ops` entry, written as a single-key map (`- rename: {path: a, to: b}`). The YAML reader
/// wants tags for enums, so the entry goes through JSON, which reads single-key maps.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct OpEntry(pub OpConfig);

impl<'de> Deserialize<'de> for OpEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::from_value(v)
            .map(OpEntry)
            .map_err(serde::de::Error::custom)
    }
}

/// One body operation. Paths are dot-separated keys; a number indexes an array and `*` means
/// every element (`items.*.price`): the one field-path syntax (`translate::path::FieldPath`),
/// shared with shadow `ignore` rules.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OpConfig {
    XmlToJson(XmlToJsonConfig),
    JsonToXml(JsonToXmlConfig),
    SoapWrap(SoapWrapConfig),
    SoapUnwrap(SoapUnwrapConfig),
    FormToJson(EmptyConfig),
    JsonToForm(EmptyConfig),
    Rename { path: String, to: String },
    Move { from: String, to: String },
    Copy { from: String, to: String },
    Set { path: String, value: serde_json::Value },
    Default { path: String, value: serde_json::Value },
    Delete { path: String },
    Wrap { key: String },
    Unwrap { key: String },
    Map(MapConfig),
    Convert { path: String, to: ConvertTo },
    Date(DateConfig),
    Split { path: String, separator: String },
    Join { path: String, separator: String },
    Money(MoneyConfig),
    Each { path: String, ops: Vec<OpConfig> },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmptyConfig {}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XmlToJsonConfig {
    /// Paths (dot-separated element names from the root's children) that are always arrays.
    #[serde(default)]
    pub array_paths: Vec<String>,
    /// Keep namespace prefixes in keys (`ns:Order`) instead of local names.
    #[serde(default)]
    pub keep_prefixes: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonToXmlConfig {
    /// The root element; without it the JSON must be an object with exactly one key.
    #[serde(default)]
    pub root: Option<String>,
    /// `prefix -> uri` declared on the root (`""` is the default namespace).
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// Element names in the order a strict schema (`xsd:sequence`) wants them: at every level,
    /// children named here come first, in this order; the others follow in name order.
    #[serde(default)]
    pub order: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoapWrapConfig {
    #[serde(default)]
    pub version: SoapVersion,
    /// Sent as `SOAPAction` (1.1) or the `action` content-type parameter (1.2).
    #[serde(default)]
    pub action: Option<String>,
    /// The operation element the JSON goes into.
    pub body_element: String,
    /// Its namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Element order for a strict schema, as in `json_to_xml.order`.
    #[serde(default)]
    pub order: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoapUnwrapConfig {
    /// Keep the operation element (`{"GetOrderResponse": {...}}`) instead of its content.
    #[serde(default)]
    pub keep_operation: bool,
    /// Paths under the operation element that are always arrays.
    #[serde(default)]
    pub array_paths: Vec<String>,
    /// Fault code (local part: `Client`, `Server`, `Sender`, `Receiver`, or `Code.Subcode`) ->
    /// the status the client gets; unlisted faults are 502 (400 for Client/Sender).
    #[serde(default)]
    pub fault_status: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum SoapVersion {
    #[default]
    #[serde(rename = "1.1")]
    V11,
    #[serde(rename = "1.2")]
    V12,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    pub path: String,
    /// Legacy value (as a string) -> new value.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Used for an unmapped value; without it an unmapped value is an error.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConvertTo {
    String,
    Number,
    Bool,
}

/// Date formats: a pattern (`dd/MM/yyyy`, `yyyyMMddHHmmss`, letters y M d H m s S), or
/// `rfc3339`, `epoch_seconds`, `epoch_millis`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DateConfig {
    pub path: String,
    pub from: String,
    pub to: String,
    /// The zone of zone-less legacy times (`UTC`, `+01:00`, `Europe/Paris`); also used when writing.
    #[serde(default)]
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoneyConfig {
    pub path: String,
    pub to: MoneyTo,
    /// Decimal places (2 for cents).
    #[serde(default = "default_scale")]
    pub scale: u32,
}

fn default_scale() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MoneyTo {
    /// Integer minor units -> decimal string (`1999` -> `"19.99"`).
    Decimal,
    /// Decimal string or number -> integer minor units.
    Cents,
}

/// Route-level request validation.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// A JSON Schema file (relative to the config file).
    pub schema: std::path::PathBuf,
    /// Bodies larger than this get 413 before validation.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}
