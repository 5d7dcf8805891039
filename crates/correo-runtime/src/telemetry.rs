//! Structured logs with tracing. `RUST_LOG` (or `CORREO_LOG`) selects the
//! level; `json = true` switches to one JSON object per line, for log
//! collectors. Log lines about a message carry its `queue_id` and
//! `journey` fields.

use tracing_subscriber::{EnvFilter, fmt};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber for a process named `role`. Safe to call
/// more than once (later calls are ignored).
pub fn init(role: &str, format: LogFormat) {
    let filter = std::env::var("CORREO_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(role, "telemetry initialised");
    }
}
