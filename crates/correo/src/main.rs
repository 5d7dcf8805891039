//! # correo — the launcher
//!
//! `correo up` starts a whole single-domain mail stack on 127.0.0.1 from an
//! embedded default: the MDA, the MTA and the MSA, each as its own process,
//! supervised (a child that dies is reported and restarted; Ctrl-C stops all
//! of them cleanly, MSA first, MDA last).
//!
//! `correo certs` creates the private CA and the per-role certificates that
//! secure the gRPC links between roles (mutual TLS).
//!
//! `correo probe grpc|smtp …` checks a role's health (container
//! healthchecks; see `probe.rs`); `correo demo-users` creates demo accounts
//! that do not exist yet (container init step; see `demo.rs`).
//!
//! `correo journey ID` shows one message's journey: each role's own record
//! (the `Journey` gRPC service) and the delivered message's `Received:`
//! fields (see `journey.rs`, docs/JOURNEY.md).
//!
//! `correo mda|mta|msa|mua ARGS…` runs one role's own command line from this
//! binary, so `cargo run -p correo` is all a user has to build. The roles
//! stay separate processes and separate crates; the launcher only links their
//! command-line entry points.
//!
//! ## Security
//! Everything `up` starts listens on 127.0.0.1 only. Demo passwords are
//! random, printed once and kept in `<data>/demo-accounts.txt` (mode 0600);
//! private keys are written with mode 0600.

mod demo;
mod journey;
mod layout;
mod probe;
mod supervisor;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "correo",
    version,
    about = "Correo mail system: launcher and role dispatcher",
    after_help = "Examples:\n  correo up                      # whole stack under ./var\n  correo up --data /tmp/correo   # elsewhere\n  correo certs --dir var/certs   # CA and role certificates only\n  correo mua --profile var/mua/alice.toml list\n  correo journey JOURNEY-ID      # the hops of one message"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start MDA, MTA and MSA on 127.0.0.1 with the embedded default configuration.
    Up {
        /// Directory for configuration, certificates, queue and mailboxes.
        #[arg(long, default_value = "var")]
        data: PathBuf,
    },
    /// Create the private CA and the role certificates (kept if present).
    Certs {
        /// Directory to write ca.pem, ca.key and ROLE.pem/ROLE.key into.
        #[arg(long, default_value = "var/certs")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses to put in every role certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Show a message's journey: every hop, role and node, TLS, MX, retries.
    Journey(journey::JourneyArgs),
    /// Health probes for container healthchecks (exit 0 = healthy).
    #[command(subcommand)]
    Probe(probe::Probe),
    /// Create demo accounts that do not exist yet (idempotent init step).
    DemoUsers {
        /// The MDA's configuration (its data_dir holds accounts.json).
        #[arg(long)]
        mda_config: PathBuf,
        /// Password of every new account; unset = a random one each, printed.
        #[arg(long, env = "CORREO_DEMO_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Append `ADDRESS PASSWORD` of new accounts to this file (mode 0600).
        #[arg(long)]
        record: Option<PathBuf>,
        /// Addresses to create.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Run the MDA's command line (e.g. `correo mda --config F user list`).
    #[command(disable_help_flag = true)]
    Mda {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the MTA's command line.
    #[command(disable_help_flag = true)]
    Mta {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the MSA's command line.
    #[command(disable_help_flag = true)]
    Msa {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the MUA (send, list, read, …).
    #[command(disable_help_flag = true)]
    Mua {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn role_args(name: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(name)).chain(args).collect()
}

fn main() -> ExitCode {
    correo_runtime::tls::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Mda { args } => mda::cli_main(role_args("mda", args)),
        Command::Mta { args } => mta::cli_main(role_args("mta", args)),
        Command::Msa { args } => msa::cli_main(role_args("msa", args)),
        Command::Mua { args } => mua::cli_main(role_args("mua", args)),
        Command::Certs { dir, hosts } => report(certs(&dir, &hosts)),
        Command::Probe(p) => report(probe::run(p)),
        Command::Journey(args) => report(journey::run(args)),
        Command::DemoUsers {
            mda_config,
            password,
            record,
            addresses,
        } => report(demo::run(demo::DemoUsers {
            mda_config,
            addresses,
            password: password.filter(|p| !p.is_empty()),
            record,
        })),
        Command::Up { data } => {
            correo_runtime::telemetry::init("correo", correo_runtime::telemetry::LogFormat::Text);
            report(up(data))
        }
    }
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("correo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs(dir: &std::path::Path, hosts: &[String]) -> Result<()> {
    let made = layout::ensure_certs(dir, hosts)?;
    println!("certificates in {} ({} new)", dir.display(), made);
    Ok(())
}

fn up(data: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    runtime.block_on(async move {
        let self_exe = std::env::current_exe().context("locate the correo binary")?;
        let stack = layout::Stack::prepare(&data)?;
        stack.ensure_demo_accounts(&self_exe).await?;
        supervisor::run(&self_exe, &stack).await
    })
}
