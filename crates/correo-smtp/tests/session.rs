//! Session tests: the server driver over an in-memory duplex stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Pki, RawClient, TestHandler};
use correo_smtp::server::{AuthMechanism, BareLineEndings, ServerConfig, TlsMode, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    client: RawClient,
    handler: TestHandler,
    task: JoinHandle<std::io::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

fn start(config: ServerConfig) -> Running {
    let (client, server) = tokio::io::duplex(1 << 20);
    let handler = TestHandler::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let peer = "192.0.2.9:40000".parse().unwrap();
    let local = "192.0.2.1:25".parse().unwrap();
    let shutdown = async move {
        let _ = stopped.await;
    };
    // tokio::spawn also proves the session future is Send.
    let task = tokio::spawn(serve(
        server,
        peer,
        local,
        Arc::new(config),
        handler.clone(),
        shutdown,
    ));
    Running {
        client: RawClient::new(client),
        handler,
        task,
        stop: Some(stop),
    }
}

fn config() -> ServerConfig {
    ServerConfig::new("mx.example.test")
}

async fn greet(r: &mut Running) {
    r.client
        .expect("220 mx.example.test ESMTP Correo\r\n")
        .await;
    r.client
        .cmd("EHLO client.example", "250-mx.example.test")
        .await;
}

#[tokio::test]
async fn full_transaction_and_second_transaction() {
    let mut r = start(config());
    r.client
        .expect("220 mx.example.test ESMTP Correo\r\n")
        .await;
    let ehlo = r.client.cmd("EHLO client.example", "250-").await;
    assert_eq!(
        ehlo,
        "250-mx.example.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
    r.client
        .cmd(
            "MAIL FROM:<Alice@Example.TEST> SIZE=100 BODY=8BITMIME",
            "250 2.1.0",
        )
        .await;
    r.client
        .cmd("RCPT TO:<bob@example.test>", "250 2.1.5")
        .await;
    r.client
        .cmd("RCPT TO:<unknown@example.test>", "550 5.1.1 no such user")
        .await;
    r.client
        .cmd("RCPT TO:<carol@example.test>", "250 2.1.5")
        .await;
    r.client.cmd("DATA", "354 ").await;
    r.client
        .send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n")
        .await;
    r.client.expect("250 2.0.0 queued as 1").await;
    // Second transaction on the same session.
    r.client.cmd("MAIL FROM:<>", "250").await;
    r.client.cmd("RCPT TO:<Postmaster>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"x\r\n.\r\n").await;
    r.client.expect("250 2.0.0 queued as 2").await;
    r.client.cmd("QUIT", "221 2.0.0").await;
    assert!(r.client.is_closed().await);
    r.task.await.unwrap().unwrap();

    let messages = r.handler.messages.lock().unwrap();
    assert_eq!(messages.len(), 2);
    let m = &messages[0];
    assert_eq!(m.sender, "Alice@example.test");
    assert_eq!(m.recipients, vec!["bob@example.test", "carol@example.test"]);
    assert_eq!(m.message, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!(m.envelope.size_hint, Some(100));
    assert!(m.envelope.body_8bit);
    assert_eq!(m.info.helo.as_deref(), Some("client.example"));
    assert!(m.info.esmtp);
    assert_eq!(m.info.tls, None);
    assert_eq!(m.info.peer.to_string(), "192.0.2.9:40000");
    assert_eq!(messages[1].sender, "");
    assert_eq!(messages[1].recipients, vec!["postmaster@mx.example.test"]);
}

#[tokio::test]
async fn pipelined_transaction() {
    let mut r = start(config());
    r.client.send(b"EHLO client.example\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<unknown@example.test>\r\nDATA\r\n").await;
    r.client.expect("220 ").await;
    r.client.expect("250-mx.example.test").await;
    r.client.expect("250 2.1.0").await;
    r.client.expect("250 2.1.5").await;
    r.client.expect("550 5.1.1").await;
    r.client.expect("354").await;
    r.client
        .send(b"hello\r\n.\r\nMAIL FROM:<c@example.test>\r\nRCPT TO:<d@example.test>\r\nDATA\r\n")
        .await;
    r.client.expect("250 2.0.0 queued as 1").await;
    r.client.expect("250 2.1.0").await;
    r.client.expect("250 2.1.5").await;
    r.client.expect("354").await;
    r.client.send(b"second\r\n.\r\nQUIT\r\n").await;
    r.client.expect("250 2.0.0 queued as 2").await;
    r.client.expect("221").await;
    r.task.await.unwrap().unwrap();
    let messages = r.handler.messages.lock().unwrap();
    assert_eq!(messages[0].message, b"hello\r\n");
    assert_eq!(messages[1].message, b"second\r\n");
}

#[tokio::test]
async fn command_order_and_syntax() {
    let mut c = config();
    c.max_errors = 100;
    let mut r = start(c);
    r.client.expect("220").await;
    r.client
        .cmd("MAIL FROM:<a@example.test>", "503 5.5.1")
        .await;
    r.client.cmd("NOOP", "250 2.0.0").await;
    r.client.cmd("VRFY bob", "252 2.5.0").await;
    r.client.cmd("HELP", "214").await;
    r.client.cmd("RSET", "250 2.0.0").await;
    r.client.cmd("EHLO client.example", "250-").await;
    r.client.cmd("RCPT TO:<b@example.test>", "503 5.5.1").await;
    r.client.cmd("DATA", "503 5.5.1").await;
    r.client.cmd("MAIL FROM:<a@example.test", "501").await;
    r.client
        .cmd("MAIL FROM:<a@example.test> SIZE=x", "501 5.5.4")
        .await;
    r.client
        .cmd(
            "MAIL FROM:<blocked@example.test>",
            "550 5.7.1 sender blocked",
        )
        .await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client
        .cmd("MAIL FROM:<a@example.test>", "503 5.5.1")
        .await;
    r.client.cmd("DATA", "554 5.5.1").await;
    r.client
        .cmd("RCPT TO:<@relay.test:b@example.test>", "501 5.1.3")
        .await;
    r.client.cmd("FOO", "500 5.5.2").await;
    r.client.cmd("RSET", "250").await;
    r.client.cmd("DATA", "503 5.5.1").await;
    r.client.cmd("EXPN staff", "502 5.5.1").await;
    r.client.cmd("AUTH PLAIN AGEAYg==", "502 5.5.1").await;
    r.client.cmd("STARTTLS", "502 5.5.1").await;
    r.client.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn helo_session_refuses_esmtp_parameters() {
    let mut r = start(config());
    r.client.expect("220").await;
    r.client
        .cmd("HELO client.example", "250 mx.example.test\r\n")
        .await;
    r.client
        .cmd("MAIL FROM:<a@example.test> SIZE=10", "555 5.5.4")
        .await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"x\r\n.\r\n").await;
    r.client.expect("250").await;
    assert!(!r.handler.messages.lock().unwrap()[0].info.esmtp);
}

#[tokio::test]
async fn too_many_errors_closes() {
    let mut c = config();
    c.max_errors = 3;
    let mut r = start(c);
    r.client.expect("220").await;
    r.client.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n").await;
    r.client.expect("500").await;
    r.client.expect("500").await;
    r.client.expect("500").await;
    r.client.expect("421 4.7.0").await;
    assert!(r.client.is_closed().await);
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn recipient_and_size_limits() {
    let mut c = config();
    c.max_recipients = 2;
    c.max_message_size = 100;
    let mut r = start(c);
    greet(&mut r).await;
    r.client
        .cmd("MAIL FROM:<a@example.test> SIZE=101", "552 5.3.4")
        .await;
    r.client
        .cmd("MAIL FROM:<a@example.test> SIZE=100", "250")
        .await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("RCPT TO:<c@example.test>", "250").await;
    r.client.cmd("RCPT TO:<d@example.test>", "452 4.5.3").await;
    r.client.cmd("DATA", "354").await;
    let big = format!("{}\r\n.\r\n", "x".repeat(500));
    r.client.send(big.as_bytes()).await;
    r.client.expect("552 5.3.4").await;
    // In sync after the refused message, and the transaction is over.
    r.client.cmd("RCPT TO:<b@example.test>", "503").await;
    r.client.cmd("NOOP", "250").await;
    assert!(r.handler.messages.lock().unwrap().is_empty());
}

#[tokio::test]
async fn overlong_command_line_is_never_executed() {
    let mut r = start(config());
    greet(&mut r).await;
    let long = format!("NOOP {}QUIT\r\n", "a".repeat(600));
    r.client.send(long.as_bytes()).await;
    r.client.expect("500 5.5.2 line too long").await;
    r.client.cmd("NOOP", "250").await;
    r.client.send(b"NO\0OP\r\n").await;
    r.client.expect("500 5.5.2").await;
    r.client.send(b"NOOP \xff\r\n").await;
    r.client.expect("500 5.5.2").await;
    r.client.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn overlong_data_line_is_refused() {
    let mut r = start(config());
    greet(&mut r).await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client
        .send(format!("{}\r\n.\r\n", "y".repeat(1200)).as_bytes())
        .await;
    r.client.expect("550 5.5.2 line too long").await;
    r.client.cmd("NOOP", "250").await;
}

async fn smuggle(bare: BareLineEndings, sequence: &[u8]) -> (Running, Vec<String>) {
    let mut c = config();
    c.bare_line_endings = bare;
    let mut r = start(c);
    greet(&mut r).await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    let mut body = b"Subject: one\r\n\r\nfirst".to_vec();
    body.extend_from_slice(sequence);
    body.extend_from_slice(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n");
    r.client.send(&body).await;
    let mut replies = Vec::new();
    while let Some(reply) = r.client.reply().await {
        replies.push(reply);
    }
    (r, replies)
}

#[tokio::test]
async fn smuggling_is_one_message_or_refused() {
    for sequence in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\n", b"\r.\r", b"\r.\r\n"] {
        let (r, replies) = smuggle(BareLineEndings::Reject, sequence).await;
        assert_eq!(replies.len(), 2, "{sequence:?}: {replies:?}");
        assert!(
            replies[0].starts_with("550 5.5.2 bare CR or LF not allowed"),
            "{replies:?}"
        );
        assert!(replies[1].starts_with("221"));
        assert!(r.handler.messages.lock().unwrap().is_empty());
        assert_eq!(
            r.handler.mails.lock().unwrap().len(),
            1,
            "smuggled MAIL executed"
        );

        let (r, replies) = smuggle(BareLineEndings::Normalize, sequence).await;
        assert_eq!(replies.len(), 2, "{sequence:?}: {replies:?}");
        assert!(replies[0].starts_with("250 2.0.0 queued as 1"));
        let messages = r.handler.messages.lock().unwrap();
        assert_eq!(messages.len(), 1);
        let text = String::from_utf8_lossy(&messages[0].message).into_owned();
        assert!(
            text.contains("MAIL FROM:<evil@attacker.test>\r\n"),
            "{text:?}"
        );
        assert_eq!(
            r.handler.mails.lock().unwrap().len(),
            1,
            "smuggled MAIL executed"
        );
    }
    // NUL before the dot: not an end either, and not a bare line ending.
    let (r, replies) = smuggle(BareLineEndings::Reject, b"\r\n\x00.\r\n").await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].starts_with("250"));
    assert_eq!(r.handler.messages.lock().unwrap().len(), 1);
    assert_eq!(r.handler.mails.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn handler_data_error_is_the_reply() {
    let mut r = start(config());
    greet(&mut r).await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"TEMPFAIL!\r\n.\r\n").await;
    r.client.expect("451 4.3.0 try later").await;
}

#[tokio::test]
async fn command_timeout() {
    let mut c = config();
    c.command_timeout = Duration::from_millis(200);
    let mut r = start(c);
    r.client.expect("220").await;
    r.client.expect("421 4.4.2").await;
    assert!(r.client.is_closed().await);
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn data_timeout() {
    let mut c = config();
    c.data_timeout = Duration::from_millis(200);
    let mut r = start(c);
    greet(&mut r).await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"partial").await;
    r.client.expect("421 4.4.2").await;
    assert!(r.client.is_closed().await);
}

#[tokio::test]
async fn shutdown_says_goodbye() {
    let mut r = start(config());
    greet(&mut r).await;
    r.stop.take().unwrap().send(()).unwrap();
    r.client.expect("421 4.3.2").await;
    assert!(r.client.is_closed().await);
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_disconnect_ends_session() {
    let r = start(config());
    drop(r.client);
    r.task.await.unwrap().unwrap();
}

fn tls_config(pki: &Pki, mode: TlsMode) -> ServerConfig {
    let mut c = config();
    c.tls = Some(pki.server_config());
    c.tls_mode = mode;
    c.auth_mechanisms = vec![AuthMechanism::Plain, AuthMechanism::Login];
    c
}

/// Greeting, EHLO, STARTTLS; returns the client inside TLS (before EHLO).
async fn starttls(pki: &Pki, r: &mut Running) {
    r.client.expect("220").await;
    let ehlo = r.client.cmd("EHLO client.example", "250-").await;
    assert!(
        ehlo.contains("250-STARTTLS\r\n") || ehlo.contains("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    r.client
        .cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "538 5.7.11")
        .await;
    // The pipelined MAIL arrives in plaintext and must be thrown away.
    r.client
        .send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
        .await;
    r.client.expect("220 2.0.0").await;
    let client = std::mem::replace(&mut r.client, RawClient::new(tokio::io::duplex(1).0));
    let tls = pki.connect(client.into_stream()).await;
    r.client = RawClient::new(tls);
}

#[tokio::test]
async fn starttls_resets_session_and_discards_injected_commands() {
    let pki = Pki::new();
    let mut r = start(tls_config(&pki, TlsMode::StartTls));
    starttls(&pki, &mut r).await;
    // State is back to before EHLO: the injected MAIL did not run.
    r.client
        .cmd("MAIL FROM:<a@example.test>", "503 5.5.1")
        .await;
    assert!(r.handler.mails.lock().unwrap().is_empty());
    let ehlo = r.client.cmd("EHLO client.example", "250-").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    r.client.cmd("STARTTLS", "503 5.5.1").await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"secret\r\n.\r\n").await;
    r.client.expect("250").await;
    r.client.cmd("QUIT", "221").await;
    let messages = r.handler.messages.lock().unwrap();
    let tls = messages[0].info.tls.clone().unwrap();
    assert!(tls.starts_with("TLSv1.3:TLS13_"), "{tls}");
    assert_eq!(
        correo_smtp::received::with_protocol(&messages[0].info),
        "ESMTPS"
    );
}

#[tokio::test]
async fn auth_plain_and_login() {
    let pki = Pki::new();
    let mut c = tls_config(&pki, TlsMode::StartTls);
    c.require_auth = true;
    let mut r = start(c);
    starttls(&pki, &mut r).await;
    r.client.cmd("EHLO client.example", "250-").await;
    r.client
        .cmd(
            "MAIL FROM:<a@example.test>",
            "530 5.7.0 authentication required",
        )
        .await;
    r.client.cmd("AUTH CRAM-MD5", "504 5.5.4").await;
    // Wrong password, PLAIN with initial response.
    let bad = B64.encode("\0alice\0wrong");
    r.client
        .cmd(&format!("AUTH PLAIN {bad}"), "535 5.7.8")
        .await;
    // PLAIN with a 334 challenge, cancelled.
    r.client.cmd("AUTH PLAIN", "334 \r\n").await;
    r.client.cmd("*", "501 5.0.0").await;
    // LOGIN, cancelled at the password.
    r.client.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    r.client.cmd(&B64.encode("alice"), "334 UGFzc3dvcmQ6").await;
    r.client.cmd("*", "501 5.0.0").await;
    // Bad base64.
    r.client.cmd("AUTH PLAIN", "334").await;
    r.client.cmd("!!!notbase64", "501 5.5.2").await;
    // LOGIN, successful.
    r.client.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    r.client.cmd(&B64.encode("alice"), "334 UGFzc3dvcmQ6").await;
    r.client.cmd(&B64.encode("secret"), "235 2.7.0").await;
    r.client
        .cmd(
            &format!("AUTH PLAIN {}", B64.encode("\0alice\0secret")),
            "503 5.5.1",
        )
        .await;
    r.client.cmd("MAIL FROM:<alice@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("DATA", "354").await;
    r.client.send(b"hi\r\n.\r\n").await;
    r.client.expect("250").await;
    {
        let messages = r.handler.messages.lock().unwrap();
        assert_eq!(
            messages[0].info.authenticated.as_deref(),
            Some("alice@example.test")
        );
        assert_eq!(
            correo_smtp::received::with_protocol(&messages[0].info),
            "ESMTPSA"
        );
    }
    r.client.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn auth_plain_with_challenge_succeeds() {
    let pki = Pki::new();
    let mut r = start(tls_config(&pki, TlsMode::StartTls));
    starttls(&pki, &mut r).await;
    r.client.cmd("AUTH PLAIN", "503 5.5.1").await; // before EHLO
    r.client.cmd("EHLO client.example", "250-").await;
    // RFC 4954: a response line may exceed the 512-octet command limit.
    r.client.cmd("AUTH PLAIN", "334 ").await;
    let long = B64.encode(format!("\0alice\0{}", "x".repeat(2000)));
    r.client.cmd(&long, "535 5.7.8").await;
    r.client.cmd("AUTH PLAIN", "334 ").await;
    r.client
        .cmd(&B64.encode("alice\0alice\0secret"), "235 2.7.0")
        .await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("AUTH LOGIN", "503 5.5.1").await;
}

#[tokio::test]
async fn implicit_tls() {
    let pki = Pki::new();
    let mut r = start(tls_config(&pki, TlsMode::Implicit));
    let client = std::mem::replace(&mut r.client, RawClient::new(tokio::io::duplex(1).0));
    r.client = RawClient::new(pki.connect(client.into_stream()).await);
    r.client.expect("220 mx.example.test ESMTP Correo").await;
    let ehlo = r.client.cmd("EHLO client.example", "250-").await;
    assert!(!ehlo.contains("STARTTLS"));
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    r.client.cmd("STARTTLS", "503 5.5.1").await;
    r.client
        .cmd(
            &format!("AUTH PLAIN {}", B64.encode("\0alice\0secret")),
            "235",
        )
        .await;
    r.client.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn tls_handshake_garbage_ends_session() {
    let pki = Pki::new();
    let mut r = start(tls_config(&pki, TlsMode::Implicit));
    r.client.send(b"EHLO this is not TLS\r\n").await;
    assert!(r.client.is_closed().await);
    assert!(r.task.await.unwrap().is_err());
}

/// Deterministic pseudo-random bytes; the session must survive them all.
#[tokio::test]
async fn never_panics_on_garbage() {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let alphabet: &[u8] = b"\r\n.:<>@ \0\xffMAILFROMRCPTTODATAEHLOAUTHPLAIN=SIZEBODY8BITMIME\"\\";
    for round in 0..40 {
        let mut c = config();
        c.max_errors = 1000;
        c.command_timeout = Duration::from_millis(300);
        let mut r = start(c);
        let mut input = b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n".to_vec();
        if round % 2 == 0 {
            input.extend_from_slice(b"DATA\r\n");
        }
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        r.client.send(&input).await;
        drop(r.client);
        // A clean return or an I/O error, never a panic.
        let _ = r.task.await.expect("session panicked");
    }
}

#[tokio::test]
async fn huge_size_parameter_is_too_big_not_wrapped() {
    let mut r = start(config());
    greet(&mut r).await;
    r.client
        .cmd(
            "MAIL FROM:<a@example.test> SIZE=999999999999999999999999999",
            "552 5.3.4",
        )
        .await;
    r.client
        .cmd(
            "MAIL FROM:<a@example.test> SIZE=18446744073709551616",
            "552 5.3.4",
        )
        .await;
}

#[tokio::test]
async fn ehlo_and_rset_reset_the_transaction() {
    let mut r = start(config());
    greet(&mut r).await;
    let resets_after_greet = *r.handler.resets.lock().unwrap();
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "250").await;
    r.client.cmd("EHLO again.example", "250-").await;
    r.client.cmd("DATA", "503 5.5.1").await;
    r.client.cmd("MAIL FROM:<a@example.test>", "250").await;
    r.client.cmd("RSET", "250").await;
    r.client.cmd("RCPT TO:<b@example.test>", "503 5.5.1").await;
    assert_eq!(*r.handler.resets.lock().unwrap(), resets_after_greet + 2);
}

/// RFC 2920: the replies to a pipelined group go out together, in order.
#[tokio::test]
async fn pipelined_replies_are_batched() {
    use tokio::io::AsyncReadExt;
    let mut r = start(config());
    greet(&mut r).await;
    r.client
        .send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut buf = vec![0u8; 4096];
    let n = r.client.stream.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let codes: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, vec!["250", "250", "250", "354"], "{text:?}");
}

#[tokio::test]
async fn early_talker_gets_554_and_no_session() {
    let mut c = config();
    c.greeting_delay = Duration::from_millis(200);
    let mut r = start(c);
    r.client.send(b"EHLO early.example\r\n").await;
    r.client
        .expect("554 5.5.1 mx.example.test protocol error")
        .await;
    assert!(r.client.is_closed().await);
    r.task.await.unwrap().unwrap();
    assert!(r.handler.mails.lock().unwrap().is_empty());
    // A patient client is served after the delay.
    let mut c = config();
    c.greeting_delay = Duration::from_millis(100);
    let mut r = start(c);
    let started = std::time::Instant::now();
    r.client.expect("220 mx.example.test").await;
    assert!(started.elapsed() >= Duration::from_millis(90));
    r.client.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn slow_drip_is_bounded_by_the_command_deadline() {
    let mut c = config();
    c.command_timeout = Duration::from_millis(400);
    let mut r = start(c);
    r.client.expect("220").await;
    let started = std::time::Instant::now();
    for b in b"NOOP xxxxxxxxxxxxxxxxxxxx" {
        use tokio::io::AsyncWriteExt;
        // The server hangs up mid-drip: stop at the first failed write.
        if r.client
            .stream
            .write_all(std::slice::from_ref(b))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_millis(600) {
            break;
        }
    }
    r.client.expect("421 4.4.2").await;
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn connection_limiter_refusal_is_421() {
    use correo_smtp::server::{ConnectionLimiter, refuse};
    let limiter = ConnectionLimiter::new(1, 1);
    let _held = limiter.try_acquire("192.0.2.9".parse().unwrap()).unwrap();
    let over = limiter
        .try_acquire("192.0.2.10".parse().unwrap())
        .unwrap_err();
    let (client, server) = tokio::io::duplex(4096);
    let config = config();
    let task =
        tokio::spawn(async move { refuse(server, &config, &over.reply("mx.example.test")).await });
    let mut client = common::RawClient::new(client);
    client
        .expect("421 4.7.0 mx.example.test too many connections")
        .await;
    assert!(client.is_closed().await);
    task.await.unwrap().unwrap();
}
