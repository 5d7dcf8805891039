//! # correo-tests — the integration harness
//!
//! Starts the real role binaries (`mda`, `mta`, `msa`, and `mua` as a client)
//! as separate processes, each organisation on its own loopback address
//! (127.x.y.z) so that every MTA listens on port 25 and every MSA on 587 and
//! 465 as on the internet, with a real authoritative DNS server
//! (`correo-dns`, hickory-server) on loopback holding the test zones. No
//! test queries the machine's resolver or leaves loopback.
//!
//! Each [`Org`] lives in a temporary directory with its own private CA,
//! configuration, queue and mailboxes; its processes are killed when it is
//! dropped, and their logs are printed if the test failed.

use anyhow::{Context, Result, bail};
use rand::Rng;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod load;
pub mod smtp;

/// Directory holding the workspace's debug binaries.
pub fn bin_dir() -> PathBuf {
    // The test executable is target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, building all role binaries once per test
/// process (a no-op when they are up to date).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest);
        for package in ["msa", "mta", "mda", "mua", "correo-dns"] {
            cmd.args(["-p", package]);
        }
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the role binaries failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A loopback address no other test of this run is using.
pub fn fresh_loopback_ip() -> Ipv4Addr {
    static USED: Mutex<Vec<Ipv4Addr>> = Mutex::new(Vec::new());
    loop {
        let mut rng = rand::thread_rng();
        let ip = Ipv4Addr::new(
            127,
            rng.gen_range(10..250),
            rng.r#gen(),
            rng.gen_range(2..250),
        );
        let mut used = USED.lock().unwrap();
        if used.contains(&ip) {
            continue;
        }
        // Nothing may already listen there (another test process).
        if std::net::TcpListener::bind((ip, 25)).is_ok() {
            used.push(ip);
            return ip;
        }
    }
}

/// A child process that is killed when dropped; its output goes to a log file.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Process> {
        let out = std::fs::File::create(&log)?;
        let child = command
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .env("CORREO_LOG", "info")
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to `addr`, from a chosen loopback source address when given
/// (tests of per-client limits need several distinct clients).
pub fn connect_from(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let Some(ip) = source else {
        return std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((ip, 0)))?;
        socket.connect(addr).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on {addr} after {timeout:?}")
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A zone the DNS server holds.
pub struct Zone {
    pub origin: String,
    pub text: String,
}

impl Zone {
    /// A zone whose MX points at `mx.<origin>` with address `ip`.
    pub fn with_mx(origin: &str, ip: Ipv4Addr) -> Zone {
        Zone {
            origin: origin.to_string(),
            text: format!(
                "$ORIGIN {origin}.\n$TTL 60\n\
                 @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
                 @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n\
                 @ IN MX 10 mx.{origin}.\nmx IN A {ip}\n"
            ),
        }
    }

    /// A zone from raw zone-file records appended after the SOA and NS.
    pub fn raw(origin: &str, records: &str) -> Zone {
        Zone {
            origin: origin.to_string(),
            text: format!(
                "$ORIGIN {origin}.\n$TTL 60\n\
                 @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
                 @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
            ),
        }
    }
}

/// The real DNS server (`correo-dns`, hickory-server) on a loopback address, port 53.
pub struct Dns {
    pub addr: SocketAddr,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Dns {
    pub fn start(zones: &[Zone]) -> Result<Dns> {
        let dir = tempfile::tempdir()?;
        let addr = SocketAddr::from((fresh_loopback_ip(), 53));
        let mut cmd = Command::new(bin("correo-dns"));
        cmd.arg("--listen").arg(addr.to_string());
        for zone in zones {
            let path = dir.path().join(format!("{}.zone", zone.origin));
            std::fs::write(&path, &zone.text)?;
            cmd.arg("--zone")
                .arg(format!("{}={}", zone.origin, path.display()));
        }
        let process = Process::spawn("dns", cmd, dir.path().join("dns.log"))?;
        wait_for_port(addr, Duration::from_secs(10))?;
        Ok(Dns {
            addr,
            _process: process,
            _dir: dir,
        })
    }
}

/// Fixed ports of every organisation (each has its own loopback address).
pub const SMTP_PORT: u16 = 25;
pub const SUBMISSION_PORT: u16 = 587;
pub const SUBMISSIONS_PORT: u16 = 465;
pub const MTA_GRPC_PORT: u16 = 7201;
pub const MDA_GRPC_PORT: u16 = 7101;
pub const MAILBOX_PORT: u16 = 7143;

/// Options for an organisation's stack.
#[derive(Clone)]
pub struct OrgOptions {
    pub domain: String,
    /// DNS server the MTA resolves with.
    pub dns: Option<SocketAddr>,
    /// First retry delay of the MTA (tests keep it short).
    pub retry_first: String,
    /// Longest retry delay of the MTA (and of its destination back-off).
    pub retry_max: String,
    /// Extra TOML appended to the MTA's configuration.
    pub mta_extra: String,
}

impl OrgOptions {
    pub fn new(domain: &str) -> Self {
        OrgOptions {
            domain: domain.to_string(),
            dns: None,
            retry_first: "1s".into(),
            retry_max: "10s".into(),
            mta_extra: String::new(),
        }
    }
}

/// One organisation: its own MDA, MTA and MSA on one loopback address.
pub struct Org {
    pub domain: String,
    pub ip: Ipv4Addr,
    pub dir: tempfile::TempDir,
    pub processes: Vec<Process>,
    pub passwords: Vec<(String, String)>,
}

impl Org {
    /// Starts the three roles with users `alice` and `bob` (password
    /// `<user>-secret`).
    pub fn start(options: OrgOptions) -> Result<Org> {
        let ip = fresh_loopback_ip();
        let dir = tempfile::tempdir()?;
        let mut org = Org {
            domain: options.domain.clone(),
            ip,
            dir,
            processes: Vec::new(),
            passwords: Vec::new(),
        };
        org.write_files(&options)?;
        for user in ["alice", "bob"] {
            org.add_user(user, &format!("{user}-secret"))?;
        }
        org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])?;
        org.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT])?;
        org.start_role("msa", &[SUBMISSION_PORT, SUBMISSIONS_PORT])?;
        Ok(org)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    fn write_files(&self, o: &OrgOptions) -> Result<()> {
        let certs = self.path("certs");
        let ip = self.ip.to_string();
        correo_runtime::pki::ensure_ca(&certs)?;
        for role in ["mda", "mta", "msa"] {
            let mx = format!("mx.{}", o.domain);
            correo_runtime::pki::ensure_leaf(&certs, role, &[role, "localhost", &mx, &ip])?;
        }
        let tls = |role: &str| {
            format!(
                "[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{role}.pem\"\nkey = \"{c}/{role}.key\"\n",
                c = certs.display()
            )
        };
        let d = &o.domain;
        std::fs::write(
            self.path("mda.toml"),
            format!(
                "data_dir = \"{data}\"\nhostname = \"mda.{d}\"\n[grpc]\nlisten = \"{ip}:{MDA_GRPC_PORT}\"\n\
                 [mailbox]\nlisten = \"{ip}:{MAILBOX_PORT}\"\n{tls}",
                data = self.path("mda").display(),
                tls = tls("mda"),
            ),
        )?;
        let nameservers = o.dns.map(|a| format!("\"{a}\"")).unwrap_or_default();
        std::fs::write(
            self.path("mta.toml"),
            format!(
                "hostname = \"mx.{d}\"\nnode = \"mta-{d}\"\ndata_dir = \"{data}\"\nlocal_domains = [\"{d}\"]\n\
                 [smtp]\nlisten = [\"{ip}:{SMTP_PORT}\"]\nstarttls = true\n\
                 [grpc]\nlisten = \"{ip}:{MTA_GRPC_PORT}\"\n{tls}\
                 [mda]\nendpoint = \"https://{ip}:{MDA_GRPC_PORT}\"\nserver_name = \"mda\"\n\
                 [dns]\nnameservers = [{nameservers}]\n\
                 [relay]\nport = {SMTP_PORT}\nconnect_timeout = \"5s\"\n\
                 [retry]\nfirst = \"{first}\"\nmax = \"{max}\"\nlifetime = \"1h\"\n{extra}",
                data = self.path("mta").display(),
                tls = tls("mta"),
                first = o.retry_first,
                max = o.retry_max,
                extra = o.mta_extra,
            ),
        )?;
        std::fs::write(
            self.path("msa.toml"),
            format!(
                "hostname = \"msa.{d}\"\n[submission]\nstarttls_listen = [\"{ip}:{SUBMISSION_PORT}\"]\n\
                 tls_listen = [\"{ip}:{SUBMISSIONS_PORT}\"]\n{tls}\
                 [directory]\nendpoint = \"https://{ip}:{MDA_GRPC_PORT}\"\nserver_name = \"mda\"\n\
                 [mta]\nendpoints = [\"{ip}:{MTA_GRPC_PORT}\"]\nserver_name = \"mta\"\n",
                tls = tls("msa"),
            ),
        )?;
        for user in ["alice", "bob"] {
            std::fs::write(
                self.path(&format!("mua-{user}.toml")),
                format!(
                    "address = \"{user}@{d}\"\nca = \"{c}/ca.pem\"\n\
                     [submission]\nhost = \"{ip}\"\nport = {SUBMISSION_PORT}\nsecurity = \"starttls\"\nserver_name = \"msa\"\n\
                     [mailbox]\nendpoint = \"https://{ip}:{MAILBOX_PORT}\"\nserver_name = \"mda\"\n",
                    c = certs.display(),
                ),
            )?;
        }
        Ok(())
    }

    /// Adds an account through `mda user add --password-stdin`.
    pub fn add_user(&mut self, user: &str, password: &str) -> Result<()> {
        use std::io::Write;
        let address = format!("{user}@{}", self.domain);
        let mut child = Command::new(bin("mda"))
            .arg("--config")
            .arg(self.path("mda.toml"))
            .args(["user", "add", &address, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "mda user add {address}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.passwords.push((address, password.to_string()));
        Ok(())
    }

    /// Starts (or restarts) one role and waits for its ports.
    pub fn start_role(&mut self, role: &str, ports: &[u16]) -> Result<()> {
        self.processes.retain(|p| p.name != role);
        let mut cmd = Command::new(bin(role));
        cmd.arg("--config").arg(self.path(&format!("{role}.toml")));
        let n = std::fs::read_dir(self.dir.path())?.count();
        let log = self.path(&format!("{role}.{n}.log"));
        let process = Process::spawn(role, cmd, log)?;
        self.processes.push(process);
        for port in ports {
            wait_for_port(self.addr(*port), Duration::from_secs(20))
                .with_context(|| format!("{role} did not start"))?;
        }
        Ok(())
    }

    pub fn process(&mut self, role: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|p| p.name == role)
            .expect("role running")
    }

    pub fn password(&self, address: &str) -> String {
        self.passwords
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, p)| p.clone())
            .expect("known user")
    }

    /// The files in a user's Maildir `new/`.
    pub fn maildir_new(&self, user: &str) -> Vec<PathBuf> {
        let dir = self.path(&format!("mda/mail/{}/{user}/Maildir/new", self.domain));
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits until `user` has at least `count` messages and returns their contents.
    pub fn wait_for_mail(
        &self,
        user: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        wait_until(timeout, || {
            let files = self.maildir_new(user);
            (files.len() >= count).then(|| {
                files
                    .iter()
                    .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                    .collect()
            })
        })
        .with_context(|| {
            format!(
                "{user}@{} did not receive {count} message(s) within {timeout:?}",
                self.domain
            )
        })
    }

    /// A `mua` command for `user`, with profile and password set.
    pub fn mua(&self, user: &str) -> Command {
        let mut cmd = Command::new(bin("mua"));
        cmd.arg("--profile")
            .arg(self.path(&format!("mua-{user}.toml")))
            .env(
                "CORREO_PASSWORD",
                self.password(&format!("{user}@{}", self.domain)),
            );
        cmd
    }

    /// Runs `mua` for `user` and returns stdout; fails with stderr on error.
    pub fn run_mua(&self, user: &str, args: &[&str]) -> Result<String> {
        let out = self.mua(user).args(args).output()?;
        if !out.status.success() {
            bail!(
                "mua {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A submission client for `user` sending to `to` (see [`load`]).
    pub fn submitter(&self, user: &str, to: &str) -> load::Submitter {
        let address = format!("{user}@{}", self.domain);
        load::Submitter {
            addr: self.addr(SUBMISSION_PORT),
            ca: self.path("certs/ca.pem"),
            password: self.password(&address),
            user: address,
            to: to.to_string(),
        }
    }

    /// Runs `mta --config mta.toml queue ARGS…`: (success, stdout, stderr).
    pub fn mta_queue(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(bin("mta"))
            .arg("--config")
            .arg(self.path("mta.toml"))
            .arg("queue")
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Messages in the MTA's spool, read from its segment files without
    /// changing them (safe while the MTA runs).
    pub fn spooled(&self) -> usize {
        mta::spool::Spool::inspect(&self.path("mta"))
            .map(|found| found.ids.len())
            .unwrap_or(0)
    }

    /// Octets of torn (half-written) records in the MTA's spool.
    pub fn spool_torn_bytes(&self) -> u64 {
        mta::spool::Spool::inspect(&self.path("mta"))
            .map(|found| found.torn_bytes)
            .unwrap_or(0)
    }

    /// SIGTERM to a role; waits for it to exit and returns whether it exited 0.
    pub fn terminate(&mut self, role: &str, timeout: Duration) -> Result<bool> {
        let process = self.process(role);
        let pid = process.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                bail!("{role} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("==== {} ({}) ====", path.display(), self.domain);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Org {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}
