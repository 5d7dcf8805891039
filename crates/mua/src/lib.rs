//! # mua — Correo's command-line mail program
//!
//! ## SUMMARY
//! `mua send`, `mua list`, `mua read ID`, `mua save-attachment ID N`,
//! `mua delete ID`, `mua watch`.
//!
//! ## DESCRIPTION
//! The user's side of Correo. Outgoing mail is composed here
//! ([`compose`], with mail-builder) and submitted to the MSA over SMTP
//! submission ([`submit`], with Correo's own small client): STARTTLS on port
//! 587 (1587 under `correo up`) or implicit TLS on 465 (1465), then AUTH
//! PLAIN or LOGIN with the profile's address and the user's password. The
//! message is written in chunks, so a large one gets a byte-accurate
//! progress bar. The server's `250 … queued as ID` reply gives the queue id
//! that `mua send` prints.
//! Reading goes through the MDA's Mailbox gRPC service ([`mailbox`]):
//! list, fetch, delete and watch; messages are parsed with mail-parser and
//! shown as text ([`render`]).
//!
//! Who the user is and where the servers are comes from a TOML profile
//! ([`profile`]) plus `CORREO_MUA__…` environment overrides; the password
//! from `--password-stdin`, `CORREO_PASSWORD`, or a prompt. The commands
//! themselves are in [`cli`]; [`cli_main`] is what the `mua` binary and
//! `correo mua …` run.
//!
//! ## SECURITY
//! - Listens on nothing: it is a client of the MSA (SMTP submission) and
//!   the MDA's Mailbox API (gRPC over TLS), and exits when done (`watch`
//!   keeps one outgoing stream open).
//! - Trusts only the profile's CA (`ca`), for SMTP and gRPC alike; system
//!   roots are not loaded, so no other certificate for the same name is
//!   accepted. The server name checked is the profile's
//!   `submission.server_name` / `mailbox.server_name`.
//! - The password never crosses in clear: STARTTLS is required (not
//!   opportunistic) before AUTH, and a mailbox endpoint that is not
//!   `https://` is refused at profile load. The gRPC `authorization`
//!   metadata is marked sensitive so it is not logged.
//! - Bcc recipients appear only in the SMTP envelope, never in a header.
//! - Header values and addresses typed by the user are checked for CR/LF
//!   (no header injection).
//! - Mail is untrusted input: control characters in headers and bodies are
//!   replaced before they reach the terminal (no escape-sequence tricks),
//!   and attachment names are reduced to a plain file name before saving
//!   (no `../`), which never overwrites an existing file without `--force`.
//!   `mua read --raw` is the exception: it prints the bytes as stored.
//!
//! ## STANDARDS
//! - RFC 5322 (Internet Message Format) — headers, Bcc handling (§3.6.3)
//! - RFC 2045–2049 (MIME) — multipart/alternative and /mixed, encodings, attachments
//! - RFC 6409 (Message Submission for Mail)
//! - RFC 3207 (SMTP STARTTLS)
//! - RFC 8314 (implicit TLS for submission)
//! - RFC 5321 (SMTP: dot-stuffing, replies), RFC 1870 (SIZE), RFC 6152 (8BITMIME)
//! - RFC 4954 / 4616 (SMTP AUTH, PLAIN) and RFC 7617 (Basic credentials, on gRPC)

pub mod cli;
pub mod compose;
mod errors;
pub mod mailbox;
pub mod profile;
pub mod render;
mod smtp_client;
pub mod submit;

use std::io::IsTerminal;
use std::process::ExitCode;

/// Entry point of the `mua` binary and of `correo mua …`.
pub fn cli_main(args: Vec<std::ffi::OsString>) -> ExitCode {
    correo_runtime::tls::install_crypto_provider();
    let cli = match correo_runtime::cli::parse_args::<cli::Cli>(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    // Logs only on request: a mail client's stderr is for the user.
    if env
        .iter()
        .any(|(k, _)| k == "CORREO_LOG" || k == "RUST_LOG")
    {
        correo_runtime::telemetry::init("mua", correo_runtime::telemetry::LogFormat::Text);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mua: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let mut stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut ctx = cli::Context {
        env,
        stdout: &mut stdout,
        stdin: &mut stdin,
        interactive,
    };
    match runtime.block_on(cli::run(cli, &mut ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mua: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
