//! ficus: an HTTP gateway for strangler-fig migrations.
//!
//! The modules follow the request pipeline: `server` (accept, TLS, limits), `pipeline` (context,
//! routing, and the stages that later capabilities add), `upstream` (pools and balancing), with
//! `config` (file, compile, reload), `admin`, `telemetry` and `error` around them.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod pipeline;
pub mod server;
pub mod telemetry;
pub mod translate;
pub mod upstream;

pub use config::ConfigSource;
pub use gateway::Gateway;
