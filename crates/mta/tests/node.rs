//! In-process tests of a whole MTA node on loopback: gRPC Submit with
//! mutual TLS, delivery to a fake MDA, QueueAdmin, inbound SMTP.

use correo_proto::admin::{ListQueueRequest, QueueIdRequest, RetryRequest};
use correo_proto::delivery::delivery_server::{Delivery, DeliveryServer};
use correo_proto::delivery::{
    DeliverBatchReply, DeliverChunk, DeliverReply, DeliveryEnvelope, DeliveryStatus,
    RecipientResult, deliver_chunk,
};
use correo_proto::directory::directory_server::{Directory, DirectoryServer};
use correo_proto::directory::{
    AuthenticateReply, AuthenticateRequest, CheckRecipientReply, CheckRecipientRequest,
    ListDomainsReply, ListDomainsRequest,
};
use correo_proto::queue::queue_client::QueueClient;
use correo_proto::queue::{Envelope, SubmitChunk, submit_chunk};
use correo_runtime::tls::{TlsFiles, grpc_client_tls, grpc_server_tls};
use mta::config::Config;
use mta::server::Server;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

type Delivered = Arc<Mutex<Vec<(DeliveryEnvelope, Vec<u8>)>>>;

/// A stand-in MDA: users starting with "alice" or "temp" exist; "temp…"
/// deliveries fail temporarily. With `old`, it has no DeliverBatch, like
/// an MDA from before that rpc.
#[derive(Clone, Default)]
struct FakeMda {
    delivered: Delivered,
    old: bool,
    /// Messages per DeliverBatch call received.
    batches: Arc<Mutex<Vec<usize>>>,
    /// How long each DeliverBatch call takes.
    delay: Duration,
}

impl FakeMda {
    /// Reads a stream of chunks into messages: each envelope starts one.
    async fn messages(
        stream: &mut Streaming<DeliverChunk>,
    ) -> Result<Vec<(DeliveryEnvelope, Vec<u8>)>, Status> {
        let mut messages: Vec<(DeliveryEnvelope, Vec<u8>)> = Vec::new();
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(deliver_chunk::Part::Envelope(e)) => messages.push((e, Vec::new())),
                Some(deliver_chunk::Part::Data(d)) => {
                    // The MTA streams in CHUNK_SIZE slices.
                    assert!(
                        d.len() <= correo_proto::CHUNK_SIZE,
                        "chunk of {} octets",
                        d.len()
                    );
                    let (_, data) = messages
                        .last_mut()
                        .ok_or_else(|| Status::invalid_argument("no envelope"))?;
                    data.extend_from_slice(&d)
                }
                None => {}
            }
        }
        Ok(messages)
    }

    fn deliver_one(&self, envelope: DeliveryEnvelope, data: Vec<u8>) -> DeliverReply {
        let results = envelope
            .recipients
            .iter()
            .map(|r| {
                let temp = r.starts_with("temp");
                RecipientResult {
                    recipient: r.clone(),
                    status: if temp {
                        DeliveryStatus::Temporary
                    } else {
                        DeliveryStatus::Delivered
                    } as i32,
                    code: if temp { 452 } else { 250 },
                    enhanced_code: if temp { "4.2.2" } else { "2.0.0" }.into(),
                    message: if temp { "mailbox full" } else { "delivered" }.into(),
                }
            })
            .collect();
        self.delivered.lock().unwrap().push((envelope, data));
        DeliverReply { results }
    }
}

#[tonic::async_trait]
impl Delivery for FakeMda {
    async fn deliver(
        &self,
        request: Request<Streaming<DeliverChunk>>,
    ) -> Result<Response<DeliverReply>, Status> {
        let mut messages = Self::messages(&mut request.into_inner()).await?;
        if messages.len() != 1 {
            return Err(Status::invalid_argument("one envelope per call"));
        }
        let (envelope, data) = messages.remove(0);
        Ok(Response::new(self.deliver_one(envelope, data)))
    }

    async fn deliver_batch(
        &self,
        request: Request<Streaming<DeliverChunk>>,
    ) -> Result<Response<DeliverBatchReply>, Status> {
        if self.old {
            return Err(Status::unimplemented("no DeliverBatch here"));
        }
        let messages = Self::messages(&mut request.into_inner()).await?;
        if messages.is_empty() {
            return Ok(Response::new(DeliverBatchReply::default())); // the MTA's probe
        }
        self.batches.lock().unwrap().push(messages.len());
        tokio::time::sleep(self.delay).await;
        let messages = messages
            .into_iter()
            .map(|(envelope, data)| self.deliver_one(envelope, data))
            .collect();
        Ok(Response::new(DeliverBatchReply { messages }))
    }
}

#[tonic::async_trait]
impl Directory for FakeMda {
    async fn authenticate(
        &self,
        _r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateReply>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn get_scram_credentials(
        &self,
        _r: Request<correo_proto::directory::GetScramCredentialsRequest>,
    ) -> Result<Response<correo_proto::directory::GetScramCredentialsReply>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn check_recipient(
        &self,
        request: Request<CheckRecipientRequest>,
    ) -> Result<Response<CheckRecipientReply>, Status> {
        let address = request.into_inner().address;
        Ok(Response::new(CheckRecipientReply {
            exists: address.starts_with("alice") || address.starts_with("temp"),
            domain_served: true,
        }))
    }
    async fn list_domains(
        &self,
        _r: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsReply>, Status> {
        Ok(Response::new(ListDomainsReply {
            domains: vec!["example.test".into()],
        }))
    }
}

/// Whether the spool under `data` holds `id` (read as an inspector would).
fn spooled(data: &Path, id: &str) -> bool {
    let id = mta::queue_id::QueueId::parse(id).unwrap();
    mta::spool::Spool::inspect(data).unwrap().ids.contains(&id)
}

fn make_certs(dir: &Path) {
    correo_runtime::tls::install_crypto_provider();
    correo_runtime::pki::ensure_ca(dir).unwrap();
    for name in ["mta", "mda", "msa"] {
        correo_runtime::pki::ensure_leaf(dir, name, &[name, "localhost", "127.0.0.1"]).unwrap();
    }
}

async fn start_fake_mda(certs: &Path) -> (std::net::SocketAddr, Delivered) {
    let (addr, mda) = serve_fake_mda(certs, FakeMda::default()).await;
    (addr, mda.delivered)
}

async fn serve_fake_mda(certs: &Path, mda: FakeMda) -> (std::net::SocketAddr, FakeMda) {
    let handle = mda.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = grpc_server_tls(&TlsFiles::in_dir(certs, "mda"), true).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(DeliveryServer::new(mda.clone()))
            .add_service(DirectoryServer::new(mda))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, handle)
}

fn config(dir: &Path, mda: std::net::SocketAddr) -> Config {
    let certs = dir.join("certs");
    let text = format!(
        r#"
hostname = "mx.example.test"
node = "mta-test"
data_dir = "{data}"
local_domains = ["example.test"]
[smtp]
listen = ["127.0.0.1:0"]
starttls = true
[grpc]
listen = "127.0.0.1:0"
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/mta.pem"
key = "{certs}/mta.key"
[mda]
endpoint = "https://{mda}"
server_name = "mda"
[dns]
nameservers = ["127.0.0.1:9"]
[retry]
first = "1h"
"#,
        data = dir.join("data").display(),
        certs = certs.display(),
    );
    let path = dir.join("mta.toml");
    std::fs::write(&path, text).unwrap();
    correo_runtime::config::load(Some(&path), mta::config::ENV_PREFIX, Vec::new()).unwrap()
}

async fn msa_client(
    certs: &Path,
    addr: std::net::SocketAddr,
    with_identity: bool,
) -> Result<QueueClient<Channel>, String> {
    let tls = grpc_client_tls(&TlsFiles::in_dir(certs, "msa"), "mta", with_identity).unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(QueueClient::new(channel))
}

async fn submit(
    client: &mut QueueClient<Channel>,
    rcpt: &str,
    body: &[u8],
) -> Result<String, Status> {
    let mut chunks = vec![SubmitChunk {
        part: Some(submit_chunk::Part::Envelope(Envelope {
            sender: "bob@example.test".into(),
            recipients: vec![rcpt.into()],
            authenticated_user: "bob@example.test".into(),
            journey_id: "j-test-1".into(),
            size_hint: body.len() as u64,
        })),
    }];
    for c in body.chunks(7) {
        chunks.push(SubmitChunk {
            part: Some(submit_chunk::Part::Data(c.to_vec())),
        });
    }
    let reply = client
        .submit(tokio_stream::iter(chunks))
        .await?
        .into_inner();
    assert_eq!(reply.node, "mta-test");
    Ok(reply.queue_id)
}

async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 5 s");
}

/// Waits until the first delivery attempt of `id` is recorded.
async fn first_attempt_recorded(server: &Server, id: &str) {
    eventually(|| {
        server
            .queue()
            .show(id)
            .unwrap()
            .is_some_and(|m| m.recipients[0].attempts == 1)
    })
    .await;
}

/// The queue ids the fake MDA was given, sorted.
fn delivered_ids(mda: &FakeMda) -> Vec<String> {
    let mut ids: Vec<String> = mda
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(envelope, _)| envelope.queue_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_delivers_to_the_mda_and_admin_controls_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let (mda_addr, delivered) = start_fake_mda(&certs).await;
    let mut config = config(dir.path(), mda_addr);
    let server = Server::start(config.clone()).await.unwrap();
    config.grpc.listen = server.grpc_addr();

    // Without a client certificate the TLS handshake or the call fails.
    if let Ok(mut anonymous) = msa_client(&certs, server.grpc_addr(), false).await {
        assert!(
            submit(&mut anonymous, "alice@example.test", b"x\r\n")
                .await
                .is_err()
        );
    }

    let mut client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    let body = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n";
    let id = submit(&mut client, "alice@example.test", body)
        .await
        .unwrap();
    assert_eq!(id.len(), 16);
    eventually(|| !delivered.lock().unwrap().is_empty()).await;
    let (envelope, data) = delivered.lock().unwrap()[0].clone();
    assert_eq!(envelope.queue_id, id);
    assert_eq!(envelope.journey_id, "j-test-1");
    assert_eq!(envelope.recipients, vec!["alice@example.test"]);
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.starts_with("Received: from msa ([127.0.0.1])"),
        "{text}"
    );
    assert!(text.contains("X-Correo-Journey: j-test-1\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nHello.\r\n"));
    eventually(|| server.queue().list().unwrap().is_empty()).await;
    eventually(|| !spooled(&dir.path().join("data"), &id)).await;

    // A temporary failure stays queued as deferred; admin sees and controls it.
    let id = submit(&mut client, "temp@example.test", body)
        .await
        .unwrap();
    first_attempt_recorded(&server, &id).await;
    // QueueAdmin is for this node's own certificate only, not the MSA's.
    let tls = grpc_client_tls(&TlsFiles::in_dir(&certs, "msa"), "mta", true).unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", server.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut foreign = correo_proto::admin::queue_admin_client::QueueAdminClient::new(channel);
    let err = foreign.list(ListQueueRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut admin = mta::cli::admin_client(&config, "mta").await.unwrap();
    let list = admin.list(ListQueueRequest {}).await.unwrap().into_inner();
    assert_eq!(list.messages.len(), 1);
    let r = &list.messages[0].recipients[0];
    assert_eq!(r.state, "deferred");
    assert_eq!(r.last_reply, "452 4.2.2 mailbox full");
    assert!(r.next_attempt > 0);
    let req = |id: &str| QueueIdRequest {
        queue_id: id.into(),
    };
    admin.hold(req(&id)).await.unwrap();
    assert!(admin.show(req(&id)).await.unwrap().into_inner().held);
    let retried = admin
        .retry(RetryRequest {
            queue_id: String::new(),
            all: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.count, 1);
    admin.delete(req(&id)).await.unwrap();
    let err = admin.show(req(&id)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains(&id), "{}", err.message());

    // Invalid envelopes are refused and nothing is queued.
    let err = submit(&mut client, "not an address", body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(server.queue().list().unwrap().is_empty());

    server.shutdown().await.unwrap();
}

async fn expect(reader: &mut (impl AsyncBufReadExt + Unpin), code: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(
            line.starts_with(code),
            "expected {code}, got {line:?} after {all:?}"
        );
        all.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_inbound_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let (mda_addr, delivered) = start_fake_mda(&certs).await;
    let server = Server::start(config(dir.path(), mda_addr)).await.unwrap();

    let stream = tokio::net::TcpStream::connect(server.smtp_addrs()[0])
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    expect(&mut reader, "220").await;
    write
        .write_all(b"EHLO client.remote.test\r\n")
        .await
        .unwrap();
    let ehlo = expect(&mut reader, "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    write
        .write_all(b"MAIL FROM:<carol@remote.test>\r\n")
        .await
        .unwrap();
    expect(&mut reader, "250").await;
    write
        .write_all(b"RCPT TO:<someone@elsewhere.test>\r\n")
        .await
        .unwrap();
    assert!(
        expect(&mut reader, "554")
            .await
            .contains("5.7.1 relay access denied")
    );
    write
        .write_all(b"RCPT TO:<nobody@example.test>\r\n")
        .await
        .unwrap();
    assert!(expect(&mut reader, "550").await.contains("5.1.1"));
    write
        .write_all(b"RCPT TO:<alice@example.test>\r\n")
        .await
        .unwrap();
    expect(&mut reader, "250").await;
    write.write_all(b"DATA\r\n").await.unwrap();
    expect(&mut reader, "354").await;
    write
        .write_all(
            b"From: carol@remote.test\r\nSubject: inbound\r\n\r\n..dot line\r\nbody\r\n.\r\n",
        )
        .await
        .unwrap();
    let reply = expect(&mut reader, "250").await;
    assert!(reply.contains("2.0.0 queued as "), "{reply}");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    assert_eq!(id.len(), 16);
    write.write_all(b"QUIT\r\n").await.unwrap();
    expect(&mut reader, "221").await;

    eventually(|| !delivered.lock().unwrap().is_empty()).await;
    let (envelope, data) = delivered.lock().unwrap()[0].clone();
    assert_eq!(envelope.queue_id, id);
    assert_eq!(envelope.sender, "carol@remote.test");
    let text = String::from_utf8(data).unwrap();
    assert!(text.starts_with("Received: "), "{text}");
    assert!(text.contains("by mx.example.test"), "{text}");
    assert!(
        text.contains(&format!("X-Correo-Journey: {}", envelope.journey_id)),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n.dot line\r\nbody\r\n"), "{text:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_a_restart_without_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    // No MDA is listening here: deliveries defer, the message stays queued.
    let unreachable = "127.0.0.1:9".parse().unwrap();
    let mut config = config(dir.path(), unreachable);
    let server = Server::start(config.clone()).await.unwrap();
    let mut client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    let id = submit(
        &mut client,
        "alice@example.test",
        b"Subject: keep\r\n\r\nme\r\n",
    )
    .await
    .unwrap();
    first_attempt_recorded(&server, &id).await;
    server.shutdown().await.unwrap();

    std::fs::remove_dir_all(dir.path().join("data/queue.sled")).unwrap();
    let (mda_addr, delivered) = start_fake_mda(&certs).await;
    config.mda.endpoint = format!("https://{mda_addr}");
    let server = Server::start(config).await.unwrap();
    eventually(|| !delivered.lock().unwrap().is_empty()).await;
    assert_eq!(delivered.lock().unwrap()[0].0.queue_id, id);
    eventually(|| server.queue().list().unwrap().is_empty()).await;
    server.shutdown().await.unwrap();
}

/// A UDP DNS responder on loopback answering from a table (NXDOMAIN for
/// unknown names).
async fn fake_dns(zone: Vec<(&'static str, hickory_proto::rr::RData)>) -> std::net::SocketAddr {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{Name, Record};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_queries(query.queries.clone());
            let q = &query.queries[0];
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !zone.iter().any(|(n, _)| *n == name) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            for (_, rdata) in zone
                .iter()
                .filter(|(n, r)| *n == name && r.record_type() == q.query_type())
            {
                let owner = Name::from_ascii(format!("{name}.")).unwrap();
                response.add_answer(Record::from_rdata(owner, 60, rdata.clone()));
            }
            let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

type Sunk = Arc<Mutex<Vec<(String, Vec<String>, Vec<u8>)>>>;

/// Another organisation's MX: refuses "later…" with 451 and "nouser…"
/// with 550 at RCPT, accepts the rest.
struct Sink {
    got: Sunk,
}

impl correo_smtp::server::Handler for Sink {
    async fn mail(
        &mut self,
        _info: &correo_smtp::server::SessionInfo,
        _sender: &correo_smtp::ReversePath,
    ) -> Result<(), correo_smtp::Reply> {
        Ok(())
    }
    async fn rcpt(
        &mut self,
        _info: &correo_smtp::server::SessionInfo,
        _envelope: &correo_smtp::server::Envelope,
        recipient: &correo_smtp::Address,
    ) -> Result<(), correo_smtp::Reply> {
        match recipient.local_part() {
            "later" => Err(correo_smtp::Reply::new(451, "4.2.1", "try later")),
            "nouser" => Err(correo_smtp::Reply::new(550, "5.1.1", "no such user here")),
            _ => Ok(()),
        }
    }
    async fn data(
        &mut self,
        _info: &correo_smtp::server::SessionInfo,
        envelope: &correo_smtp::server::Envelope,
        message: Vec<u8>,
    ) -> correo_smtp::Reply {
        let rcpts = envelope
            .recipients
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        self.got
            .lock()
            .unwrap()
            .push((envelope.sender.as_str().to_string(), rcpts, message));
        correo_smtp::Reply::new(250, "2.0.0", "accepted by sink")
    }
}

async fn start_sink() -> (std::net::SocketAddr, Sunk) {
    let got: Sunk = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(correo_smtp::server::ServerConfig::new("mx.remote.test"));
    let sink_got = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let local = stream.local_addr().unwrap();
            let handler = Sink {
                got: sink_got.clone(),
            };
            let config = config.clone();
            tokio::spawn(async move {
                let _ = correo_smtp::server::serve(
                    stream,
                    peer,
                    local,
                    config,
                    handler,
                    std::future::pending(),
                )
                .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_to_remote_mx_found_in_dns() {
    use hickory_proto::rr::rdata::{A, MX};
    use hickory_proto::rr::{Name, RData};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let (sink_addr, sunk) = start_sink().await;
    let dns = fake_dns(vec![
        (
            "remote.test",
            RData::MX(MX::new(10, Name::from_ascii("mx.remote.test.").unwrap())),
        ),
        ("mx.remote.test", RData::A(A("127.0.0.1".parse().unwrap()))),
        ("null.test", RData::MX(MX::new(0, Name::root()))),
    ])
    .await;
    let mut config = config(dir.path(), "127.0.0.1:9".parse().unwrap());
    config.dns.nameservers = vec![dns];
    config.relay.port = sink_addr.port();
    let server = Server::start(config).await.unwrap();
    let mut client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    let body = b"From: bob@example.test\r\nSubject: out\r\n\r\nbye\r\n";

    let mut chunks = vec![SubmitChunk {
        part: Some(submit_chunk::Part::Envelope(Envelope {
            sender: "bob@example.test".into(),
            recipients: vec![
                "carol@remote.test".into(),
                "later@remote.test".into(),
                "nouser@remote.test".into(),
                "dave@null.test".into(),
            ],
            authenticated_user: "bob@example.test".into(),
            journey_id: "j-relay".into(),
            size_hint: 0,
        })),
    }];
    chunks.push(SubmitChunk {
        part: Some(submit_chunk::Part::Data(body.to_vec())),
    });
    let id = client
        .submit(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner()
        .queue_id;

    eventually(|| {
        server.queue().show(&id).unwrap().is_some_and(|m| {
            m.recipients
                .iter()
                .all(|r| r.attempts == 1 || r.status == mta::index::RecipientStatus::Delivered)
        })
    })
    .await;
    let got = sunk.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "bob@example.test");
    assert_eq!(got[0].1, vec!["carol@remote.test"]);
    assert!(String::from_utf8_lossy(&got[0].2).contains("X-Correo-Journey: j-relay"));

    let entry = server.queue().show(&id).unwrap().unwrap();
    let state = |addr: &str| {
        let r = entry.recipients.iter().find(|r| r.address == addr).unwrap();
        (r.status, r.last_reply.clone())
    };
    use mta::index::RecipientStatus::*;
    assert_eq!(state("carol@remote.test").0, Delivered);
    let (status, reply) = state("later@remote.test");
    assert_eq!(status, Deferred);
    assert!(reply.starts_with("451 4.2.1"), "{reply}");
    let (status, reply) = state("nouser@remote.test");
    assert_eq!(status, Failed);
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    let (status, reply) = state("dave@null.test");
    assert_eq!(status, Failed);
    assert!(reply.starts_with("556 5.1.10"), "{reply}");
    // Finished recipients are remembered beside the spool file.
    let done =
        std::fs::read_to_string(dir.path().join(format!("data/spool/active/{id}.done"))).unwrap();
    assert_eq!(done.lines().count(), 3, "{done}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_transaction_in_progress_finish() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let (mda_addr, _delivered) = start_fake_mda(&certs).await;
    let server = Server::start(config(dir.path(), mda_addr)).await.unwrap();
    let smtp = server.smtp_addrs()[0];

    let open = || async move {
        let stream = tokio::net::TcpStream::connect(smtp).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        expect(&mut reader, "220").await;
        write
            .write_all(b"EHLO client.remote.test\r\n")
            .await
            .unwrap();
        expect(&mut reader, "250").await;
        (reader, write)
    };
    let (mut idle_reader, _idle_write) = open().await;
    let (mut reader, mut write) = open().await;
    write
        .write_all(b"MAIL FROM:<carol@remote.test>\r\n")
        .await
        .unwrap();
    expect(&mut reader, "250").await;
    write
        .write_all(b"RCPT TO:<alice@example.test>\r\n")
        .await
        .unwrap();
    expect(&mut reader, "250").await;

    let stopping = tokio::spawn(server.shutdown());
    // The idle session is told to go away at once.
    assert!(expect(&mut idle_reader, "421").await.contains("4.3.2"));
    // The busy one may still complete its transaction, then gets 421.
    write.write_all(b"DATA\r\n").await.unwrap();
    expect(&mut reader, "354").await;
    write
        .write_all(b"Subject: late\r\n\r\nstill accepted\r\n.\r\n")
        .await
        .unwrap();
    let reply = expect(&mut reader, "250").await;
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    assert!(expect(&mut reader, "421").await.contains("4.3.2"));
    stopping.await.unwrap().unwrap();
    // Accepted means on disk.
    assert!(spooled(&dir.path().join("data"), &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_streamed_intact() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let (mda_addr, delivered) = start_fake_mda(&certs).await;
    let server = Server::start(config(dir.path(), mda_addr)).await.unwrap();
    let mut client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..20_000 {
        body.extend_from_slice(format!("line {i:06} of a large message body\r\n").as_bytes());
    }
    let mut chunks = vec![SubmitChunk {
        part: Some(submit_chunk::Part::Envelope(Envelope {
            sender: String::new(),
            recipients: vec!["alice@example.test".into()],
            authenticated_user: String::new(),
            journey_id: String::new(),
            size_hint: body.len() as u64,
        })),
    }];
    chunks.extend(body.chunks(64 * 1024).map(|c| SubmitChunk {
        part: Some(submit_chunk::Part::Data(c.to_vec())),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    request
        .metadata_mut()
        .insert("x-correo-journey", "from-metadata".parse().unwrap());
    client.submit(request).await.unwrap();
    eventually(|| !delivered.lock().unwrap().is_empty()).await;
    let (envelope, data) = delivered.lock().unwrap()[0].clone();
    assert_eq!(envelope.sender, "", "null sender kept");
    assert_eq!(envelope.journey_id, "from-metadata");
    assert!(data.len() > 700_000);
    assert!(data.ends_with(&body), "message body intact");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_local_mail_shares_delivery_calls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    // Slow calls, so messages queue up behind the first ones.
    let fake = FakeMda {
        delay: Duration::from_millis(500),
        ..FakeMda::default()
    };
    let (mda_addr, mda) = serve_fake_mda(&certs, fake).await;
    let server = Server::start(config(dir.path(), mda_addr)).await.unwrap();
    let client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    const COUNT: usize = 30;
    let submissions = (0..COUNT).map(|i| {
        let mut client = client.clone();
        async move {
            let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
            submit(&mut client, "alice@example.test", body.as_bytes())
                .await
                .unwrap()
        }
    });
    let mut ids = futures::future::join_all(submissions).await;
    eventually(|| mda.delivered.lock().unwrap().len() >= COUNT).await;
    eventually(|| server.queue().list().unwrap().is_empty()).await;

    ids.sort();
    assert_eq!(delivered_ids(&mda), ids, "each message delivered once");
    let batches = mda.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), COUNT, "{batches:?}");
    assert!(batches.len() < COUNT, "messages shared calls: {batches:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mda_without_deliver_batch_gets_one_message_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let fake = FakeMda {
        old: true,
        ..FakeMda::default()
    };
    let (mda_addr, mda) = serve_fake_mda(&certs, fake).await;
    let server = Server::start(config(dir.path(), mda_addr)).await.unwrap();
    let mut client = msa_client(&certs, server.grpc_addr(), true).await.unwrap();
    let body = b"Subject: hi\r\n\r\nHello.\r\n";
    // The MTA asks first (an empty DeliverBatch), so nothing is deferred.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            submit(&mut client, "alice@example.test", body)
                .await
                .unwrap(),
        );
    }
    eventually(|| mda.delivered.lock().unwrap().len() == 3).await;
    eventually(|| server.queue().list().unwrap().is_empty()).await;
    ids.sort();
    assert_eq!(delivered_ids(&mda), ids);
    assert!(mda.batches.lock().unwrap().is_empty());
    server.shutdown().await.unwrap();
}
