//! # mta — Correo's mail transfer agent: durable queue and relay
//!
//! ## DESCRIPTION
//! The MTA takes responsibility for a message and keeps it until every
//! recipient is delivered or has failed for good.
//!
//! - **Intake.** `Queue.Submit` over gRPC (from the MSA) and inbound SMTP on
//!   the port 25 side (from other organisations, only for `local_domains`).
//!   Each message is appended as one record to a spool segment and
//!   `fdatasync`ed, concurrent messages sharing one flush ([`spool`]), and
//!   only then acknowledged (gRPC OK / `250 2.0.0 queued as <id>`). A `Received:` field is
//!   prepended, and `X-Correo-Journey:` when the message has none.
//! - **Queue.** The spool is the truth; per-recipient state lives in a
//!   sled index ([`index`]) that start-up reconciles with the spool
//!   ([`queue`]): a lost index costs duplicates at worst, never a message.
//! - **Delivery.** The [`scheduler`] takes due recipients, groups them by
//!   message and destination domain and delivers with bounded concurrency:
//!   local domains through the MDA's `Delivery.Deliver` ([`local`]), others
//!   by MX lookup ([`route`]) and SMTP ([`relay`]). Temporary failures are
//!   retried with a doubling, jittered back-off ([`retry`]) until the queue
//!   lifetime. A destination that keeps refusing connections is backed off
//!   as a whole (circuit breaker): its recipients are deferred without
//!   connecting, so a dead domain does not hold up live ones. Due work is
//!   found through a time-ordered schedule, never a scan of the index.
//! - **Bounces.** Permanent failures (5xx, null MX, NXDOMAIN, expiry,
//!   `mta queue bounce`) produce one RFC 3464 DSN per message and failure
//!   batch, from `<>` to the envelope sender, queued through the same
//!   spool ([`bounce`]); a message from `<>` is never bounced. One "delayed"
//!   DSN after `retry.delay_warning`.
//! - **Disk.** A spool write or fsync failure answers `451 4.3.0`; less
//!   than `spool.min_free_bytes` free answers `452 4.3.1` at MAIL ([`space`]).
//! - **Control.** `QueueAdmin` over gRPC, used by `mta queue …` ([`cli`]).
//!
//! Every log line about a message carries `queue_id` and `journey` fields.
//!
//! ## SECURITY
//! - *Listens on:* `smtp.listen` (SMTP, STARTTLS offered with `[tls]` when
//!   `smtp.starttls`; no AUTH) and `grpc.listen` (Queue, QueueAdmin, health,
//!   reflection), which requires a client certificate signed by the private
//!   CA (`tls.ca`).
//! - *Trusts:* holders of a CA-signed certificate to submit on gRPC (the
//!   MSA); only its own certificate (the `mta queue` commands run with the
//!   node's config) for `QueueAdmin` — any other gets PERMISSION_DENIED; the
//!   MDA's directory for which local addresses exist. It never trusts a
//!   client by its IP address.
//! - *Refuses:* relaying — SMTP recipients outside `local_domains` get
//!   `554 5.7.1 relay access denied`; unknown local users `550 5.1.1`;
//!   messages with more than 30 `Received:` fields (`554 5.4.6`, loops);
//!   bare CR/LF line endings (smuggling); messages over
//!   `smtp.max_message_size`; sessions beyond `smtp.max_connections` (or
//!   `max_connections_per_client`) get `421 4.7.0`; clients that talk
//!   before the greeting (`smtp.greeting_delay`) get `554 5.5.1`; idle and
//!   slow-drip clients `421 4.4.2` (`smtp.command_timeout`, whole command
//!   line; `smtp.data_timeout`); relaying to a domain
//!   whose best MX is this host (RFC 5321 5.1 loop). Queue ids are checked
//!   to be 16 hex digits before they touch a path.
//! - Outbound STARTTLS is opportunistic and unauthenticated (RFC 7435).
//!
//! ## STANDARDS
//! RFC 5321 (SMTP; 4.4 trace fields, 4.5.4.1 retry strategy, 5.1 MX
//! selection and implicit MX, 6.1 reliable delivery, 6.3 loop detection),
//! RFC 7505 (null MX, `556 5.1.10`), RFC 3207 (STARTTLS), RFC 3463 and
//! RFC 2034 (enhanced status codes), RFC 3848 (ESMTPA/ESMTPS in Received),
//! RFC 6531 is not supported, RFC 7435 (opportunistic TLS), RFC 5322
//! (message format), RFC 3464 and RFC 3462 (delivery status notifications,
//! multipart/report), RFC 3834 (Auto-Submitted).

pub mod bounce;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod headers;
pub mod inbound;
pub mod index;
pub mod local;
pub mod queue;
pub mod queue_id;
pub mod relay;
pub mod retry;
pub mod route;
pub mod scheduler;
pub mod server;
pub mod space;
pub mod spool;

/// Entry point of the `mta` binary and of `correo mta …`.
pub fn cli_main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    correo_runtime::tls::install_crypto_provider();
    cli::main(args)
}
