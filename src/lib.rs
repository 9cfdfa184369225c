//! ficus: an HTTP gateway for strangler-fig migrations.
//!
//! The modules follow the request pipeline: `server` (accept, TLS, limits), `pipeline` (context,
//! routing and every stage after it), `identity` and `translate` (what those stages call),
//! `upstream` (pools, balancing, breakers, retries), with `config` (file, compile, reload),
//! `gateway` (start and reload), `admin`, `telemetry` and `error` around them; `demo` is the
//! embedded demo config and its identity provider.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod import;
pub mod pipeline;
pub mod server;
pub mod telemetry;
pub mod translate;
pub mod upstream;

pub use config::ConfigSource;
pub use gateway::Gateway;
