//! The command line: argument parsing (clap), the password, and one
//! function per subcommand. Errors become anyhow here, with context naming
//! what the user asked for; the typed errors underneath already say which
//! hop failed and what to do.

use crate::compose::{self, Attachment, Draft, Mailbox};
use crate::mailbox::MailboxClient;
use crate::profile::Profile;
use crate::render;
use crate::submit;
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXAMPLES: &str = "\
Profile (~/.config/correo/mua.toml, or --profile FILE, or $CORREO_MUA_PROFILE):
  address = \"alice@example.test\"
  ca = \"var/certs/ca.pem\"
  [submission]
  host = \"127.0.0.1\"
  port = 1587
  security = \"starttls\"        # or \"tls\" (port 1465)
  server_name = \"localhost\"
  [mailbox]
  endpoint = \"https://127.0.0.1:7143\"
  server_name = \"mda\"
Any key can be overridden from the environment: CORREO_MUA__SUBMISSION__PORT=587.
The password comes from --password-stdin, else $CORREO_PASSWORD, else a prompt.

Examples:
  mua send --to bob@example.test --subject 'Lunch?' --body 'Noon at the usual place.'
  echo 'Minutes attached.' | mua send --to bob@example.test --cc carol@example.test \\
      --bcc boss@example.test --subject Minutes --attach minutes.pdf
  mua send --to 'Bob <bob@example.test>' --subject News --body-file news.txt --html-file news.html
  mua list
  mua read 1733040000.M1P2.mda
  mua read 1733040000.M1P2.mda --raw > message.eml
  mua save-attachment 1733040000.M1P2.mda 1 --out ~/Downloads/
  mua delete 1733040000.M1P2.mda
  mua watch
  mua journey 1733040000.M1P2.mda        # the hops it took, with TLS or not
  printf '%s\\n' \"$PW\" | mua --password-stdin list";

/// Correo's mail program: send over SMTP submission, read over the mailbox API.
#[derive(Debug, Parser)]
#[command(name = "mua", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Profile file (default: $CORREO_MUA_PROFILE, then ~/.config/correo/mua.toml).
    #[arg(long, global = true, value_name = "FILE", display_order = 100)]
    pub profile: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long, global = true, display_order = 101)]
    pub password_stdin: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compose a message and submit it to the submission server.
    #[command(
        after_help = "The body is --body, else --body-file, else standard input \
(unless only --html-file is given). Bcc recipients receive the message but appear in no header."
    )]
    Send(SendArgs),
    /// List the messages in the mailbox, oldest first.
    List {
        /// One JSON array of {id, from, subject, date, size, delivered_at, seen}.
        #[arg(long)]
        json: bool,
    },
    /// Show a message: headers, text body, attachments.
    Read {
        /// Message id, as shown by `mua list`.
        id: String,
        /// Print the message exactly as stored (RFC 5322 bytes).
        #[arg(long)]
        raw: bool,
    },
    /// Save one attachment of a message to a file.
    SaveAttachment {
        /// Message id, as shown by `mua list`.
        id: String,
        /// Attachment number as shown by `mua read` (from 1), or its file name.
        attachment: String,
        /// File or directory to write to; `-` for standard output
        /// (default: the attachment's name in the current directory).
        #[arg(long, short, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Delete a message from the mailbox.
    Delete {
        /// Message id, as shown by `mua list`.
        id: String,
    },
    /// Show the hops a message in the mailbox took to get here (from its
    /// Received: fields): which server received it from where, when, and
    /// whether the link was encrypted. Operators see more with `correo journey`.
    Journey {
        /// Message id, as shown by `mua list`.
        id: String,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print each message as it arrives, until Ctrl-C.
    Watch {
        /// Stop after this many arrivals.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// One JSON object per arrival, per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Recipient (repeatable, or comma-separated): bob@example.test or 'Bob <bob@example.test>'.
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub to: Vec<String>,
    /// Copy recipient (repeatable), shown in the Cc header.
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub cc: Vec<String>,
    /// Blind copy recipient (repeatable): in the envelope only, never in a header.
    #[arg(long, num_args = 1.., value_name = "ADDR")]
    pub bcc: Vec<String>,
    /// Subject line.
    #[arg(long, short)]
    pub subject: String,
    /// Body text.
    #[arg(long, short, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body text from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// HTML version of the body (sent as multipart/alternative with the text).
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,
    /// Attach a file (repeatable); the type is guessed from the extension.
    #[arg(long, short, num_args = 1.., value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// From address, if not the profile's (the server decides whether you may use it).
    #[arg(long, value_name = "ADDR")]
    pub from: Option<String>,
}

/// What a command may touch besides the network: injected so tests can
/// drive the whole CLI without the process environment or a terminal.
pub struct Context<'a> {
    /// The environment (CORREO_PASSWORD, CORREO_MUA_PROFILE, CORREO_MUA__…).
    pub env: Vec<(String, String)>,
    pub stdout: &'a mut (dyn Write + Send),
    pub stdin: &'a mut (dyn Read + Send),
    /// Standard input is a terminal: prompting is possible.
    pub interactive: bool,
}

impl Context<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// Messages above this size get a progress bar while they are submitted.
const LARGE_MESSAGE: usize = 1024 * 1024;

/// Runs one parsed command.
pub async fn run(cli: Cli, ctx: &mut Context<'_>) -> anyhow::Result<()> {
    let profile = Profile::load(cli.profile.as_deref(), &ctx.env)?;
    match cli.command {
        Command::Send(args) => send(&profile, args, cli.password_stdin, ctx).await,
        Command::List { json } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            let messages = client.list().await?;
            if json {
                let list: Vec<_> = messages.iter().map(render::summary_json).collect();
                writeln!(ctx.stdout, "{}", serde_json::Value::Array(list))?;
            } else {
                ctx.stdout
                    .write_all(render::list_table(&messages).as_bytes())?;
            }
            Ok(())
        }
        Command::Read { id, raw } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            let bytes = client.fetch(&id).await?;
            if raw {
                ctx.stdout.write_all(&bytes)?;
            } else {
                let message = render::parse(&bytes).with_context(|| {
                    format!("message {id} cannot be parsed; see it with `mua read --raw {id}`")
                })?;
                ctx.stdout
                    .write_all(render::message_view(&message).as_bytes())?;
            }
            Ok(())
        }
        Command::SaveAttachment {
            id,
            attachment,
            out,
            force,
        } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            let bytes = client.fetch(&id).await?;
            save_attachment(&id, &bytes, &attachment, out.as_deref(), force, ctx)
        }
        Command::Journey { id, json } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            let bytes = client.fetch(&id).await?;
            let received = correo_runtime::journey::headers(&bytes, "received");
            let mut report = correo_runtime::journey::Report::new(&id, Vec::new(), Some(received));
            report.journey_ids = correo_runtime::journey::header(&bytes, "x-correo-journey")
                .into_iter()
                .collect();
            report.message_ids = correo_runtime::journey::header(&bytes, "message-id")
                .into_iter()
                .collect();
            if json {
                writeln!(ctx.stdout, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                let text = report.render().replace(
                    "\nNo role has a record of it.\n",
                    "\n(Each server's own records: ask the operator to run `correo journey` with the journey id.)\n",
                );
                ctx.stdout.write_all(render::sanitize(&text).as_bytes())?;
            }
            Ok(())
        }
        Command::Delete { id } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            client.delete(&id).await?;
            writeln!(ctx.stdout, "Deleted {id}.")?;
            Ok(())
        }
        Command::Watch { count, json } => {
            let mut client = connect(&profile, cli.password_stdin, ctx).await?;
            let stream = client.watch().await?;
            eprintln!(
                "Watching the mailbox of {} (Ctrl-C to stop)…",
                profile.address
            );
            watch(stream, count, json, ctx).await
        }
    }
}

async fn connect(
    profile: &Profile,
    password_stdin: bool,
    ctx: &mut Context<'_>,
) -> anyhow::Result<MailboxClient> {
    let password = password(profile, password_stdin, ctx)?;
    Ok(MailboxClient::connect(profile, &password).await?)
}

/// The password: --password-stdin, else CORREO_PASSWORD, else a prompt.
fn password(profile: &Profile, from_stdin: bool, ctx: &mut Context<'_>) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = Vec::new();
        // Byte by byte so nothing after the first line is consumed.
        let mut byte = [0u8; 1];
        while ctx
            .stdin
            .read(&mut byte)
            .context("reading the password from standard input")?
            == 1
        {
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let mut line =
            String::from_utf8(line).context("the password on standard input is not UTF-8")?;
        if line.ends_with('\r') {
            line.pop();
        }
        if line.is_empty() {
            bail!("--password-stdin: standard input held no password");
        }
        return Ok(line);
    }
    if let Some(pw) = ctx.var("CORREO_PASSWORD") {
        return Ok(pw.to_string());
    }
    if !ctx.interactive {
        bail!(
            "no password: set CORREO_PASSWORD or pass --password-stdin (standard input is not a terminal, so mua cannot ask)"
        );
    }
    rpassword::prompt_password(format!("Password for {}: ", profile.address))
        .context("reading the password")
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

async fn send(
    profile: &Profile,
    args: SendArgs,
    password_stdin: bool,
    ctx: &mut Context<'_>,
) -> anyhow::Result<()> {
    let parse_all = |list: &[String]| -> Result<Vec<Mailbox>, compose::ComposeError> {
        let mut all = Vec::new();
        for arg in list {
            all.extend(Mailbox::parse_list(arg)?);
        }
        Ok(all)
    };
    let body_from_stdin = args.body.is_none()
        && (args.body_file.as_deref() == Some(Path::new("-"))
            || (args.body_file.is_none() && args.html_file.is_none()));
    if body_from_stdin && password_stdin {
        bail!(
            "--password-stdin and a body from standard input cannot share it: pass --body or --body-file"
        );
    }
    let html = args
        .html_file
        .as_deref()
        .map(|p| read_file(p, "--html-file"))
        .transpose()?;
    let text = match (&args.body, &args.body_file) {
        (Some(body), _) => Some(body.clone()),
        _ if body_from_stdin => {
            if ctx.interactive {
                eprintln!("Type the message; end it with Ctrl-D on a line of its own.");
            }
            let mut body = String::new();
            ctx.stdin
                .read_to_string(&mut body)
                .context("reading the body from standard input")?;
            Some(body)
        }
        (None, Some(path)) => Some(read_file(path, "--body-file")?),
        (None, None) => None,
    };
    let attachments = args
        .attach
        .iter()
        .map(|p| Attachment::from_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let draft = Draft {
        from: args.from.as_deref().map(Mailbox::parse).transpose()?,
        to: parse_all(&args.to)?,
        cc: parse_all(&args.cc)?,
        bcc: parse_all(&args.bcc)?,
        subject: args.subject,
        text,
        html,
        attachments,
    };
    let message = compose::compose(&profile.address, &draft)?;
    let password = password(profile, password_stdin, ctx)?;

    // The client reports every 64 KiB chunk it writes, so the bar counts
    // the message's own bytes (sent / total, rate, ETA). indicatif draws
    // nothing when stderr is not a terminal.
    let result = if message.bytes.len() > LARGE_MESSAGE {
        let bar = progress_bar(
            message.bytes.len() as u64,
            format!(
                "submitting to {}:{}",
                profile.submission.host,
                profile.submission.port()
            ),
        );
        let on_progress = {
            let bar = bar.clone();
            move |sent: u64, total: u64| {
                bar.set_position(sent);
                if sent == total {
                    bar.set_message("sent; waiting for the server's reply");
                }
            }
        };
        let result = submit::submit_with_progress(profile, &password, &message, on_progress).await;
        bar.finish_and_clear();
        result
    } else {
        submit::submit(profile, &password, &message).await
    };
    let receipt = result?;
    match receipt.queue_id {
        Some(id) => writeln!(
            ctx.stdout,
            "Sent to {} recipient(s): queued as {id}",
            message.recipients.len()
        )?,
        None => writeln!(
            ctx.stdout,
            "Sent to {} recipient(s); server said: {}",
            message.recipients.len(),
            receipt.reply
        )?,
    }
    Ok(())
}

/// Bytes sent of the total, rate and time left.
const BAR_TEMPLATE: &str =
    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A bar for a submission of `total` bytes.
fn progress_bar(total: u64, message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(BAR_TEMPLATE)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message);
    // Redraws the rate and ETA while the server is slow to take a chunk.
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn save_attachment(
    id: &str,
    bytes: &[u8],
    which: &str,
    out: Option<&Path>,
    force: bool,
    ctx: &mut Context<'_>,
) -> anyhow::Result<()> {
    let message = render::parse(bytes).with_context(|| format!("message {id} cannot be parsed"))?;
    let Some((info, data)) = render::find_attachment(&message, which) else {
        let available: Vec<String> = render::attachments(&message)
            .iter()
            .map(|a| {
                format!(
                    "[{}] {}",
                    a.index,
                    render::sanitize(a.name.as_deref().unwrap_or("(unnamed)"))
                )
            })
            .collect();
        if available.is_empty() {
            bail!("message {id} has no attachments");
        }
        bail!(
            "message {id} has no attachment `{which}`; it has: {}",
            available.join(", ")
        );
    };
    if out == Some(Path::new("-")) {
        ctx.stdout.write_all(data)?;
        return Ok(());
    }
    let name = render::safe_file_name(info.name.as_deref(), info.index);
    let path = match out {
        Some(p) if p.is_dir() => p.join(&name),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(&name),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // Never clobber a file the user did not name for overwriting.
        options.create_new(true);
    }
    let mut file = options.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: pass --force to overwrite it, or --out PATH",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(data)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(
        ctx.stdout,
        "Saved attachment [{}] ({}, {}) to {}",
        info.index,
        info.content_type,
        render::human_size(data.len() as u64),
        path.display()
    )?;
    Ok(())
}

async fn watch(
    stream: impl futures::Stream<
        Item = Result<correo_proto::mailbox::MessageSummary, crate::mailbox::MailboxError>,
    >,
    count: Option<usize>,
    json: bool,
    ctx: &mut Context<'_>,
) -> anyhow::Result<()> {
    let mut stream = std::pin::pin!(stream);
    let mut seen = 0usize;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(summary)) => {
                    if json {
                        writeln!(ctx.stdout, "{}", render::summary_json(&summary))?;
                    } else {
                        writeln!(ctx.stdout, "{}", render::arrival_line(&summary))?;
                    }
                    ctx.stdout.flush()?;
                    seen += 1;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(crate::mailbox::MailboxError::WatchEnded.into()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn progress_bar_template_is_valid() {
        assert!(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        let bar = progress_bar(10, "m".into());
        bar.set_position(10);
        assert_eq!(bar.position(), 10);
        bar.finish_and_clear();
    }

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "mua",
            "send",
            "--to",
            "a@example.test",
            "b@example.test",
            "--bcc",
            "c@example.test",
            "-s",
            "S",
            "--attach",
            "x.pdf",
            "y.png",
            "--profile",
            "p.toml",
        ])
        .unwrap();
        assert_eq!(cli.profile.as_deref(), Some(Path::new("p.toml")));
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        assert_eq!(args.to, ["a@example.test", "b@example.test"]);
        assert_eq!(args.attach.len(), 2);
        assert!(
            Cli::try_parse_from([
                "mua",
                "send",
                "--to",
                "a@x",
                "-s",
                "S",
                "-b",
                "t",
                "--body-file",
                "f"
            ])
            .is_err()
        );
    }
}
