//! The config file as the user writes it: plain serde structs, no behaviour.
//!
//! Every struct refuses unknown keys so a typo is an error rather than a silent default.
//! Validation and compilation into the runtime form live in `compile.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

pub use super::values::{parse_byte_size, ByteSize, StatusPattern};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub log: LogConfig,
    /// Values kept out of the access log and stored shadow diffs, besides the defaults.
    #[serde(default)]
    pub redact: RedactConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub reload: ReloadConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub idempotency_store: IdempotencyStoreConfig,
    #[serde(default)]
    pub state_store: StateStoreConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Named payload translations, referred to by routes and migration sides.
    #[serde(default)]
    pub transforms: BTreeMap<String, super::transform::TransformConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Where routes with `buffer_writes` queue writes while their upstream is down.
    #[serde(default)]
    pub queue_store: Option<super::writes::QueueStoreConfig>,
}

/// What the access log and stored shadow diffs show as `[REDACTED]`. Each list adds to the
/// defaults (see `telemetry::redact`), which cannot be removed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Header names (any case), besides Authorization, Proxy-Authorization, Cookie, Set-Cookie.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameter names (any case), besides token, access_token, api_key, key, password.
    #[serde(default)]
    pub query_params: Vec<String>,
    /// Fields of compared bodies, with everything below them, in the field-path syntax of
    /// transform ops (`customer.email`, `items.*.card`).
    #[serde(default)]
    pub json_paths: Vec<String>,
}

/// Named rate-limit policies, which routes list by name, and the store they share.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    #[serde(default)]
    pub store: RateLimitStoreConfig,
    #[serde(default)]
    pub policies: BTreeMap<String, RateLimitPolicyConfig>,
}

/// Where counters shared by every instance live. Without `redis_urls`, every policy is local.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStoreConfig {
    /// One URL: a single Redis. Several: seed nodes of a Redis Cluster.
    #[serde(default)]
    pub redis_urls: Vec<String>,
    #[serde(default = "default_rl_prefix")]
    pub key_prefix: String,
    /// A decision that takes longer counts as a store error and the fallback applies.
    #[serde(default = "default_rl_timeout", with = "HumanDuration")]
    pub timeout: Duration,
    /// What a Redis policy does while Redis is unreachable or slow.
    #[serde(default)]
    pub on_error: RateLimitFallback,
    /// When to stop asking Redis while it fails, so an outage adds no latency.
    #[serde(default)]
    pub breaker: StoreBreakerConfig,
}

/// A circuit breaker on the Redis store: after `failures` consecutive failures (or one
/// connection error) decisions take `on_error` without touching Redis for `open_for`, doubled on
/// every failed probe up to `max_open_for`; then one background probe tries Redis again.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreBreakerConfig {
    #[serde(default = "default_store_breaker_failures")]
    pub failures: u32,
    #[serde(default = "default_store_breaker_open_for", with = "HumanDuration")]
    pub open_for: Duration,
    #[serde(default = "default_store_breaker_max_open_for", with = "HumanDuration")]
    pub max_open_for: Duration,
}

impl Default for StoreBreakerConfig {
    fn default() -> Self {
        Self {
            failures: default_store_breaker_failures(),
            open_for: default_store_breaker_open_for(),
            max_open_for: default_store_breaker_max_open_for(),
        }
    }
}

fn default_store_breaker_failures() -> u32 {
    3
}
fn default_store_breaker_open_for() -> Duration {
    Duration::from_secs(1)
}
fn default_store_breaker_max_open_for() -> Duration {
    Duration::from_secs(30)
}

impl Default for RateLimitStoreConfig {
    fn default() -> Self {
        Self {
            redis_urls: Vec::new(),
            key_prefix: default_rl_prefix(),
            timeout: default_rl_timeout(),
            on_error: RateLimitFallback::default(),
            breaker: StoreBreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitFallback {
    /// Limit in this instance alone (each instance allows the full rate).
    #[default]
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    /// Generic cell rate: `rate` with up to `burst` at once.
    #[default]
    Gcra,
    /// At most `rate` per period, over a window that slides (weighted previous window).
    SlidingWindow,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStoreKind {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// A request without the key's parts is limited by its client address instead.
    #[default]
    ClientIp,
    /// The policy does not apply to it.
    Skip,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    /// What is counted: a request key (`client_ip`, `route`, `jwt.<claim>`, `api_key`,
    /// `header:<name>`...: see `pipeline::key`), or a list of them for a combination.
    #[serde(default = "default_rl_key", deserialize_with = "one_or_many")]
    #[schemars(schema_with = "super::schema::one_or_many")]
    pub key: Vec<String>,
    /// `100/s`, `6000/m`, `10/30s`, `1000/h`.
    pub rate: String,
    /// Requests allowed at once (GCRA); defaults to the count in `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    /// Units one request uses.
    #[serde(default = "default_rl_cost")]
    pub cost: u64,
    /// `redis` by default when `rate_limits.store.redis_urls` is set, else `local`.
    #[serde(default)]
    pub store: Option<RateLimitStoreKind>,
    #[serde(default)]
    pub missing_key: MissingKey,
    #[serde(default)]
    pub exempt: RateLimitExempt,
    /// `RateLimit-Policy` and `RateLimit` response headers.
    #[serde(default = "default_true")]
    pub headers: bool,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` too.
    #[serde(default)]
    pub legacy_headers: bool,
    /// Keys the in-process map holds at most (also when it stands in for Redis). When full, it
    /// drops expired entries, then the eighth that carry the least.
    #[serde(default = "default_rl_max_keys")]
    pub max_keys: usize,
}

fn default_rl_max_keys() -> usize {
    crate::pipeline::ratelimit::local::DEFAULT_MAX_KEYS
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitExempt {
    /// Client addresses (after `trusted_proxies`) never limited.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::cidrs")]
    pub cidrs: Vec<ipnet::IpNet>,
    /// Callers whose verified token carries one of these claims are never limited.
    #[serde(default)]
    pub claims: Vec<OverrideClaim>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn default_rl_prefix() -> String {
    "ficus:rl:".into()
}
fn default_rl_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_rl_key() -> Vec<String> {
    vec!["client_ip".into()]
}
fn default_rl_cost() -> u64 {
    1
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// JWT providers by name; routes refer to them.
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtProviderConfig>,
    /// API-key sets by name; routes refer to them.
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeysConfig>,
    /// RFC 7662 introspection endpoints (for opaque tokens) by name; routes refer to them.
    #[serde(default)]
    pub introspection: BTreeMap<String, IntrospectionConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The IdP's introspection endpoint (RFC 7662), e.g. `http://idp.internal/oauth2/introspect`.
    pub url: String,
    /// PEM bundle of the CAs an `https://` endpoint must chain to (default: the webpki roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    /// The environment variable holding ficus's client secret at the IdP.
    pub client_secret_env: String,
    /// An active answer's `aud` (a string or an array) must hold at least one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// An active answer's `iss` must equal this.
    #[serde(default)]
    pub issuer: Option<String>,
    /// An active answer's `client_id` (the client the token was issued to) must be one of these.
    #[serde(default)]
    pub allowed_client_ids: Vec<String>,
    /// Without `audiences` or `allowed_client_ids`, the config is refused unless this says
    /// that any active token of the IdP will do.
    #[serde(default)]
    pub allow_any_audience: bool,
    /// How ficus authenticates to the endpoint: `basic` (HTTP Basic) or `post` (form fields).
    #[serde(default)]
    pub auth: IntrospectionAuth,
    /// An active answer is cached (by token hash) for at most this long, and never past `exp`.
    #[serde(default = "default_introspection_max_ttl", with = "HumanDuration")]
    pub cache_max_ttl: Duration,
    /// An inactive answer (`active: false`) is cached this long.
    #[serde(default = "default_introspection_negative_ttl", with = "HumanDuration")]
    pub negative_ttl: Duration,
    /// While the IdP is unreachable or failing, serve a cached answer up to this long past its
    /// freshness (never past the token's `exp`). Unset: the answer is 503.
    #[serde(default, with = "HumanDurationOpt")]
    pub allow_stale: Option<Duration>,
    #[serde(default = "default_introspection_timeout", with = "HumanDuration")]
    pub timeout: Duration,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: ByteSize,
    #[serde(default = "default_idem_entries")]
    pub cache_entries: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionAuth {
    #[default]
    Basic,
    Post,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// YAML with `keys: [{id, owner, sha256, scopes, expires}]`, relative to the config file.
    pub keys_file: PathBuf,
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Also read the key from this query parameter (off by default).
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The only algorithms accepted, whatever a token says (one family per provider).
    pub algorithms: Vec<String>,
    #[serde(default = "default_jwt_leeway", with = "HumanDuration")]
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// `http://` or `https://` (verified against the webpki roots, or `ca_file`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM bundle of the CAs an `https://` JWKS URL must chain to, relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A public key in PEM (RSA, EC or Ed25519, per `algorithms`), relative to the config file.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// Public keys as a JWK or a JWK Set (JSON), relative to the config file; a key's `kid`
    /// is matched exactly, a key without one serves tokens without a known `kid`.
    #[serde(default)]
    pub jwk_file: Option<PathBuf>,
    /// The environment variable holding an HMAC secret (at least 32 bytes).
    #[serde(default)]
    pub hmac_secret_env: Option<String>,
    /// At least 1s (a shorter interval would hammer the IdP).
    #[serde(default = "default_jwks_refresh", with = "HumanDuration")]
    pub jwks_refresh: Duration,
    /// Bounds a whole JWKS fetch: connecting, the answer's head and its body.
    #[serde(default = "default_jwks_timeout", with = "HumanDuration")]
    pub jwks_timeout: Duration,
    /// A token with an unknown `kid` triggers at most one JWKS refetch per this interval.
    #[serde(default = "default_unknown_kid", with = "HumanDuration")]
    pub unknown_kid_refetch: Duration,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: ByteSize,
    /// Verified tokens are cached (by hash) for at most this long, and never past `exp`.
    #[serde(default = "default_jwt_cache_ttl", with = "HumanDuration")]
    pub cache_ttl: Duration,
    #[serde(default = "default_idem_entries")]
    pub cache_entries: u64,
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteIdentityConfig {
    /// The JWT provider (under `identity.jwt`); set this or `api_keys`.
    #[serde(default)]
    pub jwt: Option<String>,
    /// The API-key set (under `identity.api_keys`).
    #[serde(default)]
    pub api_keys: Option<String>,
    /// The introspection endpoint (under `identity.introspection`), for opaque tokens.
    #[serde(default)]
    pub introspection: Option<String>,
    /// Let anonymous callers through (claims are still checked and forwarded when a token is sent).
    #[serde(default)]
    pub optional: bool,
    /// Every one of these must be in the token's `scope` string or `scp` array.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimRule>,
    /// Claim name -> header sent upstream (the caller's own copies are always removed).
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Also read the token from this cookie.
    #[serde(default)]
    pub token_cookie: Option<String>,
    /// Also read the token from this query parameter (off by default: URLs get logged).
    #[serde(default)]
    pub token_query: Option<String>,
    /// What the upstream (a legacy system) gets instead of the caller's credentials.
    #[serde(default)]
    pub upstream_auth: Option<UpstreamAuthConfig>,
    /// What the route requires of the caller's TLS client certificate (the listener's
    /// `tls.client_auth` asks for one).
    #[serde(default)]
    pub client_cert: Option<ClientCertRuleConfig>,
    /// Send the verified client certificate's subject and SANs upstream as these headers.
    #[serde(default)]
    pub forward_client_cert: Option<ForwardClientCertConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRuleConfig {
    /// Refuse callers without a verified client certificate (401).
    #[serde(default)]
    pub required: bool,
    /// A glob (`*` matches any run of characters, `/` and `.` included) that at least one SAN
    /// must match, e.g. `spiffe://corp/*`; otherwise 403.
    #[serde(default)]
    pub san: Option<String>,
    /// A regular expression (anchored for you) that at least one SAN must match.
    #[serde(default)]
    pub san_regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardClientCertConfig {
    /// Header for the subject DN (RFC 4514 form, e.g. `CN=orders,O=Corp`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Header for the SANs, comma-separated in certificate order.
    #[serde(default)]
    pub san: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// Remove the caller's `Authorization` before the request goes upstream.
    #[serde(default)]
    pub drop_token: bool,
    /// Send `Authorization: Basic` with the `user:password` held in this environment variable.
    #[serde(default)]
    pub basic_env: Option<String>,
    /// Send a static API-key header; its value is held in an environment variable.
    #[serde(default)]
    pub header: Option<StaticHeaderConfig>,
    /// Send a short-lived JWT that ficus signs with its own key.
    #[serde(default)]
    pub jwt: Option<InternalJwtConfig>,
    /// On a migration route, the side whose requests get these credentials (the shadow copy
    /// included). Legacy credentials must not reach the modern backend.
    #[serde(default)]
    pub apply_to: UpstreamAuthSide,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuthSide {
    #[default]
    Legacy,
    Modern,
    Both,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InternalJwtConfig {
    /// RS256/PS256/ES256/ES384/EdDSA (with `key_file`) or HS256/HS384/HS512 (with `secret_env`).
    pub algorithm: String,
    /// The private key in PEM, relative to the config file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The environment variable holding the HMAC secret (at least 32 bytes).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The `kid` header, so the upstream can pick the key (and ficus's key can rotate).
    #[serde(default)]
    pub kid: Option<String>,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_internal_jwt_ttl", with = "HumanDuration")]
    pub ttl: Duration,
    /// Caller claims copied into the token (`iss`, `aud`, `iat`, `exp` are always ficus's own).
    #[serde(default = "default_internal_jwt_copy")]
    pub copy_claims: Vec<String>,
    /// Where the token goes: `Authorization` gets `Bearer <token>`, any other header the bare token.
    #[serde(default = "default_internal_jwt_header")]
    pub header: String,
    /// Tokens are reused per caller (same copied claims) for half their TTL; at most this many.
    #[serde(default = "default_internal_jwt_entries")]
    pub cache_entries: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticHeaderConfig {
    pub name: String,
    pub value_env: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub one_of: Vec<String>,
}

/// Where state that several instances must agree on lives (the rollout stage). Unset: each
/// instance keeps its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateStoreConfig {
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub key_prefix: Option<String>,
}

/// Where idempotency records live: in-process (default) or Redis, shared by every instance.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyStoreConfig {
    /// `redis://host:port/db`; unset means the in-process store.
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default = "default_idem_prefix")]
    pub key_prefix: String,
    /// Records held by the in-process store at most.
    #[serde(default = "default_idem_entries")]
    pub max_entries: u64,
}

impl Default for IdempotencyStoreConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: default_idem_prefix(),
            max_entries: default_idem_entries(),
        }
    }
}

/// A route mid-migration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    pub legacy: MigrationSide,
    pub modern: MigrationSide,
    /// Share of keys (or of keyless requests) served by modern, 0 to 100.
    #[serde(default)]
    pub modern_percent: f64,
    /// A request key (`header:<name>`, `client_ip`...: see `pipeline::key`); unset: random per request.
    #[serde(default)]
    pub sticky: Option<String>,
    /// Sticky-key values always served by modern (users, tenants).
    #[serde(default)]
    pub cohorts: Vec<String>,
    /// Serve a retryable request from legacy when modern fails.
    #[serde(default)]
    pub fallback_to_legacy: bool,
    /// Request bodies up to this size are kept so that the fallback can resend them.
    #[serde(default = "default_retry_max_body")]
    pub fallback_max_body_bytes: ByteSize,
    /// Also fall back with non-idempotent methods after modern may have received them: only when
    /// the two sides deduplicate writes between them.
    #[serde(default)]
    pub fallback_non_idempotent: bool,
    /// Copies of requests to the side that is not serving, with the answers compared.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// Raise `modern_percent` step by step while the modern side stays healthy.
    #[serde(default)]
    pub rollout: Option<RolloutConfig>,
    /// A request header that picks the side (`legacy` or `modern`), for callers the route's
    /// identity shows to have the configured scope or claim. Off unless present.
    #[serde(default, rename = "override")]
    pub override_header: Option<OverrideConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    #[serde(default = "default_override_header")]
    pub header: String,
    /// The caller's token must carry this scope...
    #[serde(default)]
    pub require_scope: Option<String>,
    /// ...or this claim with this value (`{ name: role, equals: qa }`).
    #[serde(default)]
    pub require_claim: Option<OverrideClaim>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverrideClaim {
    pub name: String,
    pub equals: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Percentage points added at each stage.
    #[serde(default = "default_rollout_step")]
    pub step: f64,
    /// How long a stage lasts (with the guards holding) before the next.
    #[serde(default = "default_rollout_every", with = "HumanDuration")]
    pub every: Duration,
    /// Modern-side requests a stage needs before any decision.
    #[serde(default = "default_rollout_min_requests")]
    pub min_requests: u64,
    /// Share of modern answers that are 5xx.
    #[serde(default = "default_rollout_error_rate")]
    pub max_error_rate: f64,
    #[serde(default = "default_rollout_p99", with = "HumanDuration")]
    pub max_p99: Duration,
    /// Share of shadow comparisons that mismatch.
    #[serde(default = "default_rollout_diff_rate")]
    pub max_diff_rate: f64,
    /// On a broken guard go back to 0% instead of the last good stage.
    #[serde(default)]
    pub rollback_to_zero: bool,
    /// Baseline check: modern's 5xx rate minus legacy's over the same stage. Unset: not checked.
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// Baseline check: modern's p99 divided by legacy's over the same stage. Unset: not checked.
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
    /// Consecutive failed checks that fail the stage (roll back); each failed check below it
    /// starts a fresh analysis window.
    #[serde(default = "default_rollout_failure_threshold")]
    pub failure_threshold: u32,
    /// Percent values a step may not reach or pass without `POST /admin/rollouts/NAME/approve`.
    #[serde(default)]
    pub approval_before: Vec<f64>,
    /// Signed JSON POSTs on rollout decisions.
    #[serde(default)]
    pub webhooks: Vec<RolloutWebhookConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutWebhookConfig {
    /// `http://` or `https://` (verified against the webpki roots).
    pub url: String,
    /// The environment variable holding the HMAC-SHA256 key (read at config load).
    pub secret_env: String,
    /// Which decisions are sent; empty: all of them.
    #[serde(default)]
    pub events: Vec<RolloutEventKind>,
    /// Attempts per delivery (the first one included), with exponential backoff and jitter.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Per attempt.
    #[serde(default = "default_webhook_timeout", with = "HumanDuration")]
    pub timeout: Duration,
}

/// A rollout decision, as history entries and webhooks name it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RolloutEventKind {
    Step,
    CheckFailed,
    Rollback,
    Promote,
    Pause,
    Resume,
    Approve,
    ApprovalNeeded,
    /// A stage set by hand (`POST /admin/routes/NAME/rollout`) or adopted from another instance.
    Set,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Share of requests copied, 0 to 100.
    #[serde(default = "default_shadow_percent")]
    pub percent: f64,
    /// Copy unsafe methods (POST, PUT, ...) too. Only for a side that is safe to write twice to.
    #[serde(default)]
    pub allow_writes: bool,
    /// Response headers compared besides status and body.
    #[serde(default = "default_shadow_headers")]
    pub compare_headers: Vec<String>,
    /// Fields ignored in the body comparison, in the field-path syntax of transform ops
    /// (`meta.generatedAt`, `items.*.id`); the old `$.items[*].id` spelling loads with a warning.
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub numeric_tolerance: f64,
    #[serde(default)]
    pub ignore_array_order: bool,
    /// The shadow call's deadline; past it the comparison counts as `timeout`.
    #[serde(default = "default_shadow_timeout", with = "HumanDuration")]
    pub timeout: Duration,
    /// Shadow calls in flight at most; beyond it copies are dropped (and counted).
    #[serde(default = "default_shadow_concurrency")]
    pub max_concurrent: usize,
    /// Bodies (request, and each response) larger than this are not compared.
    #[serde(default = "default_idem_resp_bytes")]
    pub max_body_bytes: ByteSize,
    /// Append each mismatch as a JSON line to this file.
    #[serde(default)]
    pub diff_log: Option<PathBuf>,
    /// Keep response values in diff samples (admin API, diff log). Off: only where the answers
    /// differ and the kind of value each side had, since values may be personal data.
    #[serde(default)]
    pub record_values: bool,
    /// Learn which fields are noise by asking the serving side twice (off when absent).
    #[serde(default)]
    pub noise: Option<NoiseConfig>,
}

/// Noise learning on a shadowed route: fields in which two answers of the serving side to the
/// same request differ stop counting as mismatches.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoiseConfig {
    /// Share of shadowed requests also sent to the serving side a second time: `5%` (or `5`),
    /// 0 to 100.
    #[serde(deserialize_with = "super::values::percent")]
    #[schemars(schema_with = "super::schema::percent")]
    pub sample: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationSide {
    pub upstream: String,
    /// This side's translation (a `transforms` name); overrides the route's `transform`.
    #[serde(default)]
    pub transform: Option<String>,
}

/// Idempotency keys on one route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Requests without an `Idempotency-Key` get 400.
    #[serde(default)]
    pub required: bool,
    /// How long a kept outcome is replayed.
    #[serde(default = "default_idem_ttl", with = "HumanDuration")]
    pub ttl: Duration,
    /// How long the first request holds the key; past it the key is free again.
    #[serde(default = "default_idem_lock", with = "HumanDuration")]
    pub lock_timeout: Duration,
    #[serde(default = "default_idem_req_bytes")]
    pub max_request_bytes: ByteSize,
    /// Larger responses (or of unknown length) are passed on but not kept.
    #[serde(default = "default_idem_resp_bytes")]
    pub max_response_bytes: ByteSize,
    /// Outcomes kept for replay: statuses (`201`) or classes (`"2xx"`).
    #[serde(default = "default_idem_statuses")]
    pub store_statuses: Vec<StatusPattern>,
    /// Whose keys these are when the caller has no verified identity, spelled like every request
    /// key (`client_ip`, `header:<name>`...: see `pipeline::key`). Unset: such a caller's key is refused.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(schema_with = "super::schema::one_or_many")]
    pub scope: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `ficus=debug,hyper=warn`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Write one JSON access-log line per request (to stdout, from a background task).
    #[serde(default = "default_true")]
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per available core.
    #[serde(default)]
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Peers whose `Forwarded` / `X-Forwarded-*` headers are believed.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// Headers only a trusted proxy may set; removed from every other peer's requests before
    /// routing. An entry ending in `*` is a prefix.
    #[serde(default = "default_proxy_only_headers")]
    pub proxy_only_headers: Vec<String>,
    /// `Upgrade` protocols passed to the upstream (WebSocket). Any other `Upgrade`, `h2c` above
    /// all, is removed with `HTTP2-Settings` and the request is served as a plain one.
    #[serde(default = "default_allowed_upgrades")]
    pub allowed_upgrades: Vec<String>,
    /// `;` parameters in path segments (`/a;jsessionid=1/b`): `reject` (400) or `keep`.
    #[serde(default)]
    pub path_params: PathParamsMode,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PathParamsMode {
    /// A `;` in the path answers 400: servlet containers strip `;params` from each segment, so
    /// the backend would read another path than the one ficus routed.
    #[default]
    Reject,
    /// Kept and forwarded; routing sees each segment without its parameters, and `..;x` / `.;x`
    /// are dot segments, as a servlet container reads them.
    Keep,
}

fn default_proxy_only_headers() -> Vec<String> {
    crate::pipeline::trust::DEFAULT_PROXY_ONLY_HEADERS
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

fn default_allowed_upgrades() -> Vec<String> {
    vec!["websocket".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The first pair is served when the client's SNI matches no certificate (or sends none).
    pub certs: Vec<CertPairConfig>,
    /// Oldest protocol version offered: `"1.2"` or `"1.3"`.
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// Ask clients for a certificate signed by `ca_file` (mTLS); off unless present.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Session tickets (TLS 1.3 and 1.2), so a returning client resumes without a full
    /// handshake. The ticket key lives in memory only, rotates every 6 hours and survives
    /// reloads; replicas do not share it.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// Sessions remembered server-side (TLS 1.2 session ids; TLS 1.3 too when tickets are off).
    /// 0 turns the cache off.
    #[serde(default = "default_tls_session_cache")]
    pub session_cache_size: usize,
}

fn default_tls_session_cache() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// `required`: the handshake fails without a valid certificate. `optional`: anonymous
    /// clients are let in (routes decide), but a presented certificate must still verify.
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs client certificates must chain to, relative to the config file.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertPairConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request line plus all header lines; larger requests get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Request bodies larger than this get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    #[serde(default = "default_header_read_timeout", with = "HumanDuration")]
    pub header_read_timeout: Duration,
    /// Longest gap between two body chunks from the client before it gets 408.
    #[serde(default = "default_body_read_timeout", with = "HumanDuration")]
    pub body_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    #[serde(default = "default_idle_timeout", with = "HumanDuration")]
    pub idle_timeout: Duration,
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// Name of the environment variable that holds the bearer token for state-changing calls.
    #[serde(default = "default_admin_token_env")]
    pub token_env: String,
    /// Host names the admin API answers to, besides IP literals and `localhost` (any port).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The audit log of state-changing admin actions and reloads, one JSON line each: a file
    /// (appended; relative to the config file). Unset: stderr, beside the other logs.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: default_admin_bind(),
            token_env: default_admin_token_env(),
            allowed_hosts: Vec::new(),
            audit_log: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may run after SIGTERM before connections are cut.
    #[serde(default = "default_drain_timeout", with = "HumanDuration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file or a referenced certificate changes on disk.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Changes closer together than this are applied as one reload.
    #[serde(default = "default_debounce", with = "HumanDuration")]
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            debounce: default_debounce(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` or `https://host:port` URLs; requests go round robin over them.
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Off unless present.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Off unless present.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub balance: BalancePolicy,
    /// For `balance: consistent-hash`: a request key (`client_ip`, `path`, `header:<name>`...:
    /// see `pipeline::key`).
    #[serde(default)]
    pub hash_on: Option<String>,
    /// Passive outlier ejection; off unless present.
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
    /// Active health checks; off unless present.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// For `https://` endpoints; without it they are verified against the webpki roots.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// Requests in flight to this upstream at most; off unless present.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// With `max_concurrent`: requests that may wait for a place; more are shed (503). Default 0.
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// With `max_concurrent`: how long a request waits in the queue before it is shed. Default 1s.
    #[serde(default, with = "HumanDurationOpt")]
    pub queue_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs the upstream's certificate must chain to (instead of the webpki
    /// roots), relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to the upstream (upstream mTLS); with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The name sent as SNI and checked against the upstream's certificate, instead of the
    /// endpoint's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Accept any certificate. For tests only: `ficus check` warns about it.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    /// Power of two choices on requests in flight.
    LeastRequest,
    /// On the upstream's `hash_on`.
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Connect errors, resets, timeouts or 5xx answers in a row that eject an endpoint.
    #[serde(default = "default_outlier_failures")]
    pub consecutive_failures: u32,
    /// First ejection; each further one doubles, up to `max_ejection`.
    #[serde(default = "default_outlier_base", with = "HumanDuration")]
    pub base_ejection: Duration,
    #[serde(default = "default_outlier_max", with = "HumanDuration")]
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once (and never all of them).
    #[serde(default = "default_outlier_percent")]
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_hc_interval", with = "HumanDuration")]
    pub interval: Duration,
    #[serde(default = "default_hc_timeout", with = "HumanDuration")]
    pub timeout: Duration,
    #[serde(default = "default_hc_statuses")]
    pub expected_statuses: Vec<u16>,
    #[serde(default = "default_hc_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy_threshold: u32,
}

/// Retries of idempotent requests (or requests with an `Idempotency-Key`), before any response
/// byte has reached the client.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Bound on each try; the whole exchange stays bounded by `timeouts.request`.
    #[serde(default, with = "HumanDurationOpt")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "default_retry_backoff", with = "HumanDuration")]
    pub backoff: Duration,
    #[serde(default = "default_retry_max_backoff", with = "HumanDuration")]
    pub max_backoff: Duration,
    /// `connect-error`, `reset` (closed before any response byte), `timeout`, or a status.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryCondition>,
    /// Retries may be at most this fraction of requests over `budget_window`...
    #[serde(default = "default_retry_budget")]
    pub budget: f64,
    /// ...plus this many per second of the window.
    #[serde(default = "default_retry_budget_min")]
    pub budget_min_per_sec: u32,
    #[serde(default = "default_retry_budget_window", with = "HumanDuration")]
    pub budget_window: Duration,
    /// Request bodies up to this size are kept for a retry; larger ones are not retried.
    #[serde(default = "default_retry_max_body")]
    pub max_body_bytes: ByteSize,
    /// Also retry non-idempotent methods (POST, PATCH...) after the upstream may have received
    /// them: only for upstreams that deduplicate writes themselves.
    #[serde(default)]
    pub non_idempotent: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            per_try_timeout: None,
            backoff: default_retry_backoff(),
            max_backoff: default_retry_max_backoff(),
            on: default_retry_on(),
            budget: default_retry_budget(),
            budget_min_per_sec: default_retry_budget_min(),
            budget_window: default_retry_budget_window(),
            max_body_bytes: default_retry_max_body(),
            non_idempotent: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RetryCondition {
    Status(u16),
    Named(String),
}

/// A circuit breaker for one upstream. While open, requests get 503 with `Retry-After`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// The sliding window the rates are computed over (whole seconds).
    #[serde(default = "default_breaker_window", with = "HumanDuration")]
    pub window: Duration,
    /// No decision is taken on fewer calls than this in the window.
    #[serde(default = "default_breaker_min_requests")]
    pub min_requests: u32,
    /// Trip when failures / calls in the window reach this (0 < rate <= 1).
    #[serde(default = "default_breaker_failure_rate")]
    pub failure_rate: f64,
    /// A call slower than this counts as slow; unset means slowness is not judged.
    #[serde(default, with = "HumanDurationOpt")]
    pub slow_call_duration: Option<Duration>,
    /// Trip when slow calls / calls in the window reach this (0 < rate <= 1).
    #[serde(default = "default_breaker_slow_rate")]
    pub slow_call_rate: f64,
    /// How long the first trip stays open; each further trip without recovery doubles it.
    #[serde(default = "default_breaker_open_for", with = "HumanDuration")]
    pub open_for: Duration,
    #[serde(default = "default_breaker_max_open_for", with = "HumanDuration")]
    pub max_open_for: Duration,
    /// Calls let through when half-open; all must succeed to close.
    #[serde(default = "default_breaker_probes")]
    pub half_open_probes: u32,
    /// Upstream response statuses that count as failures.
    #[serde(default = "default_breaker_statuses")]
    pub failure_statuses: Vec<u16>,
    #[serde(default = "default_true")]
    pub on_connect_error: bool,
    #[serde(default = "default_true")]
    pub on_timeout: bool,
    /// One breaker per endpoint instead of one for the whole upstream: an endpoint whose breaker
    /// is open is passed over while the others serve.
    #[serde(default)]
    pub per_endpoint: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// Establishing the TCP connection; past it the upstream counts as unreachable (502).
    #[serde(default = "default_connect_timeout", with = "HumanDuration")]
    pub connect: Duration,
    /// From sending the request until the response head arrives (504).
    #[serde(default = "default_request_timeout", with = "HumanDuration")]
    pub request: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_pool_idle_timeout", with = "HumanDuration")]
    pub idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_pool_idle_timeout(),
            max_idle_per_endpoint: default_pool_max_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Where requests go; a route sets this or `migration`, not both.
    #[serde(default)]
    pub upstream: Option<String>,
    /// A legacy and a modern side with a split between them.
    #[serde(default)]
    pub migration: Option<MigrationConfig>,
    /// Who may call this route; anyone unless present.
    #[serde(default)]
    pub identity: Option<RouteIdentityConfig>,
    /// Idempotency keys on this route; off unless present.
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
    /// Names of `rate_limits.policies`; every one must admit the request.
    #[serde(default)]
    pub rate_limit: Vec<String>,
    /// A `transforms` name: how requests and answers are translated for this route's backend.
    #[serde(default)]
    pub transform: Option<String>,
    /// Validate request bodies against a JSON Schema.
    #[serde(default)]
    pub validate: Option<super::transform::ValidateConfig>,
    /// Queue writes (202) while the upstream is unreachable, replay them when it is back.
    #[serde(default)]
    pub buffer_writes: Option<super::writes::BufferWritesConfig>,
    /// Learn the JSON shape each side answers with from a sample of served traffic
    /// (`GET /admin/contract`). Shadow comparisons are learned from without it.
    #[serde(default)]
    pub contract: Option<ContractConfig>,
}

/// Contract learning from served answers: a sampled share is copied (as it streams to the
/// client) and its JSON shape learned off the request path.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    /// Share of served requests learned from, 0 to 100.
    #[serde(default = "default_contract_percent")]
    pub sample_percent: f64,
    /// Bodies (the answer, and the request's) larger than this are not learned from.
    #[serde(default = "default_contract_body")]
    pub max_body_bytes: ByteSize,
}

/// All given conditions must hold. Routes are tried in file order; the first match wins.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host names (no port). `*.example.com` matches any single-or-deeper subdomain.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The normalised path equals this.
    #[serde(default)]
    pub path: Option<String>,
    /// The normalised path starts with this, on a segment boundary (`/api` matches `/api/x`, not `/apix`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A template: `/orders/{id}` (one segment per `{name}`), `/files/{*rest}` (the rest).
    #[serde(default)]
    pub path_template: Option<String>,
    /// A regular expression the whole normalised path must match (it is anchored for you).
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<ConditionConfig>,
    /// Query parameters (raw, not percent-decoded).
    #[serde(default)]
    pub query: Vec<ConditionConfig>,
    #[serde(default)]
    pub cookies: Vec<ConditionConfig>,
}

/// One header, query-parameter or cookie condition: `present`, `equals` or `regex` (one of them).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    pub name: String,
    /// `true`: must be present; `false`: must be absent.
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// Telemetry beyond logs and the metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// OpenTelemetry traces over OTLP. Every key left unset falls back to the standard `OTEL_*`
/// variable; a key set here wins over it. Compiled by `telemetry::traces::compile`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Unset: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The collector's base URL (`/v1/traces` is appended for OTLP/HTTP).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc`.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// An `OTEL_TRACES_SAMPLER` name: `parentbased_traceidratio`, `always_on`...
    #[serde(default)]
    pub sampler: Option<String>,
    #[serde(default)]
    pub sampler_arg: Option<f64>,
    /// How long finished spans wait to be sent in one batch.
    #[serde(default, with = "HumanDurationOpt")]
    pub batch_delay: Option<Duration>,
    #[serde(default, with = "HumanDurationOpt")]
    pub export_timeout: Option<Duration>,
    /// Spans waiting for export; past it new spans are dropped (never waited for).
    #[serde(default)]
    pub max_queue: Option<usize>,
}

/// Durations are written `250ms`, `30s`, `5m`.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. 250ms, 30s, 5m"
            ))
        })
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => humantime::parse_duration(&s).map(Some).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a duration ({e}); write e.g. 250ms, 30s, 5m"
                    ))
                }),
            }
        }

        pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// The `with` target of duration fields: a module cannot name a JSON Schema, a type can
/// (`config::schema` gives it one).
pub struct HumanDuration;

impl HumanDuration {
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde_compat::deserialize(d)
    }
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde_compat::serialize(v, s)
    }
}

/// [`HumanDuration`] for an optional duration.
pub struct HumanDurationOpt;

impl HumanDurationOpt {
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        humantime_serde_compat::option::deserialize(d)
    }
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde_compat::option::serialize(v, s)
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_override_header() -> String {
    "x-ficus-backend".into()
}
fn default_jwt_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_unknown_kid() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token() -> ByteSize {
    ByteSize(8 * 1024)
}
fn default_internal_jwt_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_internal_jwt_copy() -> Vec<String> {
    vec!["sub".into(), "scope".into()]
}
fn default_internal_jwt_header() -> String {
    "authorization".into()
}
fn default_internal_jwt_entries() -> u64 {
    10_000
}
fn default_introspection_max_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_introspection_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_jwt_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_rollout_step() -> f64 {
    10.0
}
fn default_rollout_every() -> Duration {
    Duration::from_secs(300)
}
fn default_rollout_min_requests() -> u64 {
    100
}
fn default_rollout_error_rate() -> f64 {
    0.01
}
fn default_rollout_p99() -> Duration {
    Duration::from_secs(1)
}
fn default_rollout_diff_rate() -> f64 {
    0.01
}
fn default_rollout_failure_threshold() -> u32 {
    1
}
fn default_webhook_attempts() -> u32 {
    5
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_shadow_percent() -> f64 {
    100.0
}
fn default_shadow_headers() -> Vec<String> {
    vec!["content-type".into()]
}
fn default_shadow_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_shadow_concurrency() -> usize {
    64
}
fn default_idem_prefix() -> String {
    "ficus:idem:".into()
}
fn default_idem_entries() -> u64 {
    100_000
}
fn default_idem_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_idem_lock() -> Duration {
    Duration::from_secs(60)
}
fn default_idem_req_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_contract_percent() -> f64 {
    10.0
}
fn default_contract_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_idem_resp_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_idem_statuses() -> Vec<StatusPattern> {
    vec![StatusPattern::Class("2xx".into())]
}
fn default_outlier_failures() -> u32 {
    5
}
fn default_outlier_base() -> Duration {
    Duration::from_secs(10)
}
fn default_outlier_max() -> Duration {
    Duration::from_secs(300)
}
fn default_outlier_percent() -> u32 {
    50
}
fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_hc_statuses() -> Vec<u16> {
    vec![200]
}
fn default_hc_healthy() -> u32 {
    2
}
fn default_hc_unhealthy() -> u32 {
    3
}
fn default_retry_attempts() -> u32 {
    2
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_retry_max_backoff() -> Duration {
    Duration::from_millis(250)
}
fn default_retry_on() -> Vec<RetryCondition> {
    vec![
        RetryCondition::Named("connect-error".into()),
        RetryCondition::Named("reset".into()),
        RetryCondition::Status(502),
        RetryCondition::Status(503),
        RetryCondition::Status(504),
    ]
}
fn default_retry_budget() -> f64 {
    0.2
}
fn default_retry_budget_min() -> u32 {
    3
}
fn default_retry_budget_window() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_max_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_breaker_window() -> Duration {
    Duration::from_secs(10)
}
fn default_breaker_min_requests() -> u32 {
    20
}
fn default_breaker_failure_rate() -> f64 {
    0.5
}
fn default_breaker_slow_rate() -> f64 {
    1.0
}
fn default_breaker_open_for() -> Duration {
    Duration::from_secs(5)
}
fn default_breaker_max_open_for() -> Duration {
    Duration::from_secs(300)
}
fn default_breaker_probes() -> u32 {
    3
}
fn default_breaker_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".into()
}
fn default_tls_min() -> String {
    "1.2".into()
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(16 * 1024)
}
fn default_max_body_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_admin_token_env() -> String {
    "FICUS_ADMIN_TOKEN".into()
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_debounce() -> Duration {
    Duration::from_millis(200)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_accept_units_and_refuse_nonsense() {
        assert_eq!(parse_byte_size("16384"), Ok(16384));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert!(parse_byte_size("ten").is_err());
        assert!(parse_byte_size("10XB").is_err());
        assert!(parse_byte_size("99999999999999999999GiB").is_err());
    }
}
