//! # correo-bench — Correo side by side with Postfix (issue 6)
//!
//! One invocation starts a Correo stack (release binaries, own loopback
//! address, own temporary data directory) and the Postfix peer
//! (`shared/peers/postfix/setup.sh`), drives both with the same client on
//! the same machine, and prints each figure (median of `runs`) with the
//! ratio Correo / Postfix:
//!
//! - **inbound**: SMTP port 25 role → MTA queue → MDA → Maildir vs Postfix's
//!   smtpd → Maildir, with Postfix's `smtp-source` (or the built-in client);
//!   messages/s = N files in `new/` over the time from the first connect;
//! - **submission**: STARTTLS + AUTH on the MSA → MTA → MDA (own client);
//! - **latency**: final `.` → file in `new/` (inotify), p50/p99, paced at
//!   half of each server's measured maximum;
//! - **memory**: peak RSS (VmHWM) per role, MTA RSS with many idle SMTP
//!   sessions, a 25 MB message end to end (time and peak RSS per role);
//! - **backlog**: rate of fresh local mail with tens of thousands of
//!   messages deferred to a dead destination, vs. without.
//!
//! Nothing here asserts on speed; figures that cannot be taken print
//! `not measured: reason`.

pub mod load;
pub mod maildir;
pub mod postfix;
pub mod proc;
pub mod stack;

use anyhow::{Context, Result, bail};
use stack::{Stack, StackOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Which client drives the inbound throughput runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// smtp-source when installed, else the built-in client.
    Auto,
    Own,
    SmtpSource,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub runs: usize,
    /// Messages per throughput run.
    pub messages: usize,
    pub bin_dir: PathBuf,
    /// Run the Postfix peer (when setup.sh is found).
    pub postfix: bool,
    pub postfix_script: Option<PathBuf>,
    pub postfix_port: u16,
    pub client: Client,
    /// Sections to run (empty = all): inbound, submission, latency, memory, idle, large, backlog.
    pub only: Vec<String>,
    pub idle_sessions: usize,
    pub backlog: usize,
    /// `retry.first` and `retry.max` of the backlog stack.
    pub backlog_retry: String,
    pub large_bytes: usize,
    pub log_level: String,
}

impl Options {
    pub fn full(bin_dir: PathBuf) -> Options {
        Options {
            quick: false,
            runs: 3,
            messages: 2000,
            bin_dir,
            postfix: true,
            postfix_script: None,
            postfix_port: 2625,
            client: Client::Auto,
            only: Vec::new(),
            idle_sessions: 10_000,
            backlog: 50_000,
            backlog_retry: "1h".into(),
            large_bytes: 25_000_000,
            log_level: "info".into(),
        }
    }

    /// One run, small counts: checks that the harness works (CI smoke).
    pub fn quick(bin_dir: PathBuf) -> Options {
        Options {
            quick: true,
            runs: 1,
            messages: 50,
            idle_sessions: 200,
            backlog: 200,
            large_bytes: 2_000_000,
            ..Options::full(bin_dir)
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// The binary directory next to the running executable (target/<profile>),
/// also from a test executable in target/<profile>/deps.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir
    }
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub correo: String,
    pub postfix: String,
    pub ratio: String,
}

#[derive(Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    started: Instant,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            rows: Vec::new(),
            notes: Vec::new(),
            started: Instant::now(),
        }
    }
}

impl Report {
    fn row(&mut self, section: &str, name: &str, correo: String, postfix: String, ratio: String) {
        let row = Row {
            section: section.into(),
            name: name.into(),
            correo,
            postfix,
            ratio,
        };
        println!(
            "  [{:>5.0}s] {:<11} {:<52} correo {:<22} postfix {:<22} {}",
            self.started.elapsed().as_secs_f64(),
            row.section,
            row.name,
            row.correo,
            row.postfix,
            row.ratio
        );
        let _ = std::io::stdout().flush();
        self.rows.push(row);
    }

    fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    /// The results as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| section | figure | Correo | Postfix | Correo / Postfix |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.section, r.name, r.correo, r.postfix, r.ratio
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("\n- {n}"));
        }
        s.push('\n');
        s
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ratio(c: Option<f64>, p: Option<f64>) -> String {
    match (c, p) {
        (Some(c), Some(p)) if p > 0.0 => format!("{:.2}×", c / p),
        _ => "—".into(),
    }
}

fn fmt_rate(r: &Result<f64>) -> String {
    match r {
        Ok(v) => format!("{v:.0}/s"),
        Err(e) => format!("not measured: {}", one_line(e)),
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let s = s.lines().next().unwrap_or("").to_string();
    if s.len() > 160 {
        format!("{}…", &s[..160])
    } else {
        s
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// A server under test: where to connect and where its mail lands.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    new_dir: PathBuf,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    size: usize,
    sessions: usize,
    reuse: bool,
}

impl Shape {
    fn label(&self) -> String {
        format!(
            "{}, {} session{}{}",
            if self.size >= 1024 * 1024 {
                format!("{} MB", self.size / 1_000_000)
            } else {
                format!("{} KiB", self.size / 1024)
            },
            self.sessions,
            if self.sessions == 1 { "" } else { "s" },
            if self.reuse { ", reuse (-d)" } else { "" }
        )
    }
}

struct Bench {
    o: Options,
    rt: tokio::runtime::Runtime,
    smtp_source: Option<PathBuf>,
    report: Report,
}

/// From now on, SIGTERM or SIGINT stops every role, DNS server and peer
/// this run started, then exits 130. Without it they would outlive the
/// harness: the drops that stop them never run when a signal ends the
/// process.
pub fn stop_children_on_interrupt() {
    let _ = std::thread::Builder::new()
        .name("interrupts".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(stop_children_when_interrupted());
        });
}

async fn stop_children_when_interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("correo-bench: interrupted; stopping the processes it started");
    proc::stop_all();
    postfix::stop_running();
    std::process::exit(130);
}

/// Runs every wanted section and returns the report (also printed as it goes).
pub fn run(o: Options) -> Result<Report> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    stop_children_on_interrupt();
    let smtp_source = match o.client {
        Client::Own => None,
        _ => proc::which("smtp-source"),
    };
    if o.client == Client::SmtpSource && smtp_source.is_none() {
        bail!("--client smtp-source: smtp-source is not installed");
    }
    for b in ["mta", "mda", "msa", "correo-dns"] {
        if !o.bin_dir.join(b).exists() {
            bail!(
                "{} missing: build with `cargo build --release -p mta -p mda -p msa -p correo-dns`",
                o.bin_dir.join(b).display()
            );
        }
    }
    let mut bench = Bench {
        o,
        rt,
        smtp_source,
        report: Report::default(),
    };
    bench.all()?;
    Ok(bench.report)
}

/// `[smtp]` connection limits of the benchmark MTA: every client is on
/// 127.0.0.1, so the per-client limit (default 20) is lifted — with it,
/// `smtp-source -s 20` without `-d` gets `421 too many connections from
/// your address` when it reconnects before the server has released the
/// previous session, and aborts. (Postfix's peer exempts `mynetworks`
/// from its client limits in the same way.)
fn smtp_limits(total: usize) -> String {
    format!("max_connections = {total}\nmax_connections_per_client = 0\n")
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(
            Resource::RLIMIT_NOFILE,
            hard.min(1 << 20),
            hard.min(1 << 20),
        );
    }
}

impl Bench {
    fn all(&mut self) -> Result<()> {
        let o = self.o.clone();
        println!(
            "correo-bench: {} mode, {} run(s) per figure, N = {} messages, binaries from {}",
            if o.quick { "quick" } else { "full" },
            o.runs,
            o.messages,
            o.bin_dir.display()
        );
        println!("machine: {}", machine());
        let postfix = self.start_postfix();
        if let Some(p) = &postfix {
            self.report.note(format!(
                "peer: Postfix {} via setup.sh on {}",
                postfix::Postfix::version(),
                p.addr
            ));
        }
        let client_name = if self.smtp_source.is_some() {
            "smtp-source"
        } else {
            "the built-in client (smtp-source not installed)"
        };
        self.report.note(format!("inbound load client: {client_name}; every other figure: the built-in tokio/rustls client"));

        let pf_target = postfix.as_ref().map(|p| Target {
            addr: p.addr,
            new_dir: p.maildir_new(),
        });

        // Stack A: throughput, submission, latency, peak RSS, idle sessions.
        let needs_a = ["inbound", "submission", "latency", "memory", "idle"]
            .iter()
            .any(|s| o.wants(s));
        if needs_a {
            let mut stack = Stack::start(
                &o.bin_dir,
                &StackOptions {
                    with_msa: true,
                    log_level: o.log_level.clone(),
                    // Room for the idle-session figure; the per-client limit stays at its default.
                    smtp_extra: smtp_limits(o.idle_sessions + 500),
                    ..Default::default()
                },
            )?;
            let c_target = Target {
                addr: stack.addr(stack::SMTP_PORT),
                new_dir: stack.maildir_new(),
            };
            self.warm_up(&c_target).context("Correo warm-up delivery")?;
            if let Some(t) = &pf_target {
                self.warm_up(t).context("Postfix warm-up delivery")?;
            }
            let mut max_rates = (None, None);
            if o.wants("inbound") {
                max_rates = self.inbound(&c_target, pf_target.as_ref());
            }
            if o.wants("submission") {
                self.submission(&stack);
            }
            if o.wants("latency") {
                self.latency(&c_target, pf_target.as_ref(), max_rates);
            }
            if o.wants("memory") {
                for role in ["mta", "mda", "msa"] {
                    self.report.row(
                        "memory",
                        &format!("peak RSS of {role} after the runs above"),
                        mb(stack.hwm_kb(role)),
                        "not measured: short-lived processes".into(),
                        "—".into(),
                    );
                }
            }
            if o.wants("idle") {
                self.idle(&stack);
            }
            self.check_alive(&mut stack);
        }
        if o.wants("large")
            && let Err(e) = self.large(pf_target.as_ref())
        {
            self.report.row(
                "large",
                "25 MB message",
                format!("not measured: {}", one_line(&e)),
                "—".into(),
                "—".into(),
            );
        }
        if o.wants("backlog")
            && let Err(e) = self.backlog()
        {
            self.report.row(
                "backlog",
                "fresh mail with a dead-destination backlog",
                format!("not measured: {}", one_line(&e)),
                "—".into(),
                "—".into(),
            );
        }
        drop(postfix);
        Ok(())
    }

    fn check_alive(&mut self, stack: &mut Stack) {
        for p in stack.processes.iter_mut() {
            if !p.is_running() {
                self.report.note(format!(
                    "{} exited during the run:\n{}",
                    p.name,
                    stack::tail_lines(&p.log_text(), 10)
                ));
            }
        }
    }

    fn start_postfix(&mut self) -> Option<postfix::Postfix> {
        if !self.o.postfix {
            self.report
                .note("Postfix peer skipped (--no-postfix)".into());
            return None;
        }
        let Some(script) = postfix::find_script(self.o.postfix_script.as_deref()) else {
            self.report
                .note("Postfix peer skipped: shared/peers/postfix/setup.sh not found".into());
            return None;
        };
        match postfix::Postfix::start(&script, self.o.postfix_port) {
            Ok(p) => Some(p),
            Err(e) => {
                self.report
                    .note(format!("Postfix peer skipped: {}", one_line(&e)));
                None
            }
        }
    }

    /// One message end to end, so directories exist and caches are warm.
    fn warm_up(&self, t: &Target) -> Result<()> {
        maildir::clear(&t.new_dir);
        let spec = self.spec(
            t.addr,
            Shape {
                size: 1024,
                sessions: 1,
                reuse: false,
            },
            1,
        );
        self.rt.block_on(load::run(spec))?;
        maildir::wait_count(&t.new_dir, 1, Duration::from_secs(30))
            .context("warm-up message not delivered within 30 s")?;
        maildir::clear(&t.new_dir);
        Ok(())
    }

    fn spec(&self, addr: SocketAddr, shape: Shape, messages: usize) -> load::LoadSpec {
        load::LoadSpec {
            addr,
            sessions: shape.sessions,
            messages,
            size: shape.size,
            reuse: shape.reuse,
            security: load::Security::Plain,
            from: "a@bench.test".into(),
            to: stack::USER.into(),
            rate: None,
            timeout: Duration::from_secs(600),
        }
    }

    fn run_timeout(&self, n: usize, shape: Shape) -> Duration {
        // Generous: a stall shows up as "not measured", never as a hang.
        Duration::from_secs(60)
            + Duration::from_millis((n as u64) * if shape.size > 10_000 { 40 } else { 20 })
    }

    /// Delivered messages/s: N files in new/ over the time from the first connect.
    fn throughput(&self, t: &Target, shape: Shape, n: usize, force_own: bool) -> Result<f64> {
        let timeout = self.run_timeout(n, shape);
        let (delivered, elapsed) = self.deliveries(t, shape, n, force_own, timeout)?;
        if delivered < n {
            bail!("{delivered} of {n} delivered within {timeout:?}");
        }
        Ok(n as f64 / elapsed)
    }

    /// Sends `n` messages and waits up to `timeout` for them in new/;
    /// returns how many arrived and the seconds from the first connect until
    /// the last of them (or until the timeout).
    fn deliveries(
        &self,
        t: &Target,
        shape: Shape,
        n: usize,
        force_own: bool,
        timeout: Duration,
    ) -> Result<(usize, f64)> {
        maildir::clear(&t.new_dir);
        let start = Instant::now();
        let done = match (&self.smtp_source, force_own) {
            (Some(src), false) => {
                let mut cmd = Command::new(src);
                cmd.args([
                    "-l",
                    &shape.size.to_string(),
                    "-m",
                    &n.to_string(),
                    "-s",
                    &shape.sessions.to_string(),
                ]);
                if shape.reuse {
                    cmd.arg("-d");
                }
                cmd.args(["-f", "a@bench.test", "-t", stack::USER])
                    .arg(t.addr.to_string());
                cmd.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().context("spawn smtp-source")?;
                let done = maildir::wait_count(&t.new_dir, n, timeout);
                if done.is_none() {
                    let _ = child.kill();
                }
                let out = child.wait_with_output()?;
                if done.is_none() && !out.status.success() && maildir::count(&t.new_dir) < n / 2 {
                    bail!(
                        "{} of {n} delivered within {timeout:?} (smtp-source: {})",
                        maildir::count(&t.new_dir),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                done
            }
            _ => {
                let handle = self.rt.spawn(load::run(self.spec(t.addr, shape, n)));
                let done = maildir::wait_count(&t.new_dir, n, timeout);
                if done.is_none() {
                    handle.abort();
                } else if let Err(e) = self.rt.block_on(handle)? {
                    bail!("client: {}", one_line(&e));
                }
                done
            }
        };
        Ok(match done {
            Some(at) => (n, at.duration_since(start).as_secs_f64()),
            None => (
                maildir::count(&t.new_dir).min(n),
                start.elapsed().as_secs_f64(),
            ),
        })
    }

    /// Median over runs, Correo and Postfix interleaved run by run.
    fn side_by_side(
        &self,
        c: &Target,
        p: Option<&Target>,
        shape: Shape,
        n: usize,
        force_own: bool,
    ) -> (Result<f64>, Option<Result<f64>>, Vec<String>) {
        let (mut cv, mut pv) = (Vec::new(), Vec::new());
        let (mut ce, mut pe) = (None, None);
        let mut failures = Vec::new();
        for run in 0..self.o.runs {
            match self.throughput(c, shape, n, force_own) {
                Ok(v) => cv.push(v),
                Err(e) => {
                    failures.push(format!(
                        "Correo {} run {}: {}",
                        shape.label(),
                        run + 1,
                        one_line(&e)
                    ));
                    ce = Some(e)
                }
            }
            if let Some(p) = p {
                match self.throughput(p, shape, n, force_own) {
                    Ok(v) => pv.push(v),
                    Err(e) => {
                        failures.push(format!(
                            "Postfix {} run {}: {}",
                            shape.label(),
                            run + 1,
                            one_line(&e)
                        ));
                        pe = Some(e)
                    }
                }
            }
        }
        let c = if cv.is_empty() {
            Err(ce.unwrap())
        } else {
            Ok(median(&mut cv))
        };
        let p = p.map(|_| {
            if pv.is_empty() {
                Err(pe.unwrap())
            } else {
                Ok(median(&mut pv))
            }
        });
        (c, p, failures)
    }

    fn inbound(&mut self, c: &Target, p: Option<&Target>) -> (Option<f64>, Option<f64>) {
        let n = self.o.messages;
        let mut max = (None, None);
        for size in [1024, 102_400] {
            for sessions in [1, 20] {
                for reuse in [false, true] {
                    let shape = Shape {
                        size,
                        sessions,
                        reuse,
                    };
                    let (cr, pr, failures) = self.side_by_side(c, p, shape, n, false);
                    for f in failures {
                        self.report
                            .note(format!("failed run (excluded from the median): {f}"));
                    }
                    let pv = pr.as_ref().and_then(|r| r.as_ref().ok().copied());
                    let cv = cr.as_ref().ok().copied();
                    if size == 1024 && sessions == 20 && reuse {
                        max = (cv, pv);
                    }
                    let pf = pr.map(|r| fmt_rate(&r)).unwrap_or_else(|| "skipped".into());
                    self.report.row(
                        "inbound",
                        &format!("{} (N={n})", shape.label()),
                        fmt_rate(&cr),
                        pf,
                        ratio(cv, pv),
                    );
                }
            }
        }
        max
    }

    fn submission(&mut self, stack: &Stack) {
        let n = self.o.messages;
        let connector = match load::connector(&stack.path("certs/ca.pem")) {
            Ok(c) => c,
            Err(e) => {
                self.report.row(
                    "submission",
                    "STARTTLS + AUTH",
                    format!("not measured: {}", one_line(&e)),
                    "—".into(),
                    "—".into(),
                );
                return;
            }
        };
        let target = Target {
            addr: stack.addr(stack::SUBMISSION_PORT),
            new_dir: stack.maildir_new(),
        };
        let security = load::Security::StartTlsAuth {
            connector,
            server_name: "msa".into(),
            user: stack::USER.into(),
            password: stack::PASSWORD.into(),
        };
        for (sessions, reuse, n) in [(1, true, n), (20, true, n), (20, false, (n / 4).max(10))] {
            let shape = Shape {
                size: 1024,
                sessions,
                reuse,
            };
            let mut values = Vec::new();
            let mut err = None;
            for _ in 0..self.o.runs {
                maildir::clear(&target.new_dir);
                let mut spec = self.spec(target.addr, shape, n);
                spec.security = security.clone();
                spec.from = stack::USER.into();
                let start = Instant::now();
                let handle = self.rt.spawn(load::run(spec));
                let done = maildir::wait_count(&target.new_dir, n, self.run_timeout(n, shape));
                match (self.rt.block_on(handle), done) {
                    (Ok(Ok(_)), Some(at)) => {
                        values.push(n as f64 / at.duration_since(start).as_secs_f64())
                    }
                    (Ok(Err(e)), _) => err = Some(e),
                    (Err(e), _) => err = Some(e.into()),
                    (_, None) => {
                        err = Some(anyhow::anyhow!(
                            "{} of {n} delivered in time",
                            maildir::count(&target.new_dir)
                        ))
                    }
                }
            }
            let r = if values.is_empty() {
                Err(err.unwrap())
            } else {
                Ok(median(&mut values))
            };
            let label = format!(
                "STARTTLS+AUTH via MSA, 1 KiB, {sessions} session(s), {} (N={n})",
                if reuse {
                    "reuse"
                } else {
                    "new session+AUTH per message"
                }
            );
            self.report.row(
                "submission",
                &label,
                fmt_rate(&r),
                "not measured: peer has no submission service".into(),
                "—".into(),
            );
        }
    }

    /// p50/p99 of final `.` → file in new/, paced at half of `max`.
    fn latency_one(&self, t: &Target, max: f64) -> Result<(f64, f64, f64, f64)> {
        let rate = (max / 2.0).max(1.0);
        let n = ((rate * if self.o.quick { 2.0 } else { 10.0 }) as usize).clamp(20, 5000);
        maildir::clear(&t.new_dir);
        let watcher = maildir::Watcher::start(&t.new_dir)?;
        let mut spec = self.spec(
            t.addr,
            Shape {
                size: 1024,
                sessions: 20,
                reuse: true,
            },
            n,
        );
        spec.rate = Some(rate);
        let start = Instant::now();
        let sent = self.rt.block_on(load::run(spec))?;
        let elapsed = start.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(60);
        while watcher.len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let arrivals: std::collections::HashMap<u64, Instant> =
            watcher.finish().into_iter().collect();
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|s| {
                Some(
                    arrivals
                        .get(&s.seq)?
                        .saturating_duration_since(s.dot)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect();
        if lat.len() < n {
            bail!("only {} of {n} arrivals matched", lat.len());
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut ack: Vec<f64> = sent
            .iter()
            .map(|s| s.reply.duration_since(s.dot).as_secs_f64() * 1000.0)
            .collect();
        ack.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok((
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            percentile(&ack, 99.0),
            n as f64 / elapsed,
        ))
    }

    fn latency(&mut self, c: &Target, p: Option<&Target>, max: (Option<f64>, Option<f64>)) {
        let measure = |b: &Bench, t: &Target, m: Option<f64>| -> Result<(f64, f64, f64, f64)> {
            let m = match m {
                Some(m) => m,
                None => b.throughput(
                    t,
                    Shape {
                        size: 1024,
                        sessions: 20,
                        reuse: true,
                    },
                    b.o.messages,
                    true,
                )?,
            };
            let mut runs = Vec::new();
            for _ in 0..b.o.runs {
                runs.push(b.latency_one(t, m)?);
            }
            let mut p50: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let mut p99: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let mut ack: Vec<f64> = runs.iter().map(|r| r.2).collect();
            let mut rate: Vec<f64> = runs.iter().map(|r| r.3).collect();
            Ok((
                median(&mut p50),
                median(&mut p99),
                median(&mut ack),
                median(&mut rate),
            ))
        };
        let cr = measure(self, c, max.0);
        let pr = p.map(|t| measure(self, t, max.1));
        let show = |r: &Result<(f64, f64, f64, f64)>, i: usize| match r {
            Ok(v) => {
                let x = [v.0, v.1, v.2][i];
                format!("{x:.1} ms @ {:.0}/s", v.3)
            }
            Err(e) => format!("not measured: {}", one_line(e)),
        };
        let names = [
            "p50 final `.` → file in new/ (½ max rate, 20 sessions)",
            "p99 final `.` → file in new/ (½ max rate, 20 sessions)",
            "p99 final `.` → 250 reply",
        ];
        for (i, name) in names.iter().enumerate() {
            let cv = cr.as_ref().ok().map(|v| [v.0, v.1, v.2][i]);
            let pv = pr
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .map(|v| [v.0, v.1, v.2][i]);
            let pf = pr
                .as_ref()
                .map(|r| show(r, i))
                .unwrap_or_else(|| "skipped".into());
            self.report
                .row("latency", name, show(&cr, i), pf, ratio(cv, pv));
        }
    }

    fn idle(&mut self, stack: &Stack) {
        let n = self.o.idle_sessions;
        let before = stack.rss_kb("mta");
        let result = self.rt.block_on(async {
            let sessions = tokio::time::timeout(
                Duration::from_secs(180),
                load::idle_sessions(stack.addr(stack::SMTP_PORT), n, 10),
            )
            .await??;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = stack.rss_kb("mta");
            drop(sessions);
            anyhow::Ok(rss)
        });
        match result {
            Ok(rss) => {
                let per = match (rss, before) {
                    (Some(a), Some(b)) => format!(
                        " ({:.1} KB/session over {})",
                        (a.saturating_sub(b)) as f64 / n as f64,
                        mb(before)
                    ),
                    _ => String::new(),
                };
                self.report.row(
                    "idle",
                    &format!("MTA RSS with {n} idle SMTP sessions (after EHLO)"),
                    format!("{}{per}", mb(rss)),
                    "not measured: peer is process-per-session (smtpd process_limit 100)".into(),
                    "—".into(),
                );
            }
            Err(e) => self.report.row(
                "idle",
                &format!("MTA RSS with {n} idle SMTP sessions"),
                format!("not measured: {}", one_line(&e)),
                "—".into(),
                "—".into(),
            ),
        }
    }

    /// One large message end to end: time and peak RSS per role (fresh stack).
    fn large(&mut self, p: Option<&Target>) -> Result<()> {
        let size = self.o.large_bytes;
        let label = format!("{:.0} MB", size as f64 / 1e6);
        let stack = Stack::start(
            &self.o.bin_dir,
            &StackOptions {
                with_msa: true,
                log_level: self.o.log_level.clone(),
                smtp_extra: smtp_limits(500),
                ..Default::default()
            },
        )?;
        let c = Target {
            addr: stack.addr(stack::SMTP_PORT),
            new_dir: stack.maildir_new(),
        };
        self.warm_up(&c)?;
        let base: Vec<Option<u64>> = ["msa", "mta", "mda"]
            .iter()
            .map(|r| stack.hwm_kb(r))
            .collect();
        // Submission path: MSA → MTA → MDA.
        let connector = load::connector(&stack.path("certs/ca.pem"))?;
        let mut spec = self.spec(
            stack.addr(stack::SUBMISSION_PORT),
            Shape {
                size,
                sessions: 1,
                reuse: false,
            },
            1,
        );
        spec.security = load::Security::StartTlsAuth {
            connector,
            server_name: "msa".into(),
            user: stack::USER.into(),
            password: stack::PASSWORD.into(),
        };
        spec.from = stack::USER.into();
        let start = Instant::now();
        let sub = self.rt.block_on(load::run(spec)).and_then(|_| {
            maildir::wait_count(&c.new_dir, 1, Duration::from_secs(300))
                .context("not delivered within 300 s")
        });
        let sub_time = sub.map(|at| at.duration_since(start).as_secs_f64());
        self.report.row(
            "large",
            &format!("{label} via submission (STARTTLS+AUTH) → file in new/"),
            match &sub_time {
                Ok(t) => format!("{t:.2} s"),
                Err(e) => format!("not measured: {}", one_line(e)),
            },
            "not measured: peer has no submission service".into(),
            "—".into(),
        );
        for (i, role) in ["msa", "mta", "mda"].iter().enumerate() {
            let hwm = stack.hwm_kb(role);
            let grew = match (hwm, base[i]) {
                (Some(a), Some(b)) => format!(
                    " (+{:.1} MB = {:.2}× the message)",
                    (a.saturating_sub(b)) as f64 / 1024.0,
                    (a.saturating_sub(b)) as f64 * 1024.0 / size as f64
                ),
                _ => String::new(),
            };
            self.report.row(
                "large",
                &format!("peak RSS of {role} ({label} message)"),
                format!("{}{grew}", mb(hwm)),
                "—".into(),
                "—".into(),
            );
        }
        // Inbound path, side by side (built-in client: smtp-source has no 25 MB mode worth trusting).
        let shape = Shape {
            size,
            sessions: 1,
            reuse: false,
        };
        let mut times = Vec::new();
        for t in std::iter::once(&c).chain(p) {
            maildir::clear(&t.new_dir);
            let start = Instant::now();
            let r = self
                .rt
                .block_on(load::run(self.spec(t.addr, shape, 1)))
                .and_then(|_| {
                    maildir::wait_count(&t.new_dir, 1, Duration::from_secs(300))
                        .context("not delivered within 300 s")
                });
            times.push(r.map(|at| at.duration_since(start).as_secs_f64()));
        }
        let show = |r: &Result<f64>| match r {
            Ok(t) => format!("{t:.2} s"),
            Err(e) => format!("not measured: {}", one_line(e)),
        };
        let pf = times.get(1).map(show).unwrap_or_else(|| "skipped".into());
        let (cv, pv) = (
            times[0].as_ref().ok().copied(),
            times.get(1).and_then(|r| r.as_ref().ok().copied()),
        );
        self.report.row(
            "large",
            &format!("{label} inbound port 25 → file in new/"),
            show(&times[0]),
            pf,
            ratio(cv, pv),
        );
        self.report.row(
            "large",
            &format!("peak RSS of mta after inbound {label}"),
            mb(stack.hwm_kb("mta")),
            "—".into(),
            "—".into(),
        );
        Ok(())
    }

    /// Fresh local mail with and without a backlog deferred to a dead MX.
    fn backlog(&mut self) -> Result<()> {
        let b = self.o.backlog;
        let dead_ip = stack::fresh_loopback_ip(); // nothing listens there
        let mut stack = Stack::start(
            &self.o.bin_dir,
            &StackOptions {
                with_msa: false,
                zones: vec![stack::mx_zone("dead.test", dead_ip)],
                retry_first: Some(self.o.backlog_retry.clone()),
                retry_max: Some(self.o.backlog_retry.clone()),
                log_level: self.o.log_level.clone(),
                smtp_extra: smtp_limits(500),
                ..Default::default()
            },
        )?;
        let c = Target {
            addr: stack.addr(stack::SMTP_PORT),
            new_dir: stack.maildir_new(),
        };
        self.warm_up(&c)?;
        let shape = Shape {
            size: 1024,
            sessions: 20,
            reuse: false,
        };
        // 2.5 × --messages (5,000 by default): at 2,000/s a run of N/4 = 500
        // lasted 0.25 s, which the 20 ms poll and start-up effects turned
        // into anything from 41% to 166% (docs/BENCHMARKS.md, run 5b).
        let n = (self.o.messages * 5 / 2).max(20);
        let measure = |bench: &Bench| -> Result<f64> {
            let mut v = Vec::new();
            for _ in 0..bench.o.runs {
                v.push(bench.throughput(&c, shape, n, false)?);
            }
            Ok(median(&mut v))
        };
        let without = measure(self);
        // Build the backlog: stop the MTA, write spool files, restart it.
        stack.stop_role("mta");
        let t = Instant::now();
        stack::inject_spool(&stack.mta_data(), b, "x@dead.test", 1024)?;
        stack.start_role("mta", &[stack::MTA_GRPC_PORT, stack::SMTP_PORT])?;
        let startup = t.elapsed().as_secs_f64();
        // Wait until every backlog recipient has had its (failing) first
        // attempt: with the circuit breaker most are deferred without a
        // connection (and without a log line), so read the queue gauge.
        let limit = Duration::from_secs(if self.o.quick { 15 } else { 900 });
        let t = Instant::now();
        let deferred = loop {
            let d = stack
                .mta_queue_recipients(&["state=\"deferred\"", "destination=\"dead.test\""])
                .unwrap_or(0);
            if d as usize >= b || t.elapsed() > limit {
                break d;
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        self.report.note(format!(
            "backlog: {b} spool files written + MTA restart in {startup:.1} s; {deferred} recipients deferred after {:.1} s more",
            t.elapsed().as_secs_f64()
        ));
        // With the backlog the rate may collapse: take what arrives in a bounded time.
        let with = (|| -> Result<f64> {
            let mut v = Vec::new();
            let timeout = self.run_timeout(n, shape);
            for _ in 0..self.o.runs {
                let (delivered, secs) = self.deliveries(&c, shape, n, false, timeout)?;
                if delivered < n {
                    self.report.notes.push(format!("backlog: only {delivered} of {n} fresh messages arrived within {timeout:?}; rate = arrived / elapsed"));
                    println!(
                        "  note: backlog: only {delivered} of {n} fresh messages arrived within {timeout:?}"
                    );
                }
                v.push(delivered as f64 / secs);
                if delivered < n {
                    break; // One bounded run is enough to show a collapse.
                }
            }
            Ok(median(&mut v))
        })();
        let label = format!("{} (N={n})", shape.label());
        let cw = without.as_ref().ok().copied();
        let cb = with.as_ref().ok().copied();
        self.report.row(
            "backlog",
            &format!("fresh local mail, no backlog, {label}"),
            fmt_rate(&without),
            "—".into(),
            "—".into(),
        );
        self.report.row(
            "backlog",
            &format!("same with {b} deferred to a dead MX"),
            fmt_rate(&with),
            "—".into(),
            match (cb, cw) {
                (Some(x), Some(y)) => format!("{:.0}% of the rate without backlog", 100.0 * x / y),
                _ => "—".into(),
            },
        );
        Ok(())
    }
}

/// CPU model, cores and kernel, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Writes the report's Markdown table to `path`.
pub fn write_markdown(report: &Report, path: &Path) -> Result<()> {
    std::fs::write(path, report.markdown())?;
    Ok(())
}

/// Starts one Correo stack (MDA, MTA, MSA) as the benchmark configures it,
/// prints its addresses, PIDs and Maildir, and keeps it up for `secs`
/// seconds: for profiling it with perf or strace from another shell.
pub fn serve(o: &Options, secs: u64) -> Result<()> {
    raise_nofile();
    stop_children_on_interrupt();
    let stack = Stack::start(
        &o.bin_dir,
        &StackOptions {
            with_msa: true,
            log_level: o.log_level.clone(),
            smtp_extra: smtp_limits(o.idle_sessions + 500),
            ..Default::default()
        },
    )?;
    println!("smtp {}", stack.addr(stack::SMTP_PORT));
    println!("submission {}", stack.addr(stack::SUBMISSION_PORT));
    println!("maildir {}", stack.maildir_new().display());
    println!("dir {}", stack.dir.path().display());
    for role in ["mta", "mda", "msa"] {
        println!("pid {role} {}", stack.pid(role).unwrap_or(0));
    }
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}
