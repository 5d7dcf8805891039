//! # mda — Correo's mail delivery agent
//!
//! ## DESCRIPTION
//! The last hop of a message's journey and the keeper of accounts. The MDA
//! holds the account directory (domains, users with argon2id password
//! hashes, aliases) in `<data_dir>/accounts.json`, writes every message the
//! MTA hands it into the recipient's Maildir
//! (`<data_dir>/mail/<domain>/<user>/Maildir/`), and serves each user their
//! own mailbox.
//!
//! It serves three gRPC services from `proto/`:
//! - `Directory` (Authenticate, GetScramCredentials, CheckRecipient,
//!   ListDomains) for the MSA and MTA;
//! - `Delivery.Deliver` and `Delivery.DeliverBatch` for the MTA: the
//!   envelope, then the message; for each recipient, aliases are resolved
//!   and the message is written to `tmp/`, made durable (one syncfs(2) for
//!   all the files of a call), linked into `new/` and `new/` fsynced before
//!   DELIVERED is returned; unknown users are PERMANENT 550 5.1.1, I/O
//!   failures TEMPORARY 451 4.3.0. The syncfs waits for every writer of the
//!   file system that holds `data_dir`, so the mail store is best on a file
//!   system of its own (or `store.batch_sync = "files"`: an fsync per file,
//!   which the MDA also falls back to before Linux 5.17);
//! - `Mailbox` (List, Fetch, Delete, Watch) for the MUA.
//!
//! At start-up, files older than 36 hours are swept from every `tmp/`
//! (deliveries a crash interrupted).
//!
//! The `mda user …` and `mda alias …` commands edit `accounts.json` in place
//! (exclusive lock, atomic replace); a running MDA reloads it on its next
//! lookup. Module map: [`config`], [`address`], [`accounts`], [`auth`],
//! [`maildir`], [`directory_service`], [`delivery_service`],
//! [`mailbox_service`], [`server`], and the CLI in [`cli_main`].
//!
//! ## SECURITY
//! - **Listens on** `grpc.listen` (Delivery, Directory, health, reflection)
//!   with mutual TLS: only clients holding a certificate signed by the
//!   private CA in `tls.ca` get a connection. And on `mailbox.listen`
//!   (Mailbox only) with TLS but no client certificates.
//! - **Trusts** any holder of a CA-signed certificate on the internal
//!   listener to deliver mail and ask about accounts (the roles of one
//!   Correo installation). On the mailbox listener it trusts nobody: every
//!   call must carry `authorization: Basic base64(address:password)`, checked
//!   against the argon2id hash, and reaches only that user's Maildir.
//! - **Refuses** addresses whose local part is anything but ASCII letters,
//!   digits and `.-_+` (no `/`, no leading or trailing `.`, no `..`, no
//!   control characters), so no address can name a path outside the mail
//!   root; message ids containing `/`, `..`, `:` or control characters;
//!   reverse paths that could break out of `Return-Path: <…>`; messages
//!   over [`delivery_service::MAX_MESSAGE_SIZE`]. Authentication failures
//!   look the same, and take the same argon2 work, whether or not the user
//!   exists. `mda user add` also stores a SCRAM-SHA-256 verifier (salt,
//!   iteration count, StoredKey, ServerKey; RFC 5802) next to the argon2id
//!   hash; `Directory.GetScramCredentials` hands it only to mTLS clients
//!   (the MSA), never logs it, and answers `found = false` alike for an
//!   unknown user and an account without a verifier (created before SCRAM
//!   support: such users keep PLAIN/LOGIN). Passwords are never logged or stored; successful checks are
//!   remembered for a minute under a keyed SHA-256 of the credentials.
//!   At most twice the CPU count argon2 runs happen at once, so a flood of
//!   bad logins cannot exhaust memory; TLS handshakes must finish in 10 s.
//!   `accounts.json` and every message are written with mode 0600, Maildir
//!   directories with 0700.
//!
//! ## STANDARDS
//! - Maildir, as described by D. J. Bernstein ("Using maildir format") and
//!   the Courier `maildir(5)` page: `tmp`/`new`/`cur`, unique names,
//!   `:2,FLAGS` info suffix, the `,S=<size>` extension.
//! - RFC 5321 §4.4 (`Return-Path` records the reverse path at final
//!   delivery), §2.4 (case of local parts); `Delivered-To` as written by
//!   Postfix local(8) and qmail.
//! - RFC 5322 (message header fields read for summaries: From, Subject, Date).
//! - RFC 3463 enhanced status codes (5.1.1, 5.1.2, 5.1.3, 5.3.4, 4.3.0, 4.3.1).
//! - RFC 9106 (Argon2id), RFC 7617 (HTTP Basic credentials, reused as gRPC
//!   metadata), gRPC health checking protocol and server reflection.

pub mod accounts;
pub mod address;
pub mod auth;
mod cli;
pub mod config;
pub mod delivery_service;
pub mod directory_service;
pub mod mailbox_service;
pub mod maildir;
pub mod server;
pub mod state;

pub use cli::cli_main;
pub use config::Config;
pub use server::{Mda, ServeError};
