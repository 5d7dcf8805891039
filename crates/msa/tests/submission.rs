//! The MSA in-process against fake Directory and Queue gRPC servers (mutual
//! TLS with a throw-away CA), driven over real sockets by a small raw SMTP
//! client (exact replies) and by lettre (a client nobody here wrote).

use base64::Engine;
use correo_proto::directory::directory_server::{Directory, DirectoryServer};
use correo_proto::directory::{
    AuthenticateReply, AuthenticateRequest, CheckRecipientReply, CheckRecipientRequest,
    ListDomainsReply, ListDomainsRequest,
};
use correo_proto::queue::queue_server::{Queue, QueueServer};
use correo_proto::queue::{Envelope, SubmitChunk, SubmitReply, submit_chunk::Part};
use correo_runtime::tls::TlsFiles;
use correo_smtp::server::TlsMode;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------- fakes

struct FakeDirectory;

#[tonic::async_trait]
impl Directory for FakeDirectory {
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateReply>, Status> {
        let r = req.into_inner();
        let ok = r.username == "alice@example.test" && r.password == "secret";
        Ok(Response::new(AuthenticateReply {
            authenticated: ok,
            user: if ok { r.username } else { String::new() },
            addresses: if ok {
                vec!["alice@example.test".into(), "sales@example.test".into()]
            } else {
                vec![]
            },
        }))
    }
    async fn get_scram_credentials(
        &self,
        _: Request<correo_proto::directory::GetScramCredentialsRequest>,
    ) -> Result<Response<correo_proto::directory::GetScramCredentialsReply>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn check_recipient(
        &self,
        _: Request<CheckRecipientRequest>,
    ) -> Result<Response<CheckRecipientReply>, Status> {
        Err(Status::unimplemented("not used by the MSA"))
    }
    async fn list_domains(
        &self,
        _: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsReply>, Status> {
        Err(Status::unimplemented("not used by the MSA"))
    }
}

#[derive(Debug, Clone)]
struct Received {
    metadata_journey: String,
    envelope: Envelope,
    data: Vec<u8>,
    chunks: usize,
}

#[derive(Clone)]
struct FakeQueue {
    node: &'static str,
    fail: bool,
    got: Arc<Mutex<Vec<Received>>>,
}

impl FakeQueue {
    fn new(node: &'static str, fail: bool) -> Self {
        FakeQueue {
            node,
            fail,
            got: Arc::default(),
        }
    }
    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Queue for FakeQueue {
    async fn submit(
        &self,
        req: Request<tonic::Streaming<SubmitChunk>>,
    ) -> Result<Response<SubmitReply>, Status> {
        let metadata_journey = req
            .metadata()
            .get("x-correo-journey")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut stream = req.into_inner();
        let Some(SubmitChunk {
            part: Some(Part::Envelope(envelope)),
        }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("first chunk must be the envelope"));
        };
        let mut data = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(Part::Data(d)) => {
                    assert!(d.len() <= correo_proto::CHUNK_SIZE);
                    chunks += 1;
                    data.extend_from_slice(&d);
                }
                _ => return Err(Status::invalid_argument("envelope twice")),
            }
        }
        if self.fail {
            return Err(Status::unavailable("spool disk full"));
        }
        let mut got = self.got.lock().unwrap();
        got.push(Received {
            metadata_journey,
            envelope,
            data,
            chunks,
        });
        Ok(Response::new(SubmitReply {
            queue_id: format!("{:016x}", 0xa0 + got.len()),
            node: self.node.into(),
        }))
    }
}

// ---------------------------------------------------------------- setup

fn pki(dir: &Path) {
    correo_runtime::pki::ensure_ca(dir).unwrap();
    correo_runtime::pki::ensure_leaf(dir, "msa", &["msa", "localhost", "127.0.0.1"]).unwrap();
    correo_runtime::pki::ensure_leaf(dir, "mda", &["mda", "localhost", "127.0.0.1"]).unwrap();
    correo_runtime::pki::ensure_leaf(dir, "mta", &["mta", "localhost", "127.0.0.1", "::1"])
        .unwrap();
}

async fn grpc_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

async fn spawn_directory(certs: &Path) -> SocketAddr {
    let (l, addr) = grpc_listener().await;
    let tls = correo_runtime::tls::grpc_server_tls(&TlsFiles::in_dir(certs, "mda"), true).unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(DirectoryServer::new(FakeDirectory))
        .serve_with_incoming(TcpListenerStream::new(l));
    tokio::spawn(server);
    addr
}

async fn spawn_queue(certs: &Path, queue: FakeQueue) -> SocketAddr {
    let (l, addr) = grpc_listener().await;
    let tls = correo_runtime::tls::grpc_server_tls(&TlsFiles::in_dir(certs, "mta"), true).unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(QueueServer::new(queue))
        .serve_with_incoming(TcpListenerStream::new(l));
    tokio::spawn(server);
    addr
}

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let (l, a) = grpc_listener().await;
    drop(l);
    a
}

struct Msa {
    starttls: SocketAddr,
    implicit: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Msa {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn start_msa(certs: &Path, directory: SocketAddr, mtas: &[String]) -> Msa {
    let files = TlsFiles::in_dir(certs, "msa");
    let endpoints: Vec<String> = mtas.iter().map(|m| format!("{m:?}")).collect();
    let toml = format!(
        r#"
hostname = "msa.example.test"
[submission]
starttls_listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]
max_message_size = 1048576
shutdown_timeout = "3s"
[tls]
ca = {ca:?}
cert = {cert:?}
key = {key:?}
[directory]
endpoint = "https://{directory}"
server_name = "mda"
timeout = "3s"
[mta]
endpoints = [{endpoints}]
server_name = "mta"
refresh_interval = "1s"
connect_timeout = "2s"
"#,
        ca = files.ca,
        cert = files.cert,
        key = files.key,
        endpoints = endpoints.join(", "),
    );
    let path = certs.join("msa.toml");
    std::fs::write(&path, toml).unwrap();
    let config = msa::Config::load_with_env(Some(&path), Vec::new()).unwrap();
    let server = msa::Server::bind(&config).await.unwrap();
    let addrs = server.local_addrs();
    let find = |mode| addrs.iter().find(|(_, m)| *m == mode).unwrap().0;
    let (starttls, implicit) = (find(TlsMode::StartTls), find(TlsMode::Implicit));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Msa {
        starttls,
        implicit,
        stop: Some(tx),
        done,
    }
}

// ---------------------------------------------------------------- raw SMTP client

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Smtp {
    io: BufReader<Box<dyn Io>>,
}

fn tls_connector(certs: &Path) -> tokio_rustls::TlsConnector {
    let config = correo_runtime::tls::client_config_trusting(&certs.join("ca.pem")).unwrap();
    tokio_rustls::TlsConnector::from(config)
}

impl Smtp {
    async fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut c = Smtp {
            io: BufReader::new(Box::new(s)),
        };
        assert_eq!(c.reply().await.0, 220);
        c
    }

    async fn connect_tls(addr: SocketAddr, certs: &Path) -> Smtp {
        let s = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tls_connector(certs).connect(name, s).await.unwrap();
        let mut c = Smtp {
            io: BufReader::new(Box::new(tls)),
        };
        assert_eq!(c.reply().await.0, 220);
        c
    }

    /// `(code, "first line\nsecond line")` with the codes stripped.
    async fn reply(&mut self) -> (u16, String) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.io.read_line(&mut line))
                .await
                .expect("reply timeout")
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {lines:?}");
            let line = line.trim_end().to_string();
            let code: u16 = line[..3].parse().unwrap();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return (code, lines.join("\n"));
            }
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.io.get_mut().write_all(raw).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn starttls(mut self, certs: &Path) -> Smtp {
        assert_eq!(self.cmd("STARTTLS").await.0, 220);
        assert!(self.io.buffer().is_empty());
        let plain = self.io.into_inner();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tls_connector(certs).connect(name, plain).await.unwrap();
        Smtp {
            io: BufReader::new(Box::new(tls)),
        }
    }

    async fn auth_plain(&mut self, user: &str, pass: &str) -> (u16, String) {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }

    /// MAIL, RCPT, DATA with `message` (dot-stuffed here); the final reply.
    async fn transaction(&mut self, from: &str, rcpts: &[&str], message: &str) -> (u16, String) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.0 != 250 {
            return r;
        }
        for rcpt in rcpts {
            assert_eq!(self.cmd(&format!("RCPT TO:<{rcpt}>")).await.0, 250);
        }
        assert_eq!(self.cmd("DATA").await.0, 354);
        let mut wire = String::new();
        for line in message.split_inclusive('\n') {
            if line.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(line);
        }
        if !wire.ends_with('\n') {
            wire.push_str("\r\n");
        }
        wire.push_str(".\r\n");
        self.send(wire.as_bytes()).await;
        self.reply().await
    }
}

fn header_of(data: &[u8]) -> &str {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    std::str::from_utf8(&data[..end]).unwrap()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_submission_is_authenticated_validated_repaired_and_queued() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let queue = FakeQueue::new("mta-1", false);
    let mta = spawn_queue(certs, queue.clone()).await;
    let msa = start_msa(certs, directory, &[mta.to_string()]).await;

    let mut c = Smtp::connect(msa.starttls).await;
    let (code, ehlo) = c.cmd("EHLO client.example.test").await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    let mut c = c.starttls(certs).await;
    let (code, ehlo) = c.cmd("EHLO client.example.test").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("AUTH") && ehlo.contains("PLAIN") && ehlo.contains("LOGIN"),
        "{ehlo}"
    );

    // 530 before AUTH.
    let (code, text) = c.cmd("MAIL FROM:<alice@example.test>").await;
    assert_eq!(code, 530, "{text}");
    // Bad password.
    let (code, text) = c.auth_plain("alice@example.test", "wrong").await;
    assert_eq!((code, text.starts_with("5.7.8")), (535, true), "{text}");
    let (code, text) = c.auth_plain("alice@example.test", "secret").await;
    assert_eq!(code, 235, "{text}");

    // Envelope sender rights.
    let (code, text) = c.cmd("MAIL FROM:<mallory@example.test>").await;
    assert_eq!(
        (code, text.as_str()),
        (550, "5.7.1 sender address not owned by alice@example.test")
    );
    let (code, text) = c.cmd("MAIL FROM:<>").await;
    assert_eq!((code, &text[..5]), (550, "5.7.1"), "{text}");

    // A sloppy but repairable message: no Date, no Message-ID, unqualified To.
    let message = "From: Alice <alice@example.test>\r\nTo: bob, Carol <carol@other.test>\r\nBcc: dave@other.test\r\nSubject: hello\r\n\r\nline one\r\n.leading dot\r\nbare lf\nend\r\n";
    let (code, text) = c
        .transaction(
            "alice@example.test",
            &["bob@example.test", "carol@other.test"],
            message,
        )
        .await;
    assert_eq!(
        (code, text.as_str()),
        (250, "2.0.0 queued as 00000000000000a1")
    );

    let got = queue.received();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.envelope.sender, "alice@example.test");
    assert_eq!(
        g.envelope.recipients,
        ["bob@example.test", "carol@other.test"]
    );
    assert_eq!(g.envelope.authenticated_user, "alice@example.test");
    assert_eq!(g.envelope.size_hint, g.data.len() as u64);
    let journey = &g.envelope.journey_id;
    uuid::Uuid::parse_str(journey).unwrap();
    assert_eq!(&g.metadata_journey, journey);
    let head = header_of(&g.data);
    assert!(head.starts_with("Received: "), "{head}");
    assert!(head.contains("ESMTPSA"), "{head}");
    assert!(
        head.contains(&format!("\r\nX-Correo-Journey: {journey}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("\r\nTo: bob@example.test, Carol <carol@other.test>\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nDate: "), "{head}");
    assert!(
        !head.contains("Bcc:") && !head.contains("dave@"),
        "Bcc removed: {head}"
    );
    assert!(head.contains("@msa.example.test>\r\n"), "{head}");
    assert!(head.contains("\r\nMessage-ID: <"), "{head}");
    let body = &g.data[head.len()..];
    assert_eq!(body, b"line one\r\n.leading dot\r\nbare lf\r\nend\r\n");
    assert!(
        !g.data.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "CRLF everywhere"
    );

    // Refusals name what is wrong.
    let (code, text) = c
        .transaction(
            "alice@example.test",
            &["bob@example.test"],
            "From: ceo@example.test\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!((code, &text[..5]), (550, "5.7.1"), "{text}");
    let (code, text) = c
        .transaction(
            "alice@example.test",
            &["bob@example.test"],
            "From: alice@example.test\r\nFrom: alice@example.test\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(
        (code, text.as_str()),
        (550, "5.6.0 message must have exactly one From header")
    );
    let long = format!(
        "From: alice@example.test\r\n\r\nok\r\n{}\r\n",
        "x".repeat(999)
    );
    let (code, text) = c
        .transaction("alice@example.test", &["bob@example.test"], &long)
        .await;
    // The correo-smtp driver enforces RFC 5321's 1000-octet text line while
    // reading DATA (550 5.5.2) before the handler sees the message; the
    // MSA's own check (validate::check_line_lengths, with the line number)
    // covers whatever reaches it. Either way: refused, permanently.
    assert_eq!(code, 550, "{text}");
    assert!(
        text == "5.6.0 line 4 longer than 998 octets" || text.starts_with("5.5.2"),
        "{text}"
    );
    assert_eq!(queue.received().len(), 1, "nothing refused reached the MTA");

    assert_eq!(c.cmd("QUIT").await.0, 221);
    msa.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_auth_login_and_an_alias_sender() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let queue = FakeQueue::new("mta-1", false);
    let mta = spawn_queue(certs, queue.clone()).await;
    let msa = start_msa(certs, directory, &[mta.to_string()]).await;

    let mut c = Smtp::connect_tls(msa.implicit, certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(c.cmd("AUTH LOGIN").await.0, 334);
    assert_eq!(c.cmd(&b64("alice@example.test")).await.0, 334);
    assert_eq!(c.cmd(&b64("secret")).await.0, 235);
    // A big body crosses many chunks and arrives intact.
    let body: String = (0..20_000)
        .map(|i| format!("line {i:06} of the body\r\n"))
        .collect();
    let message = format!(
        "From: sales\r\nDate: Tue, 1 Dec 2026 08:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\n{body}"
    );
    let (code, text) = c
        .transaction("sales@example.test", &["bob@other.test"], &message)
        .await;
    assert_eq!(code, 250, "{text}");
    let got = queue.received();
    let head = header_of(&got[0].data);
    assert!(head.contains("\r\nFrom: sales@example.test\r\n"), "{head}");
    assert!(
        head.contains("\r\nMessage-ID: <x@y>\r\n") && !head.contains("@msa.example.test>"),
        "{head}"
    );
    assert!(
        head.contains("for <bob@other.test>"),
        "single recipient named: {head}"
    );
    assert_eq!(&got[0].data[head.len()..], body.as_bytes());
    assert!(got[0].chunks > 1);
    msa.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_spreads_over_healthy_mtas_and_451_when_none_accepts() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let good1 = FakeQueue::new("mta-1", false);
    let good2 = FakeQueue::new("mta-2", false);
    let broken = FakeQueue::new("mta-broken", true);
    let mtas = [
        spawn_queue(certs, good1.clone()).await.to_string(),
        spawn_queue(certs, good2.clone()).await.to_string(),
        spawn_queue(certs, broken.clone()).await.to_string(),
        dead_port().await.to_string(),
    ];
    let msa = start_msa(certs, directory, &mtas).await;
    let mut c = Smtp::connect_tls(msa.implicit, certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    assert_eq!(c.auth_plain("alice@example.test", "secret").await.0, 235);
    for i in 0..8 {
        let m = format!("From: alice@example.test\r\nSubject: {i}\r\n\r\nhi\r\n");
        let (code, text) = c
            .transaction("alice@example.test", &["bob@other.test"], &m)
            .await;
        assert_eq!(code, 250, "message {i}: {text}");
    }
    let (n1, n2) = (good1.received().len(), good2.received().len());
    assert_eq!(n1 + n2, 8);
    assert!(n1 >= 2 && n2 >= 2, "round-robin spreads: {n1} / {n2}");
    msa.stop().await;

    // Only broken or dead MTAs: 451, and the client may retry later.
    let msa = start_msa(certs, directory, &mtas[2..]).await;
    let mut c = Smtp::connect_tls(msa.implicit, certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    assert_eq!(c.auth_plain("alice@example.test", "secret").await.0, 235);
    let (code, text) = c
        .transaction(
            "alice@example.test",
            &["bob@other.test"],
            "From: alice@example.test\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(
        (code, text.as_str()),
        (451, "4.3.0 no transfer agent available, try again later")
    );
    msa.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_host_is_used() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let queue = FakeQueue::new("mta-1", false);
    let mta = spawn_queue(certs, queue.clone()).await;
    // `localhost` resolves to 127.0.0.1 and often ::1 too; the IPv6 one has
    // no listener, so this also exercises failover within one host.
    let msa = start_msa(certs, directory, &[format!("localhost:{}", mta.port())]).await;
    let mut c = Smtp::connect_tls(msa.implicit, certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    assert_eq!(c.auth_plain("alice@example.test", "secret").await.0, 235);
    for _ in 0..3 {
        let (code, text) = c
            .transaction(
                "alice@example.test",
                &["bob@other.test"],
                "From: alice@example.test\r\n\r\nhi\r\n",
            )
            .await;
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(queue.received().len(), 3);
    msa.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_directory_is_a_temporary_auth_failure() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let msa = start_msa(certs, dead_port().await, &[dead_port().await.to_string()]).await;
    let mut c = Smtp::connect(msa.starttls).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    let mut c = c.starttls(certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    let (code, text) = c.auth_plain("alice@example.test", "secret").await;
    assert_eq!((code, &text[..5]), (454, "4.7.0"), "{text}");
    msa.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_sessions_finish() {
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let queue = FakeQueue::new("mta-1", false);
    let mta = spawn_queue(certs, queue.clone()).await;
    let mut msa = start_msa(certs, directory, &[mta.to_string()]).await;
    let mut c = Smtp::connect_tls(msa.implicit, certs).await;
    assert_eq!(c.cmd("EHLO client").await.0, 250);
    let mut idle = Smtp::connect(msa.starttls).await;
    assert_eq!(idle.cmd("EHLO idler").await.0, 250);
    let _ = msa.stop.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(msa.implicit).await.is_err(),
        "no longer accepting"
    );
    // The open session still completes a submission.
    assert_eq!(c.auth_plain("alice@example.test", "secret").await.0, 235);
    let (code, text) = c
        .transaction(
            "alice@example.test",
            &["bob@other.test"],
            "From: alice@example.test\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").await.0, 221);
    // A session that does not finish within shutdown_timeout (3 s) is told.
    let started = std::time::Instant::now();
    let (code, text) = idle.reply().await;
    assert_eq!((code, &text[..5]), (421, "4.3.2"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(5), &mut msa.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_submits_over_starttls() {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    correo_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    pki(certs);
    let directory = spawn_directory(certs).await;
    let queue = FakeQueue::new("mta-1", false);
    let mta = spawn_queue(certs, queue.clone()).await;
    let msa = start_msa(certs, directory, &[mta.to_string()]).await;

    let ca = Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let email = Message::builder()
        .from("Alice <alice@example.test>".parse().unwrap())
        .to("bob@other.test".parse().unwrap())
        .subject("via lettre")
        .body("Hello from lettre\r\n".to_string())
        .unwrap();
    let transport = |creds: Option<Credentials>| {
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(msa.starttls.port())
            .tls(Tls::Required(tls.clone()))
            .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
                "client.example.test".into(),
            ))
            .authentication(vec![Mechanism::Plain]);
        if let Some(c) = creds {
            b = b.credentials(c);
        }
        b.build()
    };
    let err = transport(None).send(email.clone()).await.unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("530".to_string()),
        "{err}"
    );
    let ok = transport(Some(Credentials::new(
        "alice@example.test".into(),
        "secret".into(),
    )))
    .send(email)
    .await
    .unwrap();
    assert_eq!(u16::from(ok.code()), 250);
    let got = queue.received();
    assert_eq!(got.len(), 1);
    assert!(header_of(&got[0].data).contains("Subject: via lettre"));
    msa.stop().await;
}
