//! # correo-runtime — what every Correo process needs before it does its job
//!
//! Small, role-independent plumbing: typed configuration loaded from a TOML
//! file plus environment overrides and validated at start-up ([`config`]),
//! structured logs ([`telemetry`]), TLS and the private CA that secures the
//! gRPC links between roles ([`tls`], [`pki`]), gRPC health and reflection
//! ([`grpc`]), signal handling ([`shutdown`]), Prometheus metrics
//! ([`metrics`], `docs/METRICS.md`) and the journey records of each message
//! ([`journey`], `docs/JOURNEY.md`), and files that appear only complete
//! and fsynced ([`durable`]).
//!
//! It knows no role's policy (the metric and journey names are the only
//! place it speaks of SMTP, queues and Maildirs); roles and `correo-smtp`
//! depend on it, never the other way round.
//!
//! ## Security
//! [`tls::install_crypto_provider`] selects rustls' ring provider explicitly;
//! every binary calls it first. gRPC servers built with
//! [`tls::grpc_server_tls`] require a client certificate signed by the
//! private CA unless told otherwise (the MUA-facing mailbox API, which
//! authenticates users by password instead).

pub mod cli;
pub mod config;
pub mod durable;
pub mod grpc;
pub mod journey;
pub mod metrics;
pub mod pki;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
