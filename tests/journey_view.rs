//! The journey made visible: a message sent across two organisations by MX,
//! then `correo journey` asked about it. It must list every hop — the MSA,
//! both MTAs and the MDA — with TLS noted on the MX hop, whether asked by
//! journey id or by Message-ID; and every role's `/metrics` must count what
//! happened.

use correo_tests::{
    Dns, Org, OrgOptions, SUBMISSION_PORT, SUBMISSIONS_PORT, Zone, bin_dir, wait_until,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const MSA_GRPC_PORT: u16 = 7401;
const METRICS_PORT: u16 = 9100;

/// The launcher binary (the harness builds only the roles).
fn correo_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "correo", "--manifest-path"])
            .arg(&manifest);
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building correo failed"
        );
    });
    bin_dir().join("correo")
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim().to_string())
}

/// GET /metrics over plain HTTP.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn journey(args: &[String]) -> String {
    let out = Command::new(correo_bin())
        .arg("journey")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "correo journey {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn correo_journey_shows_every_hop_across_two_domains() {
    correo_bin();
    let mut org_b = Org::start(OrgOptions::new("another.test")).unwrap();
    let dns = Dns::start(&[
        Zone::with_mx("another.test", org_b.ip),
        Zone::raw("example.test", ""),
    ])
    .unwrap();
    let mut a_options = OrgOptions::new("example.test");
    a_options.dns = Some(dns.addr);
    let mut org_a = Org::start(a_options).unwrap();

    // Operator side on: the MSA's gRPC listener (health, reflection,
    // Journey) and /metrics on MSA A and MTA B.
    append(
        &org_a.path("msa.toml"),
        &format!(
            "[grpc]\nlisten = \"{ip}:{MSA_GRPC_PORT}\"\n[metrics]\nlisten = \"{ip}:{METRICS_PORT}\"\n",
            ip = org_a.ip
        ),
    );
    org_a
        .start_role(
            "msa",
            &[
                SUBMISSION_PORT,
                SUBMISSIONS_PORT,
                MSA_GRPC_PORT,
                METRICS_PORT,
            ],
        )
        .unwrap();
    append(
        &org_b.path("mta.toml"),
        &format!("[metrics]\nlisten = \"{}:{METRICS_PORT}\"\n", org_b.ip),
    );
    org_b
        .start_role(
            "mta",
            &[
                correo_tests::MTA_GRPC_PORT,
                correo_tests::SMTP_PORT,
                METRICS_PORT,
            ],
        )
        .unwrap();

    org_a
        .run_mua(
            "alice",
            &[
                "send",
                "--to",
                "bob@another.test",
                "--subject",
                "Watch me travel",
                "--body",
                "Hop by hop.",
            ],
        )
        .unwrap();
    let mail = org_b.wait_for_mail("bob", 1, WAIT).unwrap();
    let message = &mail[0];
    let journey_id =
        header(message, "X-Correo-Journey").expect("X-Correo-Journey on the delivered message");
    let message_id = header(message, "Message-ID").expect("Message-ID");

    let configs: Vec<String> = [
        org_a.path("msa.toml"),
        org_a.path("mta.toml"),
        org_a.path("mda.toml"),
        org_b.path("mta.toml"),
        org_b.path("mda.toml"),
    ]
    .iter()
    .flat_map(|p| ["--config".to_string(), p.display().to_string()])
    .collect();

    // The MDA records "stored" after the MTA hears DELIVERED: wait for it.
    let mut args = vec![journey_id.clone()];
    args.extend(configs.iter().cloned());
    let out = wait_until(WAIT, || {
        let out = journey(&args);
        let delivered = out.lines().filter(|l| l.contains(" delivered ")).count();
        (out.contains(" stored ") && delivered >= 2).then_some(out)
    })
    .unwrap_or_else(|| panic!("no `stored` event and two `delivered`:\n{}", journey(&args)));
    println!("{out}");

    let lines: Vec<&str> = out.lines().collect();
    let event = |role: &str, node: &str, kind: &str| {
        lines
            .iter()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.windows(3).any(|w| w == [role, node, kind])
            })
            .unwrap_or_else(|| panic!("no `{role} {node} {kind}` event:\n{out}"))
            .to_string()
    };
    let submitted = event("msa", "msa.example.test", "submitted");
    assert!(
        submitted.contains("TLS TLSv1"),
        "submission over STARTTLS: {submitted}"
    );
    event("mta", "mta-example.test", "queued");
    let mx = event("mta", "mta-example.test", "mx");
    assert!(mx.contains("mx.another.test"), "{mx}");
    let connected = event("mta", "mta-example.test", "connected");
    assert!(
        connected.contains("mx.another.test") && connected.contains("TLS TLSv1"),
        "TLS on the MX hop: {connected}"
    );
    let delivered_a = event("mta", "mta-example.test", "delivered");
    assert!(
        delivered_a.contains("attempt=1"),
        "first attempt: {delivered_a}"
    );
    let queued_b = event("mta", "mta-another.test", "queued");
    assert!(
        queued_b.contains("TLS TLSv1"),
        "MTA B received over STARTTLS: {queued_b}"
    );
    event("mta", "mta-another.test", "delivered");
    let stored = event("mda", "mda.another.test", "stored");
    assert!(stored.contains("bob@another.test"), "{stored}");
    // The hops from the Received: fields: MSA, MTA A (gRPC), MTA B (SMTP with TLS).
    assert!(out.contains("msa.example.test received from"), "{out}");
    assert!(out.contains("mx.example.test received from msa"), "{out}");
    let mx_hop = lines
        .iter()
        .find(|l| l.contains("mx.another.test received from mx.example.test"))
        .unwrap_or_else(|| panic!("no MX hop:\n{out}"));
    assert!(mx_hop.contains("(TLS)"), "{mx_hop}");
    assert!(!out.contains("warning:"), "every role answered: {out}");

    // The same journey by Message-ID (known to the MSA only).
    let mut by_message_id = vec![message_id.clone()];
    by_message_id.extend(configs.iter().cloned());
    let out = journey(&by_message_id);
    assert!(out.contains(&journey_id), "{out}");
    assert!(out.contains(" stored "), "{out}");
    let json = journey(&[by_message_id, vec!["--json".into()]].concat());
    assert!(json.contains("\"kind\": \"connected\""), "{json}");

    // The MSA's own gRPC listener answers the standard health check (mutual TLS).
    let certs = org_a.path("certs");
    let probe = Command::new(correo_bin())
        .args([
            "probe",
            "grpc",
            &format!("https://{}:{MSA_GRPC_PORT}", org_a.ip),
        ])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("mta.pem"))
        .arg("--key")
        .arg(certs.join("mta.key"))
        .args(["--server-name", "msa"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "MSA health: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // Bob sees the hops of his own message, without any certificate.
    let id = org_b.maildir_new("bob")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split(":2,")
        .next()
        .unwrap()
        .to_string();
    let mine = org_b.run_mua("bob", &["journey", &id]).unwrap();
    assert!(
        mine.contains("mx.another.test received from mx.example.test"),
        "{mine}"
    );
    assert!(mine.contains("with ESMTPS (TLS)"), "{mine}");
    assert!(mine.contains(&journey_id), "{mine}");

    // Metrics counted the trip.
    let msa = scrape(org_a.addr(METRICS_PORT));
    assert!(
        msa.contains("correo_smtp_messages_total{result=\"accepted\"} 1"),
        "{msa}"
    );
    assert!(msa.contains("correo_build_info{role=\"msa\""), "{msa}");
    let mta_b = scrape(org_b.addr(METRICS_PORT));
    assert!(
        mta_b.contains("correo_mta_messages_queued_total{source=\"smtp\"} 1"),
        "{mta_b}"
    );
    assert!(
        mta_b.contains("correo_smtp_replies_total{code=\"220\"}"),
        "{mta_b}"
    );
    assert!(
        mta_b.contains("correo_mta_delivery_attempts_total{result=\"delivered\"} 1"),
        "{mta_b}"
    );
    assert!(
        mta_b.contains("correo_mta_delivery_duration_seconds_count 1"),
        "{mta_b}"
    );
}
