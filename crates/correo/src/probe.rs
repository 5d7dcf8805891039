//! `correo probe …`: health probes for container healthchecks. Images built
//! `FROM scratch` have no shell, curl or grpc_health_probe, so the probes
//! live in the binary the image already carries.
//!
//! - `probe grpc URL --ca --cert --key --server-name NAME [--service S]`:
//!   the standard gRPC health protocol (`grpc.health.v1.Health/Check`) over
//!   mutual TLS; succeeds when the answer is SERVING.
//! - `probe smtp HOST:PORT`: reads the greeting, expects `220`, says QUIT.
//!
//! Exit status 0 = healthy, 1 = not (the reason on stderr).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Subcommand, Debug)]
pub enum Probe {
    /// gRPC health check over mutual TLS (exit 0 when SERVING).
    Grpc {
        /// https://HOST:PORT of the role's gRPC listener.
        url: String,
        /// CA that signed the server's certificate.
        #[arg(long)]
        ca: PathBuf,
        /// Client certificate (the roles' gRPC listeners require one).
        #[arg(long)]
        cert: PathBuf,
        /// Client private key.
        #[arg(long)]
        key: PathBuf,
        /// Name the server's certificate must carry (e.g. mta, mda).
        #[arg(long)]
        server_name: String,
        /// Service to ask about; empty = the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// SMTP greeting check (exit 0 on a 220 greeting).
    Smtp {
        /// HOST:PORT of the SMTP listener.
        addr: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

pub fn run(probe: Probe) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    runtime.block_on(async move {
        match probe {
            Probe::Grpc {
                url,
                ca,
                cert,
                key,
                server_name,
                service,
                timeout,
            } => {
                let files = correo_runtime::tls::TlsFiles { ca, cert, key };
                tokio::time::timeout(timeout, grpc(&url, &files, &server_name, &service))
                    .await
                    .with_context(|| format!("{url}: no answer within {timeout:?}"))?
            }
            Probe::Smtp { addr, timeout } => tokio::time::timeout(timeout, smtp(&addr))
                .await
                .with_context(|| format!("{addr}: no greeting within {timeout:?}"))?,
        }
    })
}

async fn grpc(
    url: &str,
    files: &correo_runtime::tls::TlsFiles,
    server_name: &str,
    service: &str,
) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let tls =
        correo_runtime::tls::grpc_client_tls(files, server_name, true).context("client TLS")?;
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url}"))?
        .tls_config(tls)
        .context("client TLS")?
        .connect()
        .await
        .with_context(|| format!("connect {url}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .with_context(|| format!("{url}: health check"))?
        .into_inner()
        .status;
    if status != ServingStatus::Serving as i32 {
        let name = ServingStatus::try_from(status)
            .map(|s| s.as_str_name())
            .unwrap_or("unknown");
        bail!("{url}: {name}");
    }
    println!("{url}: SERVING");
    Ok(())
}

async fn smtp(addr: &str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    // The greeting may be multi-line ("220-…" then "220 …").
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).await? == 0 {
            bail!("{addr}: closed before the greeting");
        }
        if !line.starts_with("220") {
            bail!("{addr}: greeting {:?}", line.trim_end());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            println!("{addr}: {}", line.trim_end());
            break;
        }
    }
    write.write_all(b"QUIT\r\n").await?;
    let mut bye = String::new();
    let _ = lines.read_line(&mut bye).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn smtp_probe_wants_220() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            for greeting in ["220 ok ESMTP\r\n", "554 go away\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(greeting.as_bytes()).await.unwrap();
                let mut buf = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ = s.write_all(b"221 bye\r\n").await;
            }
        });
        smtp(&addr).await.unwrap();
        assert!(smtp(&addr).await.is_err());
        server.await.unwrap();
    }
}
