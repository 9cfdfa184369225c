//! Stage 1: accept connections, terminate TLS, enforce connection-level limits.

pub mod contain;
pub mod io;
pub mod listener;
pub mod runtime;
pub mod tls;
