//! Metrics, logs and the access log.

pub mod access_log;
pub mod metrics;
pub mod redact;
pub mod traces;

pub use self::metrics::Metrics;

/// Structured JSON logs via `tracing`; `RUST_LOG` wins over the configured level.
pub fn init_logging(config_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A second call (tests start several gateways) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
