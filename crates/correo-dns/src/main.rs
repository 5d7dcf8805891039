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
//! `--track NAME=HOST` keeps the A records of `NAME` (a name inside one of
//! the zones) equal to the IPv4 addresses `HOST` resolves to through the
//! system resolver, refreshed every `--track-interval`. In a compose stack
//! `HOST` is a service name, which Docker's embedded DNS answers with one
//! address per running replica: `--track mx.example.test=mta-a` makes the
//! MX host of `example.test` follow `docker compose up --scale mta-a=3`
//! and drop a replica that stops.
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
    /// NAME=HOST: serve as A records of NAME every IPv4 address HOST
    /// resolves to (system resolver), refreshed; repeatable.
    #[arg(long = "track")]
    tracks: Vec<String>,
    /// How often tracked hosts are resolved again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    track_interval: Duration,
}

fn main() -> Result<()> {
    correo_runtime::telemetry::init("dns", correo_runtime::telemetry::LogFormat::Text);
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let mut catalog = Catalog::new();
    let mut handlers: Vec<(Name, Arc<FileZoneHandler>)> = Vec::new();
    for zone in &args.zones {
        let Some((origin, path)) = zone.split_once('=') else {
            bail!("--zone {zone}: expected ORIGIN=FILE");
        };
        let origin = Name::from_str(&format!("{}.", origin.trim_end_matches('.')))
            .with_context(|| format!("--zone {zone}: bad origin"))?;
        let config = FileConfig {
            zone_path: PathBuf::from(path),
        };
        let handler = FileZoneHandler::try_from_config(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            None,
            &config,
        )
        .map_err(|e| anyhow::anyhow!("--zone {zone}: {e}"))?;
        let handler = Arc::new(handler);
        catalog.upsert(LowerName::new(&origin), vec![handler.clone()]);
        handlers.push((origin.clone(), handler));
        tracing::info!(%origin, path, "zone loaded");
    }
    for track in &args.tracks {
        let Some((name, host)) = track.split_once('=') else {
            bail!("--track {track}: expected NAME=HOST");
        };
        let name = Name::from_str(&format!("{}.", name.trim_end_matches('.')))
            .with_context(|| format!("--track {track}: bad name"))?;
        let Some((_, handler)) = handlers.iter().find(|(origin, _)| origin.zone_of(&name)) else {
            bail!("--track {track}: {name} is in none of the zones");
        };
        tokio::spawn(track_host(
            name,
            host.to_string(),
            handler.clone(),
            args.track_interval,
        ));
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

/// TTL of tracked records: short, so resolvers follow scaling quickly.
const TRACK_TTL: u32 = 5;

/// Keeps the A records of `name` equal to the addresses of `host`. When
/// `host` does not resolve (every replica stopped) the last set is kept, so
/// senders keep trying the addresses and retry later rather than bounce.
async fn track_host(name: Name, host: String, handler: Arc<FileZoneHandler>, interval: Duration) {
    use hickory_server::proto::rr::rdata::A;
    use hickory_server::proto::rr::{RData, Record, RecordSet, RecordType, RrKey};
    let mut current: Vec<std::net::Ipv4Addr> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let mut addrs: Vec<std::net::Ipv4Addr> = match tokio::net::lookup_host((host.as_str(), 0))
            .await
        {
            Ok(found) => found
                .filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(ip) => Some(ip),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!(%name, host, error = %e, "tracked host does not resolve; keeping the last addresses");
                continue;
            }
        };
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() || addrs == current {
            continue;
        }
        let serial = handler.serial().await;
        let mut set = RecordSet::new(name.clone(), RecordType::A, serial);
        for ip in &addrs {
            set.insert(
                Record::from_rdata(name.clone(), TRACK_TTL, RData::A(A(*ip))),
                serial,
            );
        }
        handler.records_mut().await.insert(
            RrKey::new(LowerName::new(&name), RecordType::A),
            Arc::new(set),
        );
        tracing::info!(%name, host, addresses = ?addrs, "tracked A records updated");
        current = addrs;
    }
}
