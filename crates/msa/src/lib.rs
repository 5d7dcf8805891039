//! # msa — Correo's message submission agent
//!
//! ## DESCRIPTION
//! The first server a message meets. A mail user agent connects on the
//! submission ports, authenticates, and sends a message; the MSA checks
//! that the user may send as the envelope sender and the `From:` address,
//! validates the message against RFC 5322, repairs what RFC 6409 section 8
//! allows (missing `Date:` and `Message-ID:`, unqualified addresses, line
//! endings; `Bcc:` is removed), stamps it with a journey id (`X-Correo-Journey:`, a new UUID
//! per message) and a `Received:` field, and streams it to an MTA with
//! `Queue.Submit`. The client hears `250 2.0.0 queued as ID` only once an
//! MTA has said the message is durably queued.
//!
//! Modules, one job each: [`config`] (msa.toml), [`listener`] (sockets,
//! sessions, graceful stop), [`handler`] (policy per SMTP verb),
//! [`directory`] (AUTH against the MDA), [`validate`] and [`repair`] (the
//! message), [`prepare`] (both, plus trace fields), [`mta_pool`] (which MTA)
//! and [`submit`] (the hand-off).
//!
//! ## SECURITY
//! - **Listens on** `submission.starttls_listen` (port 587 style: STARTTLS,
//!   RFC 3207) and `submission.tls_listen` (port 465 style: TLS from the
//!   first octet, RFC 8314), with the certificate in `[tls]`. AUTH
//!   SCRAM-SHA-256, PLAIN and LOGIN are offered and accepted only under
//!   TLS (`538 5.7.11` before); no mail is taken before AUTH (`530 5.7.0`).
//! - **Trusts** the private CA in `tls.ca` for the Directory (MDA) and the
//!   Queue (MTA) services, which it calls over mutual TLS with its own
//!   certificate; the Directory's answer decides who a user is and which
//!   addresses are theirs. It stores no passwords; for SCRAM it fetches the
//!   user's verifier (`Directory.GetScramCredentials`) and checks the
//!   client's proof itself. It trusts nothing about a client's IP address:
//!   relaying needs AUTH, from anywhere.
//! - **Refuses** unauthenticated mail (530), bad credentials (535 5.7.8;
//!   454 4.7.0 when the directory cannot be asked; an unknown SCRAM user
//!   fails exactly like a wrong password, against a decoy verifier), the
//!   null sender and envelope senders or `From:` addresses the user does
//!   not own (550 5.7.1), messages that are not RFC 5322 (550 5.6.0, naming
//!   what is wrong), oversized messages (552 5.3.4), and a client-supplied
//!   `X-Correo-Journey:` (dropped: journeys start here).
//! - **Limits** ([`throttle`], `[login_throttle]`): after
//!   `max_failures_per_account` failed logins for one account (default 5)
//!   or `max_failures_per_client` from one address (default 10; IPv6 per
//!   /64) within `window` (5 min), further AUTH attempts get
//!   `421 4.7.0 too many failed logins, try later` and the session is
//!   closed. `[submission]`: at most `max_connections` sessions (default
//!   500) and `max_connections_per_client` (20) over both listeners, else
//!   `421 4.7.0`; a client that talks before the greeting (after
//!   `greeting_delay`) gets `554 5.5.1` and is dropped; `command_timeout`
//!   bounds each whole command line (slow drip included) and
//!   `data_timeout` the DATA phase (`421 4.4.2`); `max_errors` client
//!   mistakes end the session (`421 4.7.0`). The SMTP-level refusals
//!   (smuggling, overlong lines, NUL, STARTTLS injection, relay-hack
//!   address forms) are correo-smtp's; see its SECURITY section.
//!
//! ## STANDARDS
//! RFC 6409 (message submission), RFC 5321 (SMTP), RFC 5322 (message
//! format), RFC 3207 (STARTTLS), RFC 8314 (implicit TLS for submission),
//! RFC 4954 (SMTP AUTH), RFC 4616 (PLAIN), RFC 5802 and RFC 7677
//! (SCRAM-SHA-256, no channel binding), RFC 3848 (ESMTPSA in `Received:`).

pub mod config;
pub mod directory;
#[doc(hidden)]
pub mod fuzz;
pub mod handler;
pub mod listener;
pub mod mta_pool;
pub mod prepare;
pub mod repair;
pub mod submit;
pub mod throttle;
pub mod validate;

pub use config::Config;
pub use listener::Server;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Errors that stop the MSA from starting.
#[derive(Debug, thiserror::Error)]
pub enum MsaError {
    #[error(transparent)]
    Config(#[from] correo_runtime::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] correo_runtime::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Directory(#[from] directory::DirectoryError),
    #[error(transparent)]
    OperatorGrpc(#[from] correo_runtime::grpc::OperatorGrpcError),
    #[error("cannot listen on metrics.listen: {0}")]
    Metrics(std::io::Error),
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), MsaError> {
    // Operator side: journey records, /metrics, gRPC health/reflection/Journey.
    correo_runtime::journey::init("msa", &config.hostname, config.journey.log.as_deref());
    let _metrics = correo_runtime::metrics::start(&config.metrics, "msa")
        .await
        .map_err(MsaError::Metrics)?;
    let _grpc = match &config.grpc {
        Some(grpc) => {
            Some(correo_runtime::grpc::serve_operator_services(grpc.listen, &config.tls).await?)
        }
        None => None,
    };
    Server::bind(config).await?.run(shutdown).await
}

#[derive(Debug, Parser)]
#[command(
    name = "msa",
    version,
    about = "Correo message submission agent (RFC 6409)"
)]
struct Cli {
    /// msa.toml; `CORREO_MSA__…` environment variables override it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve SMTP submission (the default).
    Serve,
    /// Load and validate the configuration, print it, and exit.
    CheckConfig,
}

/// The `msa` command line (also `correo msa …`).
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    correo_runtime::tls::install_crypto_provider();
    let cli = match correo_runtime::cli::parse_args::<Cli>(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli_run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msa: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cli_run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
        Command::Serve => {
            correo_runtime::telemetry::init("msa", config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime
                .block_on(run(&config, correo_runtime::shutdown::signal()))
                .context("msa")
        }
    }
}
