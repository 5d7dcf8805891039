//! Command line: `mta --config F` serves; `mta --config F queue …` is a
//! client of the running node's QueueAdmin service (mutual TLS with the
//! node's own certificate, like Postfix's postqueue talking to the queue
//! manager).

use crate::config::{Config, ENV_PREFIX};
use crate::server::Server;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use correo_proto::admin::queue_admin_client::QueueAdminClient;
use correo_proto::admin::{
    ListQueueRequest, QueueIdRequest, QueuedMessage, RetryRequest, SummaryRequest,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "mta",
    version,
    about = "Correo transfer agent: durable queue, inbound SMTP, MX relay"
)]
pub struct Cli {
    /// Configuration file (mta.toml); CORREO_MTA__* variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and control the queue of the running node.
    Queue {
        /// Name the node's certificate carries (its SANs: mta, localhost, 127.0.0.1).
        #[arg(long, default_value = "mta")]
        server_name: String,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List every queued message and its recipients.
    List,
    /// Show one message.
    Show { id: String },
    /// Make deferred recipients due now.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Keep a message from being attempted.
    Hold { id: String },
    /// Release a held message (due now).
    Release { id: String },
    /// Remove a message without notice.
    Delete { id: String },
    /// Fail every remaining recipient (bounce to the sender).
    Bounce { id: String },
    /// Count queued recipients by domain and age.
    Summary,
}

/// Parses arguments and runs; errors print as `mta: …` and exit 1.
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = match correo_runtime::cli::parse_args::<Cli>(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config: Config =
        correo_runtime::config::load_from_process(cli.config.as_deref(), ENV_PREFIX)
            .context("configuration")?;
    match cli.command {
        None => serve(config).await,
        Some(Command::Queue {
            server_name,
            action,
        }) => queue_command(&config, &server_name, action).await,
    }
}

async fn serve(config: Config) -> Result<()> {
    correo_runtime::telemetry::init("mta", config.log_format);
    let server = Server::start(config).await.context("starting the MTA")?;
    correo_runtime::shutdown::signal().await;
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

/// The address to dial for a listen address: a wildcard means this host.
fn dial_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// A QueueAdmin client over mutual TLS with the node's own identity.
pub async fn admin_client(config: &Config, server_name: &str) -> Result<QueueAdminClient<Channel>> {
    let addr = dial_addr(config.grpc.listen);
    let tls =
        correo_runtime::tls::grpc_client_tls(&config.tls, server_name, true).context("tls")?;
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the MTA's QueueAdmin at {addr}"))?;
    Ok(QueueAdminClient::new(channel))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

async fn queue_command(config: &Config, server_name: &str, action: QueueAction) -> Result<()> {
    let mut client = admin_client(config, server_name).await?;
    let id_request = |id: &str| QueueIdRequest {
        queue_id: id.to_string(),
    };
    match action {
        QueueAction::List => {
            let reply = client
                .list(ListQueueRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if reply.messages.is_empty() {
                println!("queue is empty");
            }
            for message in &reply.messages {
                print_message(message);
            }
            let recipients: usize = reply.messages.iter().map(|m| m.recipients.len()).sum();
            if !reply.messages.is_empty() {
                println!(
                    "-- {} messages, {} recipients",
                    reply.messages.len(),
                    recipients
                );
            }
        }
        QueueAction::Show { id } => {
            let message = client
                .show(id_request(&id))
                .await
                .map_err(status_error)?
                .into_inner();
            print_message(&message);
        }
        QueueAction::Retry { id, all } => {
            let request = RetryRequest {
                queue_id: id.unwrap_or_default(),
                all,
            };
            let count = client
                .retry(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .count;
            println!("{count} recipients scheduled for immediate retry");
        }
        QueueAction::Hold { id } => {
            client.hold(id_request(&id)).await.map_err(status_error)?;
            println!("{id}: held");
        }
        QueueAction::Release { id } => {
            client
                .release(id_request(&id))
                .await
                .map_err(status_error)?;
            println!("{id}: released");
        }
        QueueAction::Delete { id } => {
            client.delete(id_request(&id)).await.map_err(status_error)?;
            println!("{id}: deleted");
        }
        QueueAction::Bounce { id } => {
            let count = client
                .bounce(id_request(&id))
                .await
                .map_err(status_error)?
                .into_inner()
                .count;
            println!("{id}: {count} recipients failed");
        }
        QueueAction::Summary => {
            let reply = client
                .summary(SummaryRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<32} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
                "DOMAIN", "<5m", "<1h", "<4h", "<1d", ">=1d", "TOTAL"
            );
            for d in &reply.domains {
                if d.by_age.len() != 5 {
                    bail!("unexpected summary from the server");
                }
                println!(
                    "{:<32} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
                    d.domain,
                    d.by_age[0],
                    d.by_age[1],
                    d.by_age[2],
                    d.by_age[3],
                    d.by_age[4],
                    d.total
                );
            }
        }
    }
    Ok(())
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn print_message(m: &QueuedMessage) {
    let sender = if m.sender.is_empty() {
        "<>".to_string()
    } else {
        format!("<{}>", m.sender)
    };
    println!(
        "{}  {:>9}  {}  {}{}  journey={}",
        m.queue_id,
        m.size,
        time(m.queued_at),
        sender,
        if m.held { "  [held]" } else { "" },
        m.journey_id
    );
    for r in &m.recipients {
        let next = if r.next_attempt > 0 {
            format!(" next={}", time(r.next_attempt))
        } else {
            String::new()
        };
        println!(
            "    {:<9} {} attempts={}{}",
            r.state, r.address, r.attempts, next
        );
        if !r.last_reply.is_empty() {
            println!("              {}", r.last_reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queue_commands() {
        let cli =
            Cli::try_parse_from(["mta", "--config", "f.toml", "queue", "retry", "--all"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Queue {
                action: QueueAction::Retry {
                    id: None,
                    all: true
                },
                ..
            })
        ));
        assert!(Cli::try_parse_from(["mta", "queue", "retry"]).is_err());
        assert!(Cli::try_parse_from(["mta", "queue", "show"]).is_err());
        let cli = Cli::try_parse_from(["mta", "-c", "f.toml"]).unwrap();
        assert!(cli.command.is_none());
    }

    #[test]
    fn wildcard_listen_dials_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0:7201".parse().unwrap()),
            "127.0.0.1:7201".parse().unwrap()
        );
        assert_eq!(
            dial_addr("10.0.0.1:7201".parse().unwrap()),
            "10.0.0.1:7201".parse().unwrap()
        );
    }
}
