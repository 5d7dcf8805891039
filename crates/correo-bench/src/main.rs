//! `correo-bench`: Correo side by side with Postfix. See the crate docs and
//! docs/BENCHMARKS.md.

use clap::Parser;
use correo_bench::{Client, Options};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Benchmark Correo side by side with Postfix on loopback (issue 6)")]
struct Cli {
    /// One run per figure with small counts (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Runs per figure (the median is printed); default 3, 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Messages per throughput run; default 2000, 50 with --quick.
    #[arg(long)]
    messages: Option<usize>,
    /// Directory of the mta, mda, msa and correo-dns binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not start the Postfix peer.
    #[arg(long)]
    no_postfix: bool,
    /// The peer's setup.sh (default: ../shared/peers/postfix/setup.sh).
    #[arg(long)]
    postfix_script: Option<PathBuf>,
    #[arg(long, default_value_t = 2625)]
    postfix_port: u16,
    /// Inbound load client: auto (smtp-source if installed), own, smtp-source.
    #[arg(long, default_value = "auto")]
    client: String,
    /// Only these sections (comma-separated): inbound, submission, latency, memory, idle, large, backlog.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Idle SMTP sessions held open against the MTA.
    #[arg(long)]
    idle: Option<usize>,
    /// Messages deferred to a dead destination.
    #[arg(long)]
    backlog: Option<usize>,
    /// Retry interval of the backlog (e.g. 10s puts the dead domain's retries
    /// inside the measurement); default 1h.
    #[arg(long)]
    backlog_retry: Option<String>,
    /// Size of the large message in bytes.
    #[arg(long)]
    large_bytes: Option<usize>,
    /// CORREO_LOG of the roles.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Only start a Correo stack, print its addresses and PIDs, and keep it up
    /// this many seconds (for profiling from another shell).
    #[arg(long)]
    serve: Option<u64>,
    /// Also write the results table (Markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bin_dir = cli.bin_dir.unwrap_or_else(correo_bench::default_bin_dir);
    let mut o = if cli.quick {
        Options::quick(bin_dir)
    } else {
        Options::full(bin_dir)
    };
    if let Some(v) = cli.runs {
        o.runs = v.max(1);
    }
    if let Some(v) = cli.messages {
        o.messages = v.max(1);
    }
    if let Some(v) = cli.idle {
        o.idle_sessions = v;
    }
    if let Some(v) = cli.backlog {
        o.backlog = v;
    }
    if let Some(v) = cli.backlog_retry {
        o.backlog_retry = v;
    }
    if let Some(v) = cli.large_bytes {
        o.large_bytes = v;
    }
    o.postfix = !cli.no_postfix;
    o.postfix_script = cli.postfix_script;
    o.postfix_port = cli.postfix_port;
    o.only = cli.only;
    o.log_level = cli.log_level;
    o.client = match cli.client.as_str() {
        "own" => Client::Own,
        "smtp-source" => Client::SmtpSource,
        _ => Client::Auto,
    };
    if let Some(secs) = cli.serve {
        return match correo_bench::serve(&o, secs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("correo-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match correo_bench::run(o) {
        Ok(report) => {
            println!("\n{}", report.markdown());
            if let Some(out) = cli.out
                && let Err(e) = correo_bench::write_markdown(&report, &out)
            {
                eprintln!("write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("correo-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
