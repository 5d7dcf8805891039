//! Interop with a client nobody here wrote: Python's smtplib, over real
//! loopback TCP, with STARTTLS (verifying our test CA) and AUTH.

mod common;

use std::sync::Arc;

use common::{Pki, TestHandler};
use correo_smtp::server::{AuthMechanism, BareLineEndings, ServerConfig, TlsMode, serve};
use tokio::net::TcpListener;

const SCRIPT: &str = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.example", timeout=10)
s.ehlo()
assert s.has_extn("starttls"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo()
assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
try:
    s.login("alice", "wrong")
    sys.exit("bad password accepted")
except smtplib.SMTPAuthenticationError:
    pass
s.user, s.password = "alice", "secret"
code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
assert code == 235, code
refused = s.sendmail("alice@example.test", ["bob@example.test", "unknown@example.test"],
                     b"Subject: py\n\n.\nline two\n..dots\n")
assert list(refused) == ["unknown@example.test"], refused
s.quit()
print("python-ok")
"#;

#[tokio::test]
async fn python_smtplib_starttls_auth_send() {
    let pki = Pki::new();
    let mut config = ServerConfig::new("localhost");
    config.tls = Some(pki.server_config());
    config.tls_mode = TlsMode::StartTls;
    config.auth_mechanisms = vec![AuthMechanism::Plain, AuthMechanism::Login];
    config.require_auth = true;
    config.bare_line_endings = BareLineEndings::Normalize;
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = TestHandler::default();
    let h = handler.clone();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        serve(stream, peer, addr, config, h, std::future::pending()).await
    });

    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(addr.port().to_string())
        .arg(pki.dir.path().join("ca.pem"))
        .output()
        .await
        .expect("python3 is required for this interop test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("python-ok"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    server.await.unwrap().unwrap();

    let messages = handler.messages.lock().unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.recipients, vec!["bob@example.test"]);
    assert_eq!(
        m.message, // smtplib stuffs dots after bare LF and then adds its own CRLF.
        b"Subject: py\r\n\r\n.\r\nline two\r\n..dots\r\n\r\n"
    );
    assert_eq!(m.info.authenticated.as_deref(), Some("alice@example.test"));
    assert_eq!(m.info.helo.as_deref(), Some("py.example"));
    assert!(m.info.tls.is_some());
}
