//! Everything on the far side of the proxy: the pooled client and the endpoint choice.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod compile;
pub mod health;
pub mod limit;
pub mod retry;
pub mod tls;

pub use client::{ClientCache, Upstream, UpstreamCallError};
