//! The `mta` binary: serving until SIGTERM (exit 0) and the `queue`
//! commands as clients of a running node.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path) -> (std::path::PathBuf, u16, u16) {
    let certs = dir.join("certs");
    correo_runtime::tls::install_crypto_provider();
    correo_runtime::pki::ensure_ca(&certs).unwrap();
    correo_runtime::pki::ensure_leaf(&certs, "mta", &["mta", "localhost", "127.0.0.1"]).unwrap();
    let (smtp, grpc) = (free_port(), free_port());
    let text = format!(
        r#"
hostname = "mx.example.test"
data_dir = "{data}"
local_domains = ["example.test"]
[smtp]
listen = ["127.0.0.1:{smtp}"]
[grpc]
listen = "127.0.0.1:{grpc}"
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/mta.pem"
key = "{certs}/mta.key"
[mda]
endpoint = "https://127.0.0.1:9"
[dns]
nameservers = ["127.0.0.1:9"]
"#,
        data = dir.join("data").display(),
        certs = certs.display(),
    );
    let path = dir.join("mta.toml");
    std::fs::write(&path, text).unwrap();
    (path, smtp, grpc)
}

fn mta() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mta"));
    command.env_remove("CORREO_LOG").env_remove("RUST_LOG");
    command
}

fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("port {port} never opened");
}

#[test]
fn serves_answers_queue_commands_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (config, smtp, grpc) = write_config(dir.path());
    let mut child = mta()
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(smtp);
    wait_for_port(grpc);

    let out = mta()
        .arg("--config")
        .arg(&config)
        .args(["queue", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "queue is empty"
    );

    let out = mta()
        .arg("--config")
        .arg(&config)
        .args(["queue", "show", "0123456789abcdef"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0123456789abcdef") && stderr.contains("not found"),
        "{stderr}"
    );

    let out = mta()
        .arg("--config")
        .arg(&config)
        .args(["queue", "summary"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("DOMAIN"));

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    panic!("mta did not stop within 5 s of SIGTERM");
}

#[test]
fn bad_config_names_the_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = write_config(dir.path());
    let out = mta()
        .arg("--config")
        .arg(&config)
        .env("CORREO_MTA__RETRY__FIRST", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retry.first"), "{stderr}");
}
