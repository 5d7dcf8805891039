//! A Correo stack for benchmarks: MDA, MTA and (optionally) MSA from the
//! given binary directory on their own loopback address and temporary data
//! directory, configured like the integration harness (`tests/src/lib.rs`),
//! with `bench.test` as the local domain and `user@bench.test` created via
//! `mda user add`. A DNS server (`correo-dns`) only when zones are given.

use crate::proc::{Process, status_kb, wait_for_port};
use anyhow::{Context, Result, bail};
use rand::Rng;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const DOMAIN: &str = "bench.test";
pub const USER: &str = "user@bench.test";
pub const PASSWORD: &str = "bench-secret";
pub const SMTP_PORT: u16 = 25;
pub const SUBMISSION_PORT: u16 = 587;
pub const MTA_GRPC_PORT: u16 = 7201;
pub const MDA_GRPC_PORT: u16 = 7101;
pub const MAILBOX_PORT: u16 = 7143;
/// The MTA's Prometheus endpoint; the backlog section reads queue state from it.
pub const MTA_METRICS_PORT: u16 = 7281;

/// A loopback address nothing listens on yet.
pub fn fresh_loopback_ip() -> Ipv4Addr {
    loop {
        let mut rng = rand::thread_rng();
        let ip = Ipv4Addr::new(
            127,
            rng.gen_range(10..250),
            rng.r#gen(),
            rng.gen_range(2..250),
        );
        if std::net::TcpListener::bind((ip, 25)).is_ok() {
            return ip;
        }
    }
}

#[derive(Clone, Default)]
pub struct StackOptions {
    pub with_msa: bool,
    /// (origin, zone file text) for a DNS server; none = no DNS server.
    pub zones: Vec<(String, String)>,
    pub retry_first: Option<String>,
    pub retry_max: Option<String>,
    /// Extra TOML appended to mta.toml.
    pub mta_extra: String,
    /// Extra keys of mta.toml's `[smtp]` and msa.toml's `[submission]`
    /// tables (the connection limits, which both have).
    pub smtp_extra: String,
    pub log_level: String,
}

/// Fields drop in order: the processes are killed before the directory
/// they write into is removed.
pub struct Stack {
    pub processes: Vec<Process>,
    pub dns: Option<(SocketAddr, Process)>,
    pub ip: Ipv4Addr,
    pub dir: tempfile::TempDir,
    pub bin_dir: PathBuf,
    log_level: String,
}

impl Stack {
    pub fn start(bin_dir: &Path, options: &StackOptions) -> Result<Stack> {
        let ip = fresh_loopback_ip();
        let dir = tempfile::Builder::new().prefix("correo-bench-").tempdir()?;
        let log_level = if options.log_level.is_empty() {
            "info".to_string()
        } else {
            options.log_level.clone()
        };
        let mut stack = Stack {
            ip,
            dir,
            bin_dir: bin_dir.to_path_buf(),
            processes: Vec::new(),
            dns: None,
            log_level,
        };
        if !options.zones.is_empty() {
            stack.start_dns(&options.zones)?;
        }
        stack.write_files(options)?;
        stack.add_user()?;
        stack.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])?;
        stack.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT])?;
        if options.with_msa {
            stack.start_role("msa", &[SUBMISSION_PORT])?;
        }
        Ok(stack)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    pub fn maildir_new(&self) -> PathBuf {
        self.path("mda/mail/bench.test/user/Maildir/new")
    }

    pub fn mta_data(&self) -> PathBuf {
        self.path("mta")
    }

    fn start_dns(&mut self, zones: &[(String, String)]) -> Result<()> {
        let addr = SocketAddr::from((fresh_loopback_ip(), 53));
        let mut cmd = Command::new(self.bin("correo-dns"));
        cmd.arg("--listen").arg(addr.to_string());
        for (origin, text) in zones {
            let path = self.path(&format!("{origin}.zone"));
            std::fs::write(&path, text)?;
            cmd.arg("--zone")
                .arg(format!("{origin}={}", path.display()));
        }
        let p = Process::spawn("dns", cmd, self.path("dns.log"), &self.log_level)?;
        wait_for_port(addr, Duration::from_secs(10))?;
        self.dns = Some((addr, p));
        Ok(())
    }

    fn write_files(&self, o: &StackOptions) -> Result<()> {
        let certs = self.path("certs");
        let ip = self.ip.to_string();
        correo_runtime::pki::ensure_ca(&certs)?;
        for role in ["mda", "mta", "msa"] {
            correo_runtime::pki::ensure_leaf(
                &certs,
                role,
                &[role, "localhost", "mx.bench.test", &ip],
            )?;
        }
        let tls = |role: &str| {
            format!(
                "[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{role}.pem\"\nkey = \"{c}/{role}.key\"\n",
                c = certs.display()
            )
        };
        std::fs::write(
            self.path("mda.toml"),
            format!(
                "data_dir = \"{data}\"\nhostname = \"mda.bench.test\"\n[grpc]\nlisten = \"{ip}:{MDA_GRPC_PORT}\"\n\
                 [mailbox]\nlisten = \"{ip}:{MAILBOX_PORT}\"\n{tls}",
                data = self.path("mda").display(),
                tls = tls("mda"),
            ),
        )?;
        let nameservers = self
            .dns
            .as_ref()
            .map(|(a, _)| format!("\"{a}\""))
            .unwrap_or_default();
        std::fs::write(
            self.path("mta.toml"),
            format!(
                "hostname = \"mx.bench.test\"\nnode = \"mta-bench\"\ndata_dir = \"{data}\"\nlocal_domains = [\"bench.test\"]\n\
                 [smtp]\nlisten = [\"{ip}:{SMTP_PORT}\"]\nstarttls = true\n{smtp_extra}\
                 [grpc]\nlisten = \"{ip}:{MTA_GRPC_PORT}\"\n{tls}\
                 [metrics]\nlisten = \"{ip}:{MTA_METRICS_PORT}\"\n\
                 [mda]\nendpoint = \"https://{ip}:{MDA_GRPC_PORT}\"\nserver_name = \"mda\"\n\
                 [dns]\nnameservers = [{nameservers}]\n\
                 [relay]\nport = {SMTP_PORT}\nconnect_timeout = \"5s\"\n\
                 [retry]\nfirst = \"{first}\"\nmax = \"{max}\"\nlifetime = \"1d\"\n{extra}",
                data = self.mta_data().display(),
                tls = tls("mta"),
                first = o.retry_first.as_deref().unwrap_or("1s"),
                max = o.retry_max.as_deref().unwrap_or("10s"),
                extra = o.mta_extra,
                smtp_extra = o.smtp_extra,
            ),
        )?;
        std::fs::write(
            self.path("msa.toml"),
            format!(
                "hostname = \"msa.bench.test\"\n[submission]\nstarttls_listen = [\"{ip}:{SUBMISSION_PORT}\"]\n\
                 tls_listen = [\"{ip}:465\"]\n{smtp_extra}{tls}\
                 [directory]\nendpoint = \"https://{ip}:{MDA_GRPC_PORT}\"\nserver_name = \"mda\"\n\
                 [mta]\nendpoints = [\"{ip}:{MTA_GRPC_PORT}\"]\nserver_name = \"mta\"\n",
                tls = tls("msa"),
                smtp_extra = o.smtp_extra,
            ),
        )?;
        Ok(())
    }

    fn add_user(&self) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new(self.bin("mda"))
            .arg("--config")
            .arg(self.path("mda.toml"))
            .args(["user", "add", USER, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", self.bin("mda").display()))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "mda user add {USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts (or restarts) one role and waits for its ports.
    pub fn start_role(&mut self, role: &str, ports: &[u16]) -> Result<()> {
        self.stop_role(role);
        let mut cmd = Command::new(self.bin(role));
        cmd.arg("--config").arg(self.path(&format!("{role}.toml")));
        let n = std::fs::read_dir(self.dir.path())?.count();
        let log = self.path(&format!("{role}.{n}.log"));
        self.processes
            .push(Process::spawn(role, cmd, log, &self.log_level)?);
        for port in ports {
            if let Err(e) = wait_for_port(self.addr(*port), Duration::from_secs(60)) {
                let tail = self.process(role).map(|p| p.log_text()).unwrap_or_default();
                bail!("{role} did not start: {e}\n{}", tail_lines(&tail, 30));
            }
        }
        Ok(())
    }

    /// Sums the MTA's `correo_mta_queue_recipients` gauge over the series
    /// whose labels contain every one of `labels` (e.g. `state="deferred"`).
    pub fn mta_queue_recipients(&self, labels: &[&str]) -> Result<u64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &self.addr(MTA_METRICS_PORT),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: mta\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("correo_mta_queue_recipients{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }

    pub fn stop_role(&mut self, role: &str) {
        self.processes.retain(|p| p.name != role);
    }

    pub fn process(&self, role: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == role)
    }

    pub fn pid(&self, role: &str) -> Option<u32> {
        self.process(role).map(|p| p.pid())
    }

    /// Peak RSS (VmHWM) of a role in kB.
    pub fn hwm_kb(&self, role: &str) -> Option<u64> {
        status_kb(self.pid(role)?, "VmHWM")
    }

    pub fn rss_kb(&self, role: &str) -> Option<u64> {
        status_kb(self.pid(role)?, "VmRSS")
    }

    /// The last lines of every role's log (for failures).
    pub fn log_tails(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("==== {} ====\n{}", p.name, tail_lines(&p.log_text(), 20)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A zone whose MX points at `mx.<origin>` with address `ip`.
pub fn mx_zone(origin: &str, ip: Ipv4Addr) -> (String, String) {
    (
        origin.to_string(),
        format!(
            "$ORIGIN {origin}.\n$TTL 3600\n\
             @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
             @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n\
             @ IN MX 10 mx.{origin}.\nmx IN A {ip}\n"
        ),
    )
}

/// Writes `count` spool files (the MTA's on-disk queue format: magic line,
/// JSON envelope line, message) for `recipient` into a stopped MTA's
/// `spool/active/` (the one-file-per-message layout, which the MTA imports
/// into its segments at start-up; its reconciliation then queues them).
/// This is the fast way to build a backlog of tens of thousands of messages.
pub fn inject_spool(mta_data: &Path, count: usize, recipient: &str, size: usize) -> Result<()> {
    let active = mta_data.join("spool/active");
    std::fs::create_dir_all(&active)?;
    let base: u64 = (rand::random::<u32>() as u64) << 24;
    let body = crate::load::message(0, size, "a@bench.test", recipient);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for i in 0..count as u64 {
        let id = format!("{:016x}", base + i);
        let envelope = format!(
            "{{\"queue_id\":\"{id}\",\"sender\":\"a@bench.test\",\"recipients\":[\"{recipient}\"],\
             \"journey_id\":\"bench-backlog-{i}\",\"received_at\":{now}}}\n"
        );
        let mut data = Vec::with_capacity(body.len() + envelope.len() + 16);
        data.extend_from_slice(b"CORREO-SPOOL 1\n");
        data.extend_from_slice(envelope.as_bytes());
        data.extend_from_slice(&body);
        std::fs::write(active.join(&id), data)?;
    }
    Ok(())
}
