//! The docker-compose stack, end to end, on a real Docker engine: the
//! top-level `docker-compose.yml` as users run it, plus two overrides —
//! `deploy/compose.prebuilt.yml` (the image is built `FROM scratch` out of
//! this workspace's binaries, because the build machines have no container
//! registry) and `deploy/compose.test.yml` (org A's submission port and org
//! B's mailbox API published on 127.0.0.1 at ports Docker picks).
//!
//! One test, in phases, on a compose project of its own (unique name,
//! subnet, image tag; `down -v` and `rmi` at the end, also on failure):
//! 1. alice@example.test → bob@another.test with the MUA
//!    (`docker-compose run mua-a send`) through the MX hop; the message is
//!    in bob's Maildir (copied out of the MDA container) and bob lists it
//!    with `docker-compose run mua-b list`.
//! 2. `--scale mta-a=3`: the MSA and the DNS server see three replicas;
//!    mail from another.test to example.test reaches a replica by MX.
//! 3. 300 messages through org A's MSA (Python smtplib, 4 connections):
//!    all arrive, and every replica queued some (its own log).
//! 4. With org B's MTA stopped (so acknowledged mail waits in org A's
//!    queues), 300 more; one replica is `docker kill`ed after 100 were
//!    accepted. Every message is accepted anyway (the MSA fails over), and
//!    once org B is back and the killed replica is started again, all 300
//!    are in bob's Maildir: 0 lost.
//!
//! Without a reachable Docker engine (or without compose) the test prints
//! `SKIPPED: …` loudly and returns: nextest has no skip status, so look for
//! that line (`cargo nextest run --no-capture -E 'test(compose)'`).

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEMO_PASSWORD: &str = "compose-demo-secret";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    Ok(out)
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The compose command: `docker-compose` (v1) if present, else `docker compose` (v2).
fn compose_program() -> Option<Vec<String>> {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else if ok("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else {
        None
    }
}

fn docker_engine_reachable() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A compose project that is taken down (volumes and image too) when dropped.
struct Stack {
    compose: Vec<String>,
    project: String,
    image: String,
    context: tempfile::TempDir,
    net: String,
}

impl Stack {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .current_dir(workspace())
            .args(["-p", &self.project])
            .args([
                "-f",
                "docker-compose.yml",
                "-f",
                "deploy/compose.prebuilt.yml",
                "-f",
                "deploy/compose.test.yml",
            ])
            .env("CORREO_IMAGE", &self.image)
            .env("CORREO_IMAGE_CONTEXT", self.context.path())
            .env("CORREO_NET", &self.net)
            .env("CORREO_DEMO_PASSWORD", DEMO_PASSWORD)
            .env("CORREO_RETRY_FIRST", "1s")
            .env("CORREO_RETRY_MAX", "3s")
            .env_remove("CORREO_PASSWORD")
            .env_remove("CORREO_MUA_ADDRESS");
        cmd
    }

    fn compose(&self, args: &[&str]) -> Result<String> {
        run_ok(self.cmd().args(args))
    }

    /// `docker-compose run --rm mua-X ARGS` as `address`.
    fn mua(&self, service: &str, address: &str, args: &[&str]) -> Result<String> {
        run_ok(
            self.cmd()
                .env("CORREO_PASSWORD", DEMO_PASSWORD)
                .env("CORREO_MUA_ADDRESS", address)
                .args(["run", "--rm", service])
                .args(args),
        )
    }

    /// Container ids of a service, in replica order.
    fn containers(&self, service: &str) -> Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", service])?;
        let mut named = Vec::new();
        for id in ids.split_whitespace() {
            let name =
                run_ok(Command::new("docker").args(["inspect", "--format", "{{.Name}}", id]))?;
            named.push((name.trim().to_string(), id.to_string()));
        }
        named.sort();
        Ok(named.into_iter().map(|(_, id)| id).collect())
    }

    fn logs(&self, container: &str) -> String {
        run(Command::new("docker").args(["logs", container]))
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    fn count_in_logs(&self, container: &str, needle: &str) -> usize {
        self.logs(container)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn health(container: &str) -> String {
        run_ok(Command::new("docker").args([
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            container,
        ]))
        .unwrap_or_default()
        .trim()
        .to_string()
    }

    fn wait_healthy(&self, services: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for service in services {
                let ids = self.containers(service)?;
                if ids.is_empty() {
                    waiting.push(format!("{service}: no container"));
                }
                for id in ids {
                    let h = Self::health(&id);
                    if h != "healthy" {
                        waiting.push(format!("{service} {}: {h}", &id[..12.min(id.len())]));
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not healthy after {timeout:?}: {waiting:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Host port that `service`'s `port` is published on.
    fn port(&self, service: &str, port: u16) -> Result<u16> {
        let out = self.compose(&["port", service, &port.to_string()])?;
        let port = out
            .trim()
            .rsplit(':')
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("port output {out:?}"))?;
        Ok(port)
    }

    /// The messages in a Maildir `new/` of a container (copied out).
    fn maildir_messages(&self, container: &str, maildir: &str) -> Result<Vec<String>> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("new");
        let out = run(Command::new("docker")
            .arg("cp")
            .arg(format!("{container}:{maildir}/new"))
            .arg(&dest))?;
        if !out.status.success() {
            return Ok(Vec::new()); // no mail yet: the Maildir does not exist
        }
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(&dest)? {
            messages.push(std::fs::read_to_string(entry?.path())?);
        }
        Ok(messages)
    }

    /// Subjects of the messages in a Maildir `new/` of a container.
    fn maildir_subjects(&self, container: &str, maildir: &str) -> Result<Vec<String>> {
        Ok(self
            .maildir_messages(container, maildir)?
            .iter()
            .map(|text| {
                let head = text.split("\r\n\r\n").next().unwrap_or("");
                head.lines()
                    .find_map(|l| l.strip_prefix("Subject: "))
                    .unwrap_or("")
                    .to_string()
            })
            .collect())
    }

    fn dump(&self) {
        eprintln!("==== compose ps ====");
        if let Ok(ps) = self.compose(&["ps", "-a"]) {
            eprintln!("{ps}");
        }
        if let Ok(out) = run(self.cmd().args(["logs", "--no-color", "--tail", "40"])) {
            eprintln!(
                "==== compose logs (tail) ====\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = run(self.cmd().args([
            "--profile",
            "tools",
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "5",
        ]));
        let _ = run(Command::new("docker").args(["rmi", "-f", &self.image]));
    }
}

/// Compose projects of this test are `correotest-<pid>-<random>`.
const PROJECT_PREFIX: &str = "correotest-";

/// Takes down what an earlier run left behind when it was killed before its
/// Drop ran (e.g. by the nextest timeout): projects whose test process is gone.
fn remove_stale_projects(compose: &[String], context: &Path) {
    let Ok(out) = run(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ])) else {
        return;
    };
    let projects: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|p| p.starts_with(PROJECT_PREFIX))
        .map(str::to_string)
        .collect();
    for project in projects {
        let tag = &project[PROJECT_PREFIX.len()..];
        let pid = tag.split('-').next().unwrap_or("");
        if pid.is_empty() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("compose: removing stale project {project}");
        let stale = Stack {
            compose: compose.to_vec(),
            project: project.clone(),
            image: format!("correo-test:{tag}"),
            context: tempfile::tempdir_in(context.parent().unwrap_or(context)).unwrap(),
            net: "10.89.53".into(),
        };
        drop(stale); // Drop runs `down -v` and removes the image
    }
}

/// Builds `correo` and `correo-dns` in this test's profile.
fn build_binaries() -> PathBuf {
    let bin_dir = correo_tests::bin_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(workspace().join("Cargo.toml"))
        .args(["-p", "correo", "-p", "correo-dns"]);
    if bin_dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo build").success(),
        "building correo failed"
    );
    bin_dir
}

/// Runs deploy/send.py against org A's published submission port; calls
/// `on_progress(accepted)` as messages are accepted. Returns the numbers
/// accepted and the failures.
fn send_load(
    port: u16,
    ca: &Path,
    prefix: &str,
    count: usize,
    mut on_progress: impl FnMut(usize),
) -> Result<(BTreeSet<usize>, Vec<String>)> {
    let mut child = Command::new("python3")
        .arg(workspace().join("deploy/send.py"))
        .args(["127.0.0.1", &port.to_string()])
        .arg(ca)
        .args([
            "alice@example.test",
            DEMO_PASSWORD,
            "bob@another.test",
            prefix,
            &count.to_string(),
            "4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("run python3 deploy/send.py")?;
    let mut ok = BTreeSet::new();
    let mut failed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("OK ") {
            ok.insert(n.trim().parse::<usize>()?);
            on_progress(ok.len());
        } else {
            failed.push(line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("send.py failed ({status})");
    }
    Ok((ok, failed))
}

fn numbers_with_prefix(subjects: &[String], prefix: &str) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for s in subjects {
        if let Some(n) = s
            .strip_prefix(prefix)
            .and_then(|r| r.trim().parse::<usize>().ok())
        {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

const BOB_MAILDIR: &str = "/data/mail/another.test/bob/Maildir";
const ALICE_MAILDIR: &str = "/data/mail/example.test/alice/Maildir";

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn compose_two_orgs_mx_hop_scaling_and_failover() {
    if !docker_engine_reachable() {
        eprintln!("\n************************************************************");
        eprintln!(
            "SKIPPED: no docker engine (`docker info` failed): the compose stack test did not run"
        );
        eprintln!("************************************************************\n");
        return;
    }
    let Some(compose) = compose_program() else {
        eprintln!("\n************************************************************");
        eprintln!(
            "SKIPPED: no docker compose (neither `docker-compose` nor `docker compose`): the compose stack test did not run"
        );
        eprintln!("************************************************************\n");
        return;
    };
    let started = Instant::now();
    let bin_dir = build_binaries();
    let tag = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    let project = format!("{PROJECT_PREFIX}{tag}");
    let context = tempfile::tempdir().unwrap();
    remove_stale_projects(&compose, context.path());
    let mut stack = Stack {
        compose,
        project: project.clone(),
        image: format!("correo-test:{tag}"),
        context,
        net: String::new(),
    };

    // Stage the image context from this profile's binaries and build it once;
    // every service uses the same image tag.
    let status = Command::new(workspace().join("deploy/prebuilt.sh"))
        .arg("--no-build")
        .env("CORREO_BIN_DIR", &bin_dir)
        .env("CORREO_IMAGE_CONTEXT", stack.context.path())
        .status()
        .unwrap();
    assert!(status.success(), "deploy/prebuilt.sh failed");
    stack.compose(&["build", "certs-a"]).unwrap();
    eprintln!(
        "compose: image {} built after {:?}",
        stack.image,
        started.elapsed()
    );

    // A /24 of our own; pick another if it overlaps a network of this host.
    let mut up = Err(anyhow::anyhow!("no attempt"));
    for _ in 0..6 {
        stack.net = format!(
            "10.{}.{}",
            64 + rand::random::<u8>() % 64,
            rand::random::<u8>()
        );
        up = stack.compose(&["up", "-d", "--no-build"]);
        match &up {
            Err(e) if e.to_string().contains("overlaps") => {
                let _ = stack.compose(&["down", "-v"]);
            }
            _ => break,
        }
    }
    up.unwrap();
    stack
        .wait_healthy(
            &["mda-a", "mta-a", "msa-a", "mda-b", "mta-b", "msa-b"],
            Duration::from_secs(120),
        )
        .unwrap();
    eprintln!("compose: stack healthy after {:?}", started.elapsed());
    let mda_b = stack.containers("mda-b").unwrap().remove(0);
    let mda_a = stack.containers("mda-a").unwrap().remove(0);

    // 1. Across organisations through the MX hop, with the MUA.
    let out = stack
        .mua(
            "mua-a",
            "alice@example.test",
            &[
                "send",
                "--to",
                "bob@another.test",
                "--subject",
                "Hello Bob",
                "--body",
                "Across the MX hop.",
            ],
        )
        .unwrap();
    assert!(out.contains("queued as"), "{out}");
    let message = wait_for(
        "Hello Bob in bob's Maildir",
        Duration::from_secs(60),
        || {
            Ok(stack
                .maildir_messages(&mda_b, BOB_MAILDIR)?
                .into_iter()
                .find(|m| m.contains("\r\nSubject: Hello Bob\r\n")))
        },
    )
    .unwrap();
    // Org A's MTA queued it from the MSA, found another.test's MX through
    // the DNS server and handed it to org B's MTA over SMTP with STARTTLS.
    assert!(
        message.starts_with("Return-Path: <alice@example.test>\r\n"),
        "{message}"
    );
    assert!(
        message.contains("by mx.example.test (mx.example.test) via gRPC"),
        "{message}"
    );
    assert!(
        message.contains("Received: from mx.example.test ("),
        "{message}"
    );
    assert!(
        message.contains("by mx.another.test with ESMTPS"),
        "{message}"
    );
    assert!(message.contains("Across the MX hop."), "{message}");
    let list = stack.mua("mua-b", "bob@another.test", &["list"]).unwrap();
    assert!(
        list.contains("Hello Bob") && list.contains("alice@example.test"),
        "{list}"
    );
    eprintln!(
        "compose: phase 1 (MX hop) done after {:?}",
        started.elapsed()
    );

    // 2. Three transfer nodes for example.test.
    stack
        .compose(&["up", "-d", "--no-build", "--scale", "mta-a=3"])
        .unwrap();
    stack
        .wait_healthy(&["mta-a"], Duration::from_secs(90))
        .unwrap();
    let replicas = stack.containers("mta-a").unwrap();
    assert_eq!(replicas.len(), 3);
    let msa_a = stack.containers("msa-a").unwrap().remove(0);
    let dns = stack.containers("dns").unwrap().remove(0);
    wait_for(
        "MSA and DNS see 3 MTA replicas",
        Duration::from_secs(30),
        || {
            let msa_sees = stack
                .logs(&msa_a)
                .lines()
                .rfind(|l| l.contains("MTA addresses changed"))
                .is_some_and(|l| l.matches(":7201").count() == 3);
            let dns_sees = stack
                .logs(&dns)
                .lines()
                .rfind(|l| l.contains("mx.example.test") && l.contains("tracked A records"))
                .is_some_and(|l| l.matches(&format!("{}.", stack.net)).count() == 3);
            Ok((msa_sees && dns_sees).then_some(()))
        },
    )
    .unwrap();
    // Inbound SMTP for example.test reaches a replica through the MX.
    stack
        .mua(
            "mua-b",
            "bob@another.test",
            &[
                "send",
                "--to",
                "alice@example.test",
                "--subject",
                "Hello Alice",
                "--body",
                "Back to a scaled org.",
            ],
        )
        .unwrap();
    wait_for(
        "Hello Alice in alice's Maildir",
        Duration::from_secs(60),
        || {
            Ok(stack
                .maildir_subjects(&mda_a, ALICE_MAILDIR)?
                .iter()
                .any(|s| s == "Hello Alice")
                .then_some(()))
        },
    )
    .unwrap();
    eprintln!(
        "compose: phase 2 (scale, inbound to a replica) done after {:?}",
        started.elapsed()
    );

    // 3. 300 messages spread over the three replicas.
    let port = stack.port("msa-a", 587).unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let certs_a = stack.containers("certs-a").unwrap().remove(0);
    run_ok(
        Command::new("docker")
            .arg("cp")
            .arg(format!("{certs_a}:/certs/ca.pem"))
            .arg(ca_dir.path().join("ca.pem")),
    )
    .unwrap();
    let ca = ca_dir.path().join("ca.pem");
    let queued = |stack: &Stack| -> Vec<usize> {
        replicas
            .iter()
            .map(|c| stack.count_in_logs(c, "queued from gRPC submission"))
            .collect()
    };
    let before = queued(&stack);
    let t = Instant::now();
    let (ok, failed) = send_load(port, &ca, "load", 300, |_| {}).unwrap();
    assert!(
        failed.is_empty() && ok.len() == 300,
        "submissions failed: {failed:?}"
    );
    eprintln!("compose: 300 submitted in {:?}", t.elapsed());
    let arrived = wait_for(
        "300 load messages in bob's Maildir",
        Duration::from_secs(180),
        || {
            let seen = numbers_with_prefix(&stack.maildir_subjects(&mda_b, BOB_MAILDIR)?, "load");
            Ok((seen.len() == 300).then_some(seen))
        },
    )
    .unwrap();
    let after = queued(&stack);
    let carried: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!(
        "compose: 300 arrived after {:?}; per replica {carried:?}; duplicates {}",
        t.elapsed(),
        arrived.values().filter(|&&c| c > 1).count()
    );
    assert_eq!(carried.iter().sum::<usize>(), 300, "{carried:?}");
    assert!(
        carried.iter().all(|&c| c > 0),
        "a replica carried nothing: {carried:?}"
    );

    // 4. Kill a replica in the middle of a load while org B is unreachable, so
    //    what it acknowledged is still in its queue when it dies.
    stack.compose(&["stop", "-t", "5", "mta-b"]).unwrap();
    let victim = replicas[1].clone();
    let before = queued(&stack);
    let mut killed = false;
    let t = Instant::now();
    let (ok, failed) = send_load(port, &ca, "kill", 300, |accepted| {
        if accepted >= 100 && !killed {
            run_ok(Command::new("docker").args(["kill", &victim])).unwrap();
            killed = true;
            eprintln!(
                "compose: killed replica {} after {accepted} accepted",
                &victim[..12]
            );
        }
    })
    .unwrap();
    assert!(killed);
    assert!(
        failed.is_empty() && ok.len() == 300,
        "submissions failed: {failed:?}"
    );
    let after = queued(&stack);
    let carried: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!(
        "compose: 300 submitted around the kill in {:?}; per replica {carried:?}",
        t.elapsed()
    );
    assert!(
        carried[1] > 0,
        "the killed replica had acknowledged nothing: {carried:?}"
    );
    stack.compose(&["start", "mta-b"]).unwrap();
    stack
        .wait_healthy(&["mta-b"], Duration::from_secs(60))
        .unwrap();
    // The survivors deliver theirs; the victim's stay in its queue until it is back.
    let expected_without_victim = 300 - carried[1];
    wait_for(
        "survivors' messages delivered",
        Duration::from_secs(120),
        || {
            let seen = numbers_with_prefix(&stack.maildir_subjects(&mda_b, BOB_MAILDIR)?, "kill");
            Ok((seen.len() >= expected_without_victim).then_some(()))
        },
    )
    .unwrap();
    run_ok(Command::new("docker").args(["start", &victim])).unwrap();
    let arrived = wait_for(
        "all 300 kill-phase messages in bob's Maildir",
        Duration::from_secs(180),
        || {
            let seen = numbers_with_prefix(&stack.maildir_subjects(&mda_b, BOB_MAILDIR)?, "kill");
            Ok((seen.len() == 300).then_some(seen))
        },
    )
    .unwrap();
    let lost: Vec<usize> = (0..300).filter(|n| !arrived.contains_key(n)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    eprintln!(
        "compose: 0 lost after the kill; duplicates {}; whole test {:?}",
        arrived.values().filter(|&&c| c > 1).count(),
        started.elapsed()
    );
    drop(stack);
}

/// The Kubernetes manifests under deploy/k8s/ pass a schema validator
/// (`kubernetes-validate --strict`, from PyPI, with the API schemas inside
/// the package: no network), and the validator does reject a broken one.
#[test]
fn k8s_manifests_pass_the_schema_validator() {
    // `python3 -m` finds it wherever pip put it, on PATH or not.
    let validator = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate"]);
        cmd
    };
    let available = validator()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "kubernetes-validate is missing: `python3 -m pip install kubernetes-validate` (.ci/run installs it)"
    );
    let dir = workspace().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["configmap.yaml", "mda.yaml", "msa.yaml", "mta.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "deploy/k8s/{expected} missing: {names:?}"
        );
    }
    let out = run_ok(validator().arg("--strict").args(&files)).unwrap();
    for kind in [
        "statefulset/mta",
        "deployment/msa",
        "deployment/mda",
        "persistentvolumeclaim/mda-data",
        "service/mta",
        "configmap/correo-config",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind} not validated:\n{out}"
        );
    }
    let mta = std::fs::read_to_string(dir.join("mta.yaml")).unwrap();
    assert!(
        mta.contains("volumeClaimTemplates:"),
        "the MTA keeps a volume per replica"
    );

    // The validator is not a rubber stamp: an unknown field fails.
    let broken = tempfile::tempdir().unwrap();
    let path = broken.path().join("mta.yaml");
    std::fs::write(
        &path,
        mta.replacen("serviceName: mta", "serviceName: mta\n  replicaz: 3", 1),
    )
    .unwrap();
    let out = run(validator().arg("--strict").arg(&path)).unwrap();
    assert!(
        !out.status.success(),
        "a manifest with an unknown field passed"
    );
}
