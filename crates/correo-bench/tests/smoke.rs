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
