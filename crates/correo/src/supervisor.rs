//! Runs the roles as child processes: starts them in order (each once the
//! previous one answers on its port), prefixes their log lines with the
//! role's name, restarts a child that dies, and on Ctrl-C or SIGTERM stops
//! them in reverse order.

use crate::layout::{DOMAIN, PORTS, Role, Stack};
use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a stopping child may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a starting child may take to open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(self_exe: &Path, stack: &Stack) -> Result<()> {
    let mut tasks = Vec::new();
    for role in Role::START_ORDER {
        let config = stack.config_path(role);
        let exe = self_exe.to_path_buf();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        tasks.push((
            role,
            stop_tx,
            tokio::spawn(supervise(role, exe, config, stop_rx, ready_tx)),
        ));
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!(role = role.name(), "not answering yet; continuing"),
        }
    }
    print_banner(stack);

    correo_runtime::shutdown::signal().await;
    // Stop one at a time in reverse order: the MSA stops taking mail before
    // the MTA stops, and the MDA outlives the MTA's last deliveries.
    for (role, stop_tx, task) in tasks.into_iter().rev() {
        let _ = stop_tx.send(true);
        if let Err(e) = task.await {
            tracing::error!(role = role.name(), error = %e, "supervisor task failed");
        }
    }
    println!("correo: all roles stopped");
    Ok(())
}

/// Keeps one role running until `stop` turns true.
async fn supervise(
    role: Role,
    exe: PathBuf,
    config: PathBuf,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut child = match spawn(role, &exe, &config) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(role = role.name(), error = %format!("{e:#}"), "cannot start");
                return;
            }
        };
        let started = std::time::Instant::now();
        if let Some(ready) = ready.take()
            && wait_for_port(role.ready_port()).await
        {
            let _ = ready.send(());
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if *stop.borrow() {
                    return;
                }
                // A child that ran for a while gets a fresh backoff.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                eprintln!("correo: {} exited unexpectedly ({status}); restarting in {:?}", role.name(), backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = stop.changed() => {
                stop_child(role, &mut child).await;
                return;
            }
        }
    }
}

fn spawn(role: Role, exe: &Path, config: &Path) -> Result<Child> {
    let mut child = Command::new(exe)
        .arg(role.name())
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        // Own process group: Ctrl-C reaches only the launcher, which then
        // stops the children in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", role.name()))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(role, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(role, err));
    }
    Ok(child)
}

async fn prefix_lines(role: Role, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{:>3} | {line}", role.name());
    }
}

async fn stop_child(role: Role, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(_) => eprintln!("correo: {} stopped", role.name()),
        Err(_) => {
            eprintln!(
                "correo: {} did not stop within {:?}; killing it",
                role.name(),
                STOP_TIMEOUT
            );
            let _ = child.kill().await;
        }
    }
}

async fn wait_for_port(port: u16) -> bool {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn print_banner(stack: &Stack) {
    let p = &PORTS;
    println!(
        "\nCorreo is up for {DOMAIN} (data in {})",
        stack.data.display()
    );
    println!(
        "  submission (STARTTLS)  127.0.0.1:{}",
        p.submission_starttls
    );
    println!("  submission (TLS)       127.0.0.1:{}", p.submission_tls);
    println!("  inbound SMTP           127.0.0.1:{}", p.inbound_smtp);
    println!("  mailbox API (gRPC/TLS) 127.0.0.1:{}", p.mailbox);
    println!("  MTA gRPC (mTLS)        127.0.0.1:{}", p.mta_grpc);
    println!("  MDA gRPC (mTLS)        127.0.0.1:{}", p.mda_grpc);
    println!(
        "  CA certificate         {}",
        stack.certs.join("ca.pem").display()
    );
    println!("Demo accounts ({}):", stack.demo_accounts_path().display());
    for (address, password) in stack.demo_accounts() {
        println!("  {address}  {password}");
    }
    let alice = stack.mua_profile("alice");
    println!("Try:");
    println!(
        "  export CORREO_PASSWORD=$(awk '$1==\"alice@{DOMAIN}\"{{print $2}}' {})",
        stack.demo_accounts_path().display()
    );
    println!(
        "  cargo run --release -p correo -- mua --profile {} send --to bob@{DOMAIN} --subject hello --body 'hi Bob'",
        alice.display()
    );
    println!("Ctrl-C stops everything.\n");
}
