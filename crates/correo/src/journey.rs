//! `correo journey ID`: one message's journey across the roles of one or
//! more installations, from each role's `Journey.Events` gRPC service
//! (mutual TLS) and the `Received:` fields of the delivered message (see
//! docs/JOURNEY.md).
//!
//! Where the roles are and which certificate to present comes from the
//! roles' own configuration files (`grpc.listen` and `[tls]`), so on the
//! machine of an installation nothing else is needed; `--endpoint` with
//! `--ca/--cert/--key` reaches roles whose files are elsewhere (containers).

use anyhow::{Context, Result, bail};
use correo_runtime::journey::{Event, Report};
use correo_runtime::tls::TlsFiles;
use std::path::{Path, PathBuf};

/// Arguments of `correo journey`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  correo journey 5b1e0c8e-2f0a-4c1e-9d0a-0f6f1c1e2d3a        # journey id (X-Correo-Journey)
  correo journey '<1733040000.abc@example.test>'              # Message-ID
  correo journey 0123456789abcdef                            # MTA queue id
  correo journey ID --data /srv/correo                       # another `correo up` data dir
  correo journey ID --config a/mta.toml --config b/mta.toml   # roles of two installations
  correo journey ID --endpoint https://mta:7201 --server-name mta \\
      --ca certs/ca.pem --cert certs/mta.pem --key certs/mta.key  # a container
  correo journey ID --json")]
pub struct JourneyArgs {
    /// A journey id, a Message-ID (with or without <>) or a queue id.
    pub id: String,
    /// Data directory of `correo up`: its config/{msa,mta,mda}.toml are asked
    /// (used when neither --config nor --endpoint is given).
    #[arg(long, default_value = "var")]
    pub data: PathBuf,
    /// A role's configuration file (repeatable): its `grpc.listen` is asked
    /// with its own `[tls]` certificate; the server name is the file's stem
    /// (msa, mta, mda) unless --server-name is given.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// A role's gRPC endpoint (repeatable), https://HOST:PORT, with the
    /// --ca, --cert and --key below.
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pub ca: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pub cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pub key: Option<PathBuf>,
    /// Name the roles' certificates carry (default: the config file's stem,
    /// or the endpoint's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// A message file (e.g. from `mua read --raw`) whose Received: fields
    /// show the hops, instead of the delivering MDA's record.
    #[arg(long, value_name = "FILE")]
    pub message: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One role to ask.
#[derive(Debug, Clone)]
struct Source {
    label: String,
    endpoint: String,
    server_name: String,
    tls: TlsFiles,
}

fn sources_from_config(path: &Path, server_name: Option<&str>) -> Result<Option<Source>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parse {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let Some(listen) = table
        .get("grpc")
        .and_then(|g| g.get("listen"))
        .and_then(|l| l.as_str())
    else {
        // An MSA without [grpc]: its hop still shows in Received:.
        eprintln!(
            "correo journey: {} has no grpc.listen; that role is not asked",
            path.display()
        );
        return Ok(None);
    };
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("{}: grpc.listen `{listen}`", path.display()))?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        }
    };
    let tls = table.get("tls").and_then(|t| t.as_table());
    let file = |key: &str| -> Result<PathBuf> {
        let value = tls
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .with_context(|| format!("{}: [tls] {key} missing", path.display()))?;
        let p = PathBuf::from(value);
        Ok(if p.is_absolute() { p } else { base.join(p) })
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let role = ["msa", "mta", "mda"]
        .into_iter()
        .find(|r| stem.contains(r))
        .unwrap_or(stem.as_str())
        .to_string();
    Ok(Some(Source {
        label: path.display().to_string(),
        endpoint: format!("https://{host}:{}", addr.port()),
        server_name: server_name.map(str::to_string).unwrap_or(role),
        tls: TlsFiles {
            ca: file("ca")?,
            cert: file("cert")?,
            key: file("key")?,
        },
    }))
}

fn sources(args: &JourneyArgs) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut configs = args.configs.clone();
    if configs.is_empty() && args.endpoints.is_empty() {
        for role in ["msa", "mta", "mda"] {
            let path = args.data.join("config").join(format!("{role}.toml"));
            if path.exists() {
                configs.push(path);
            }
        }
        if configs.is_empty() {
            bail!(
                "no role configuration under {}/config: give --data DIR, --config FILE or --endpoint URL",
                args.data.display()
            );
        }
    }
    for path in &configs {
        out.extend(sources_from_config(path, args.server_name.as_deref())?);
    }
    for endpoint in &args.endpoints {
        let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
            bail!(
                "--endpoint needs --ca, --cert and --key (a certificate signed by the installation's CA)"
            );
        };
        let uri: tonic::transport::Uri = endpoint
            .parse()
            .with_context(|| format!("--endpoint {endpoint}: not a URL"))?;
        out.push(Source {
            label: endpoint.clone(),
            endpoint: endpoint.clone(),
            server_name: args
                .server_name
                .clone()
                .or_else(|| uri.host().map(str::to_string))
                .unwrap_or_default(),
            tls: TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
        });
    }
    Ok(out)
}

/// Asks every source in turn (a handful: one after the other is enough).
async fn ask(sources: &[Source], id: &str, events: &mut Vec<Event>, errors: &mut Vec<String>) {
    for s in sources {
        let result = match correo_runtime::tls::grpc_client_tls(&s.tls, &s.server_name, true) {
            Ok(tls) => correo_runtime::journey::fetch(&s.endpoint, tls, id).await,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(found) => events.extend(found),
            Err(e) => {
                let e = format!("{} (server name {}): {e}", s.label, s.server_name);
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
}

/// Builds the report (also used by tests through the binary).
pub async fn report(args: &JourneyArgs) -> Result<Report> {
    let sources = sources(args)?;
    let mut events = Vec::new();
    let mut errors = Vec::new();
    ask(&sources, &args.id, &mut events, &mut errors).await;
    // A Message-ID or queue id is known to some roles only; every role
    // knows the journey id, so ask again with it.
    let journeys: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| e.journey_id.clone())
        .filter(|j| !j.is_empty() && *j != args.id)
        .collect();
    for journey in journeys {
        ask(&sources, &journey, &mut events, &mut errors).await;
    }
    let received = match &args.message {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            Some(correo_runtime::journey::headers(&bytes, "received"))
        }
        None => None,
    };
    let mut report = Report::new(&args.id, events, received);
    report.errors = errors;
    Ok(report)
}

/// `correo journey`.
pub fn run(args: JourneyArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let report = runtime.block_on(report(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.events.is_empty() && report.hops.is_empty() {
        bail!(
            "no record of {} (is it a journey id, Message-ID or queue id, and were the roles asked the ones that handled it?)",
            args.id
        );
    }
    Ok(())
}
