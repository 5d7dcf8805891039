//! CI smoke run of the benchmark harness: quick mode, tiny counts, against
//! the debug binaries. It checks that the harness works end to end; it makes
//! no assertion on speed. The Postfix peer is skipped here (it rewrites the
//! machine-wide /etc/postfix, which a parallel test may be using) unless
//! CORREO_BENCH_SMOKE_POSTFIX=1.

use correo_bench::{Options, default_bin_dir};
use std::path::Path;
use std::process::Command;

fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest);
    for package in ["msa", "mta", "mda", "correo-dns"] {
        cmd.args(["-p", package]);
    }
    if default_bin_dir().ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo build").success(),
        "building the role binaries failed"
    );
}

#[test]
fn quick_benchmark_runs_end_to_end() {
    build_binaries();
    let mut o = Options::quick(default_bin_dir());
    o.messages = 20;
    o.idle_sessions = 100;
    o.backlog = 100;
    o.large_bytes = 1_000_000;
    o.postfix = std::env::var("CORREO_BENCH_SMOKE_POSTFIX").is_ok_and(|v| v == "1");
    if !o.postfix {
        println!(
            "Postfix peer skipped in the smoke test (set CORREO_BENCH_SMOKE_POSTFIX=1 to include it)"
        );
    }
    let report = correo_bench::run(o).expect("harness run");
    println!("{}", report.markdown());
    let inbound: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.section == "inbound")
        .collect();
    assert_eq!(inbound.len(), 8, "every inbound shape reported");
    assert!(
        inbound.iter().all(|r| r.correo.ends_with("/s")),
        "an inbound figure was not measured: {inbound:#?}"
    );
    for section in [
        "submission",
        "latency",
        "memory",
        "idle",
        "large",
        "backlog",
    ] {
        assert!(
            report.rows.iter().any(|r| r.section == section),
            "{section} missing from the report"
        );
    }
}

/// Whether a process is gone (or a zombie waiting for init to reap it).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn sigterm_stops_every_process_the_harness_started() {
    use std::io::BufRead;
    build_binaries();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_correo-bench"))
        .args(["--serve", "120", "--idle", "0", "--no-postfix"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start correo-bench --serve");
    let mut pids = Vec::new();
    for line in std::io::BufReader::new(bench.stdout.take().unwrap()).lines() {
        let line = line.expect("read correo-bench output");
        if let Some(pid) = line.strip_prefix("pid ") {
            pids.push(
                pid.split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
            if line.starts_with("pid msa") {
                break;
            }
        }
    }
    assert_eq!(pids.len(), 3, "pids of mta, mda and msa: {pids:?}");
    assert!(pids.iter().all(|p| !gone(*p)), "the roles run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pids.iter().all(|p| gone(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "roles still running after the harness was stopped: {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
