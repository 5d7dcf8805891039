//! Structured logs with tracing. `RUST_LOG` (or `CORREO_LOG`) selects the
//! level; `log_format = "json"` switches to one JSON object per line, for
//! log collectors. Log lines about a message carry its `queue_id` and
//! `journey` fields (on the line itself or on its span; in JSON, spans are
//! listed under `spans`).
//!
//! Beside the log output, the [`crate::journey`] layer records every line
//! that has a `journey_event` field as a journey event, whatever the log
//! level.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

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
    let output = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_target(false)
            // Colours only on a terminal: escape codes in a log file are
            // noise to grep and to log collectors.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(output.with_filter(filter))
        // INFO and above only: journey events and their spans are never
        // below INFO, and an unfiltered layer would make every TRACE and
        // DEBUG event of every dependency (h2, rustls, sled, via `log`)
        // reach the subscriber — that cost several percent of the MTA's CPU.
        .with(crate::journey::layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .try_init();
    if result.is_ok() {
        tracing::debug!(role, "telemetry initialised");
    }
}
