//! # correo-smtp — the SMTP protocol layer shared by Correo's MSA and MTA
//!
//! ## DESCRIPTION
//!
//! Everything about speaking SMTP that does not depend on a role's policy:
//!
//! - [`reply`]: SMTP replies with enhanced status codes.
//! - [`address`]: validated mailboxes ([`Address`]) and reverse paths.
//! - [`reader`]: sans-IO byte readers — command lines, the DATA section
//!   (end-of-data, dot-unstuffing, limits, bare line endings), server
//!   replies — plus [`reader::dot_stuff`] for sending. No I/O, fed byte
//!   slices, unit-tested byte by byte and meant for fuzzing.
//! - [`server`]: [`server::serve`] runs one session on an accepted
//!   connection (tokio, any `AsyncRead + AsyncWrite`), with one handler
//!   function per verb; the role supplies a [`server::Handler`] that decides
//!   policy (who may send, which recipients exist, where the message goes).
//! - [`client`]: the outbound client the MTA relays with.
//! - [`received`]: `Received:` trace fields and counting them.
//! - [`scram`]: the SCRAM-SHA-256 server exchange, sans-IO, and verifier
//!   derivation (used by the MDA at `user add`).
//!
//! Command grammar is parsed by `smtp-proto`; Correo's stricter checks
//! (paths, parameters we do not advertise, HELO names) run on top.
//!
//! ## SECURITY
//!
//! What the server refuses, and why:
//!
//! - **SMTP smuggling**: DATA ends only at CRLF `.` CRLF where both line
//!   ends are real CRLF. `\n.\n`, `\n.\r\n`, `\r.\n`, `\r.\r` and similar
//!   never end a message; with [`server::BareLineEndings::Reject`] (MTA) a
//!   message containing bare CR or LF is refused with 550 5.5.2 after
//!   reading to the real end, with `Normalize` (MSA) they become CRLF. The
//!   client normalizes and dot-stuffs, so it never emits a bare CR or LF.
//! - **STARTTLS command injection** (CVE-2011-0411): bytes pipelined after
//!   `STARTTLS` are discarded, never executed inside TLS; the session
//!   returns to its pre-EHLO state. The client likewise drops anything the
//!   server sent after its 220.
//! - **Credentials in plaintext**: AUTH is advertised and accepted only under
//!   TLS (538 5.7.11 otherwise); a second AUTH or AUTH inside a transaction
//!   is refused; PLAIN with a foreign authorization identity is refused.
//! - **Relay tricks**: source routes, `%` and `!` in local parts, `@` inside
//!   quoted local parts, IP literals and non-ASCII addresses are refused.
//! - **Parameters we do not offer** (SMTPUTF8, DSN, BINARYMIME, ...) get
//!   555 rather than being silently ignored.
//! - **Resource exhaustion**: command lines over 512 octets (discarded up to
//!   their line end, never executed), text lines over 1000 octets, messages
//!   over the size limit (read to the end, not kept), recipient and error
//!   limits, per-command and whole-DATA timeouts, and a write timeout for
//!   clients that do not read. Reply text from handlers cannot inject extra
//!   reply lines. The client bounds reply line length and count.
//! - **Early talkers**: a client that sends anything before the greeting
//!   (within [`server::ServerConfig::greeting_delay`]) gets `554 5.5.1`
//!   and no session (RFC 5321 4.3.1; what spam bots and pipelining
//!   attacks do).
//! - **Slow drip**: `command_timeout` is a deadline for the whole command
//!   line, not per read, so one byte at a time cannot hold a session
//!   (`421 4.4.2`); `data_timeout` likewise for all of DATA.
//! - **Connection floods**: [`server::ConnectionLimiter`] caps sessions in
//!   total and per client address (IPv6 per /64); listeners refuse the
//!   rest with `421 4.7.0` through [`server::refuse`].
//! - **Passwords**: besides PLAIN and LOGIN, [`scram`] implements
//!   SCRAM-SHA-256 (RFC 5802/7677) so the password never reaches the
//!   server; an unknown user runs against a decoy verifier and fails at
//!   the proof exactly like a wrong password. A handler reply with code
//!   421 (e.g. login throttling) closes the session.
//! - **Never panics on input**; handler refusals are replies. The parsers
//!   are fuzzed (`fuzz/`, and the `fuzz_smoke_*` tests in CI; entry points
//!   in `correo_smtp::fuzz`).
//! - The outbound client does **not** verify server certificates: that is
//!   opportunistic TLS per RFC 7435 (see `client`), protecting against
//!   passive eavesdropping only.
//!
//! What it trusts: the [`server::Handler`] for policy, the
//! `rustls::ServerConfig` it is given, and nothing a client says about
//! itself (HELO names and `MAIL FROM AUTH=` are recorded or ignored, never
//! used for decisions).
//!
//! ## STANDARDS
//!
//! - RFC 5321 — SMTP (commands, replies, limits 4.5.3, trace fields 4.4)
//! - RFC 3207 — STARTTLS
//! - RFC 4954 — AUTH (with RFC 4616 PLAIN; LOGIN as deployed)
//! - RFC 5802 / RFC 7677 — SCRAM-SHA-256 (without channel binding)
//! - RFC 6409 — Message Submission (the MSA's profile: AUTH, Normalize)
//! - RFC 2920 — PIPELINING
//! - RFC 1870 — SIZE
//! - RFC 6152 — 8BITMIME
//! - RFC 2034 / RFC 3463 — enhanced status codes
//! - RFC 3848 — ESMTP transmission types in `Received:` (ESMTPSA ...)
//! - RFC 7435 — opportunistic security (client STARTTLS)
//! - RFC 5322 — dates in `Received:`

pub mod address;
pub mod client;
#[doc(hidden)]
pub mod fuzz;
pub mod reader;
pub mod received;
pub mod reply;
pub mod scram;
pub mod server;
mod tls;

pub use address::{Address, AddressError, ReversePath};
pub use reply::Reply;
