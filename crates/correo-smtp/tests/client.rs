//! The outbound client against our own server over real loopback TCP, and
//! against a scripted server for the HELO / no-PIPELINING paths.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Pki, TestHandler};
use correo_smtp::client::{ClientConfig, ClientError, Connection};
use correo_smtp::server::{ServerConfig, TlsMode, serve};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Our server on 127.0.0.1:random; returns its address and the handler.
async fn server(config: ServerConfig) -> (SocketAddr, TestHandler) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = TestHandler::default();
    let config = Arc::new(config);
    let h = handler.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (config, h) = (config.clone(), h.clone());
            tokio::spawn(serve(stream, peer, addr, config, h, std::future::pending()));
        }
    });
    (addr, handler)
}

fn client_config(starttls: bool) -> ClientConfig {
    ClientConfig {
        helo_name: "relay.example.org".into(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(10),
        starttls,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn round_trip_with_starttls_and_pipelining() {
    let pki = Pki::new();
    let mut config = ServerConfig::new("mx.example.test");
    config.tls = Some(pki.server_config());
    config.tls_mode = TlsMode::StartTls;
    let (addr, handler) = server(config).await;

    let mut conn = Connection::connect(addr, "localhost", &client_config(true))
        .await
        .unwrap();
    assert!(
        conn.tls().unwrap().starts_with("TLSv1.3:"),
        "{:?}",
        conn.tls()
    );
    assert!(conn.supports("pipelining"));
    assert!(!conn.supports("STARTTLS"));
    assert_eq!(conn.remote(), addr);

    // Bare LF, a lone dot line and leading dots must survive intact and
    // never end the data early.
    let message = b"Subject: t\n\n.\n..two\r\n.leading\rend \xc3\xa9";
    let outcomes = conn
        .send(
            "sender@example.org",
            &strings(&[
                "bob@example.test",
                "unknown@example.test",
                "carol@example.test",
                "bad address",
            ]),
            message,
        )
        .await
        .unwrap();
    let codes: Vec<u16> = outcomes.iter().map(|o| o.reply.code).collect();
    assert_eq!(codes, vec![250, 550, 250, 553]);
    assert_eq!(outcomes[1].recipient, "unknown@example.test");
    assert_eq!(outcomes[1].reply.enhanced.as_deref(), Some("5.1.1"));
    assert_eq!(outcomes[0].reply.text(), "queued as 1");

    // MAIL refused: the whole transaction fails, permanently.
    let err = conn
        .send("blocked@example.org", &strings(&["bob@example.test"]), b"x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Rejected(r) if r.code == 550),
        "{err:?}"
    );
    assert!(err.is_permanent());

    // All recipients refused: outcomes, no message.
    let outcomes = conn
        .send("", &strings(&["unknown@example.test"]), b"x")
        .await
        .unwrap();
    assert_eq!(outcomes[0].reply.code, 550);

    // The connection is still in step for another message.
    let outcomes = conn
        .send("", &strings(&["dave@example.test"]), b"bounce\r\n")
        .await
        .unwrap();
    assert_eq!(outcomes[0].reply.code, 250);
    conn.quit().await;

    let messages = handler.messages.lock().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].recipients,
        vec!["bob@example.test", "carol@example.test"]
    );
    assert_eq!(
        messages[0].message,
        b"Subject: t\r\n\r\n.\r\n..two\r\n.leading\r\nend \xc3\xa9\r\n".to_vec()
    );
    assert!(messages[0].envelope.body_8bit);
    assert_eq!(messages[0].envelope.size_hint, Some(message.len()));
    assert!(messages[0].info.tls.is_some());
    assert_eq!(messages[0].info.helo.as_deref(), Some("relay.example.org"));
    assert_eq!(messages[1].sender, "");
}

#[tokio::test]
async fn plaintext_when_starttls_disabled_or_not_offered() {
    let pki = Pki::new();
    let mut config = ServerConfig::new("mx.example.test");
    config.tls = Some(pki.server_config());
    config.tls_mode = TlsMode::StartTls;
    let (addr, _) = server(config).await;
    let conn = Connection::connect(addr, "localhost", &client_config(false))
        .await
        .unwrap();
    assert_eq!(conn.tls(), None);
    assert!(conn.supports("STARTTLS"));
    conn.quit().await;

    let (addr, handler) = server(ServerConfig::new("mx.example.test")).await;
    let mut conn = Connection::connect(addr, "localhost", &client_config(true))
        .await
        .unwrap();
    assert_eq!(conn.tls(), None);
    let outcomes = conn
        .send("a@example.org", &strings(&["b@example.test"]), b"hello")
        .await
        .unwrap();
    assert_eq!(outcomes[0].reply.code, 250);
    conn.quit().await;
    assert_eq!(handler.messages.lock().unwrap()[0].message, b"hello\r\n");
}

#[tokio::test]
async fn connect_errors() {
    // Nothing listening.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Connection::connect(addr, "localhost", &client_config(true))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    assert!(!err.is_permanent());

    // A server that greets with 554.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"554 5.7.1 go away\r\n").await.unwrap();
        let mut buf = [0u8; 100];
        let _ = s.read(&mut buf).await;
    });
    let err = Connection::connect(addr, "localhost", &client_config(true))
        .await
        .err()
        .unwrap();
    assert!(err.is_permanent(), "{err:?}");

    // A server that never greets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (_s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut config = client_config(true);
    config.command_timeout = Duration::from_millis(200);
    let err = Connection::connect(addr, "localhost", &config)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Timeout("greeting")), "{err:?}");
}

/// An old-fashioned server: no EHLO, no PIPELINING. Records what it got.
#[tokio::test]
async fn helo_fallback_without_pipelining() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut seen = Vec::new();
        w.write_all(b"220 old.example ready\r\n").await.unwrap();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            seen.push(line.clone());
            let reply: &[u8] = match line.split_whitespace().next().unwrap_or("") {
                "EHLO" => b"502 unknown command\r\n",
                "HELO" => b"250 old.example\r\n",
                "MAIL" => b"250 ok\r\n",
                "RCPT" if line.contains("nobody") => b"550 no\r\n",
                "RCPT" => b"250 ok\r\n",
                "DATA" => {
                    w.write_all(b"354 go\r\n").await.unwrap();
                    let mut body = Vec::new();
                    while !body.ends_with(b"\r\n.\r\n") {
                        let mut chunk = Vec::new();
                        r.read_until(b'\n', &mut chunk).await.unwrap();
                        body.extend_from_slice(&chunk);
                    }
                    seen.push(String::from_utf8(body).unwrap());
                    b"250 accepted\r\n"
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                }
                _ => b"500 what\r\n",
            };
            w.write_all(reply).await.unwrap();
        }
        seen
    });
    let mut conn = Connection::connect(addr, "old.example", &client_config(true))
        .await
        .unwrap();
    assert!(!conn.supports("PIPELINING"));
    let outcomes = conn
        .send(
            "a@example.org",
            &strings(&["nobody@old.example", "x@old.example"]),
            b"..hi\n",
        )
        .await
        .unwrap();
    assert_eq!(outcomes[0].reply.code, 550);
    assert_eq!(outcomes[1].reply.code, 250);
    assert_eq!(outcomes[1].reply.text(), "accepted");
    conn.quit().await;
    let seen = script.await.unwrap();
    assert_eq!(
        seen,
        vec![
            "EHLO relay.example.org\r\n",
            "HELO relay.example.org\r\n",
            "MAIL FROM:<a@example.org>\r\n",
            "RCPT TO:<nobody@old.example>\r\n",
            "RCPT TO:<x@old.example>\r\n",
            "DATA\r\n",
            "...hi\r\n.\r\n",
            "QUIT\r\n",
        ]
    );
}

/// A server that appends a forged reply to its STARTTLS 220 (in plaintext):
/// the client must drop it rather than read it as the first TLS reply.
#[tokio::test]
async fn starttls_reply_injection_is_discarded() {
    let pki = Pki::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 evil ESMTP\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await.unwrap(); // EHLO
        s.write_all(b"250-evil\r\n250 STARTTLS\r\n").await.unwrap();
        let _ = s.read(&mut buf).await.unwrap(); // STARTTLS
        s.write_all(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
            .await
            .unwrap();
        let tls = acceptor.accept(s).await;
        let Ok(tls) = tls else { return };
        let (r, mut w) = tokio::io::split(tls);
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("EHLO"), "{line:?}");
        w.write_all(b"250-real\r\n250 SIZE 1000\r\n").await.unwrap();
        w.flush().await.unwrap();
        let _ = r.read_line(&mut line).await;
    });
    let conn = Connection::connect(addr, "localhost", &client_config(true))
        .await
        .unwrap();
    assert!(conn.tls().is_some());
    assert!(conn.supports("SIZE"));
    assert!(!conn.supports("AUTH"));
}
