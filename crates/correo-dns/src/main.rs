//! # correo-dns — authoritative DNS for test zones
//!
//! Serves standard RFC 1035 zone files over UDP and TCP with hickory-server.
//! Correo's integration tests and its docker-compose stack use it so that the
//! MTAs find each other through real MX queries without touching the
//! machine's resolver.
//!
//! ```text
//! correo-dns --listen 127.0.0.1:5353 --zone example.test=example.test.zone --zone another.test=another.test.zone
//! ```
//!
//! ## Security
//! Answers only for the zones it is given (no recursion, no zone transfer).
//! Meant for private networks and loopback.

use anyhow::{Context, Result, bail};
use clap::Parser;
use hickory_server::Server;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::store::file::{FileConfig, FileZoneHandler};
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Authoritative DNS server for Correo's test and demo zones")]
struct Args {
    /// Address to answer on (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:53", env = "CORREO_DNS_LISTEN")]
    listen: SocketAddr,
    /// A zone as ORIGIN=FILE (RFC 1035 zone file); repeatable.
    #[arg(long = "zone", required = true)]
    zones: Vec<String>,
}

fn main() -> Result<()> {
    correo_runtime::telemetry::init("dns", correo_runtime::telemetry::LogFormat::Text);
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let mut catalog = Catalog::new();
    for zone in &args.zones {
        let Some((origin, path)) = zone.split_once('=') else {
            bail!("--zone {zone}: expected ORIGIN=FILE");
        };
        let origin = Name::from_str(&format!("{}.", origin.trim_end_matches('.')))
            .with_context(|| format!("--zone {zone}: bad origin"))?;
        let config = FileConfig {
            zone_path: PathBuf::from(path),
        };
        let handler = FileZoneHandler::try_from_config(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, None, &config)
            .map_err(|e| anyhow::anyhow!("--zone {zone}: {e}"))?;
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        tracing::info!(%origin, path, "zone loaded");
    }
    let mut server = Server::new(catalog);
    let udp = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("bind UDP {}", args.listen))?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind TCP {}", args.listen))?;
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
    tracing::info!(listen = %args.listen, "correo-dns serving");
    tokio::select! {
        result = server.block_until_done() => result.context("DNS server stopped")?,
        _ = correo_runtime::shutdown::signal() => {}
    }
    Ok(())
}
