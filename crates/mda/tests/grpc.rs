//! The MDA in-process, over real TLS on loopback: certificates from
//! `correo_runtime::pki`, both listeners on port 0.

use base64::Engine;
use correo_proto::delivery::delivery_client::DeliveryClient;
use correo_proto::delivery::{DeliverChunk, DeliveryEnvelope, DeliveryStatus, deliver_chunk};
use correo_proto::directory::directory_client::DirectoryClient;
use correo_proto::directory::{AuthenticateRequest, CheckRecipientRequest, ListDomainsRequest};
use correo_proto::mailbox::mailbox_client::MailboxClient;
use correo_proto::mailbox::{DeleteRequest, FetchRequest, ListRequest, WatchRequest};
use correo_runtime::tls::{TlsFiles, grpc_client_tls, grpc_client_tls_ca_only};
use mda::accounts::AccountsFile;
use mda::address::Address;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const MESSAGE: &str = "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: Hello Alice\r\nDate: Tue, 1 Dec 2026 08:00:00 +0000\r\nX-Correo-Journey: j-test\r\n\r\nHi!\r\n";

struct Running {
    tmp: tempfile::TempDir,
    certs: PathBuf,
    data: PathBuf,
    grpc: SocketAddr,
    mailbox: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), mda::ServeError>>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.server.take().unwrap())
            .await
            .expect("server drains promptly, even with Watch streams open");
        result.unwrap().unwrap();
    }
}

fn add_user(data: &Path, address: &str, password: &str) {
    let hash = mda::auth::hash_password(password).unwrap();
    AccountsFile::in_dir(data)
        .update(|acc| acc.add_user(Address::parse(address).unwrap(), hash))
        .unwrap();
}

async fn start() -> Running {
    correo_runtime::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    correo_runtime::pki::ensure_ca(&certs).unwrap();
    correo_runtime::pki::ensure_leaf(&certs, "mda", &["mda", "localhost", "127.0.0.1"]).unwrap();
    correo_runtime::pki::ensure_leaf(&certs, "mta", &["mta", "localhost", "127.0.0.1"]).unwrap();
    let data = tmp.path().join("data");
    add_user(&data, "alice@example.test", "alice-pw");
    add_user(&data, "bob@example.test", "bob-pw");
    AccountsFile::in_dir(&data)
        .update(|acc| {
            acc.add_alias(
                Address::parse("postmaster@example.test").unwrap(),
                Address::parse("alice@example.test").unwrap(),
            )
        })
        .unwrap();

    let config = tmp.path().join("mda.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nhostname = \"mda.example.test\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            certs.join("ca.pem"),
            certs.join("mda.pem"),
            certs.join("mda.key"),
        ),
    )
    .unwrap();
    let config = mda::Config::load_with_env(Some(&config), Vec::new()).unwrap();
    let server = mda::Mda::bind(&config).await.unwrap();
    let (grpc, mailbox) = (server.grpc_addr(), server.mailbox_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        tmp,
        certs,
        data,
        grpc,
        mailbox,
        stop: Some(stop),
        server: Some(server),
    }
}

async fn internal_channel(
    r: &Running,
    with_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let tls = grpc_client_tls(&TlsFiles::in_dir(&r.certs, "mta"), "mda", with_cert).unwrap();
    Endpoint::from_shared(format!("https://{}", r.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

async fn mailbox_client(r: &Running) -> MailboxClient<Channel> {
    let tls = grpc_client_tls_ca_only(&r.certs.join("ca.pem"), "mda").unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", r.mailbox))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    MailboxClient::new(channel)
}

fn authed<T>(message: T, user: &str, password: &str) -> Request<T> {
    let mut request = Request::new(message);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {token}").parse().unwrap());
    request
}

/// One message as the MTA streams it: the envelope, then the message in
/// several data chunks, split mid-line.
fn message_chunks(
    sender: &str,
    recipients: &[&str],
    queue_id: &str,
    journey_id: &str,
    message: &str,
) -> Vec<DeliverChunk> {
    let envelope = DeliveryEnvelope {
        sender: sender.into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        queue_id: queue_id.into(),
        journey_id: journey_id.into(),
    };
    let mut chunks = vec![DeliverChunk {
        part: Some(deliver_chunk::Part::Envelope(envelope)),
    }];
    chunks.extend(message.as_bytes().chunks(17).map(|piece| DeliverChunk {
        part: Some(deliver_chunk::Part::Data(piece.to_vec())),
    }));
    chunks
}

async fn deliver(
    channel: Channel,
    recipients: &[&str],
    message: &str,
) -> Vec<correo_proto::delivery::RecipientResult> {
    let chunks = message_chunks(
        "bob@example.test",
        recipients,
        "0123456789abcdef",
        "j-test",
        message,
    );
    DeliveryClient::new(channel)
        .deliver(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner()
        .results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_mtls_and_serves_only_the_owner() {
    let r = start().await;
    let internal = internal_channel(&r, true).await.unwrap();
    let mut mailbox = mailbox_client(&r).await;

    // Watch first, so the delivery below is an arrival it must see.
    let mut watch = mailbox
        .watch(authed(WatchRequest {}, "alice@example.test", "alice-pw"))
        .await
        .unwrap()
        .into_inner();
    let mut bob_watch = mailbox
        .watch(authed(WatchRequest {}, "bob@example.test", "bob-pw"))
        .await
        .unwrap()
        .into_inner();

    let results = deliver(
        internal.clone(),
        &[
            "alice@example.test",
            "Postmaster@EXAMPLE.test",
            "nobody@example.test",
            "someone@elsewhere.test",
            "../../x@example.test",
        ],
        MESSAGE,
    )
    .await;
    let status: Vec<_> = results
        .iter()
        .map(|r| (r.status, r.code, r.enhanced_code.as_str()))
        .collect();
    assert_eq!(
        status,
        [
            (DeliveryStatus::Delivered as i32, 250, "2.0.0"),
            // The alias leads to the same mailbox: one copy, same result.
            (DeliveryStatus::Delivered as i32, 250, "2.0.0"),
            (DeliveryStatus::Permanent as i32, 550, "5.1.1"),
            (DeliveryStatus::Permanent as i32, 550, "5.1.2"),
            (DeliveryStatus::Permanent as i32, 553, "5.1.3"),
        ]
    );
    assert_eq!(results[1].recipient, "Postmaster@EXAMPLE.test");

    // Exactly one file, in new/, with the delivery headers in front.
    let maildir = r.data.join("mail/example.test/alice/Maildir");
    let files: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        stored,
        format!("Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\n{MESSAGE}")
    );
    assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
    assert!(!r.data.join("x").exists() && !r.data.join("mail/x").exists());
    let id = files[0].file_name().unwrap().to_str().unwrap().to_string();

    // Watch saw the arrival, with the parsed header.
    let arrival = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an arrival within 10s")
        .unwrap()
        .unwrap();
    assert_eq!(arrival.id, id);
    assert_eq!(arrival.subject, "Hello Alice");
    assert_eq!(arrival.from, "Bob <bob@example.test>");
    assert_eq!(arrival.size, stored.len() as u64);

    // Alice lists and fetches her message.
    let list = mailbox
        .list(authed(ListRequest {}, "alice@example.test", "alice-pw"))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].date, "Tue, 1 Dec 2026 08:00:00 +0000");
    assert!(!list[0].seen);
    let mut fetch = mailbox
        .fetch(authed(
            FetchRequest { id: id.clone() },
            "alice@example.test",
            "alice-pw",
        ))
        .await
        .unwrap()
        .into_inner();
    let mut fetched = Vec::new();
    while let Some(chunk) = fetch.message().await.unwrap() {
        fetched.extend(chunk.data);
    }
    assert_eq!(fetched, stored.as_bytes());

    // Bob sees nothing of Alice's, and cannot touch it.
    let bob_list = mailbox
        .list(authed(ListRequest {}, "bob@example.test", "bob-pw"))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert!(bob_list.is_empty());
    let err = mailbox
        .fetch(authed(
            FetchRequest { id: id.clone() },
            "bob@example.test",
            "bob-pw",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = mailbox
        .delete(authed(
            DeleteRequest { id: id.clone() },
            "bob@example.test",
            "bob-pw",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for escape in [
        "../../alice/Maildir/new/x".to_string(),
        format!("../../alice/Maildir/new/{id}"),
        "..".to_string(),
    ] {
        let err = mailbox
            .fetch(authed(
                FetchRequest { id: escape.clone() },
                "bob@example.test",
                "bob-pw",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{escape}");
    }
    assert!(files[0].exists());
    // Bob's Watch saw nothing of Alice's mail.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bob_watch.message())
            .await
            .is_err()
    );

    // Bad or missing credentials.
    for (user, password) in [
        ("alice@example.test", "wrong"),
        ("nobody@example.test", "alice-pw"),
        ("", ""),
    ] {
        let err = mailbox
            .list(authed(ListRequest {}, user, password))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{user}");
    }
    let err = mailbox
        .list(Request::new(ListRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Alice deletes; the file is gone.
    mailbox
        .delete(authed(
            DeleteRequest { id: id.clone() },
            "alice@example.test",
            "alice-pw",
        ))
        .await
        .unwrap();
    assert!(!files[0].exists());
    let err = mailbox
        .delete(authed(
            DeleteRequest { id },
            "alice@example.test",
            "alice-pw",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listener_refuses_clients_without_a_certificate() {
    let r = start().await;
    // With TLS 1.3 the refusal may come at connect time or on the first call.
    let refused = match internal_channel(&r, false).await {
        Err(_) => true,
        Ok(channel) => DirectoryClient::new(channel)
            .list_domains(ListDomainsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got an answer");

    // A plain-text client gets nothing either.
    let plain = Endpoint::from_shared(format!("http://{}", r.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(
            DirectoryClient::new(channel)
                .list_domains(ListDomainsRequest {})
                .await
                .is_err()
        );
    }

    // The mailbox listener accepts TLS without a client certificate...
    let mut mailbox = mailbox_client(&r).await;
    mailbox
        .list(authed(ListRequest {}, "bob@example.test", "bob-pw"))
        .await
        .unwrap();
    // ...but does not serve the internal services.
    let tls = grpc_client_tls_ca_only(&r.certs.join("ca.pem"), "mda").unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", r.mailbox))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = DirectoryClient::new(channel)
        .list_domains(ListDomainsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_answers_and_follows_the_accounts_file() {
    let r = start().await;
    let channel = internal_channel(&r, true).await.unwrap();
    let mut directory = DirectoryClient::new(channel.clone());

    let ok = directory
        .authenticate(AuthenticateRequest {
            username: "Alice@Example.test".into(),
            password: "alice-pw".into(),
            client_address: "192.0.2.1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.authenticated);
    assert_eq!(ok.user, "alice@example.test");
    assert_eq!(
        ok.addresses,
        ["alice@example.test", "postmaster@example.test"]
    );
    for (username, password) in [
        ("alice@example.test", "bob-pw"),
        ("carol@example.test", "carol-pw"),
    ] {
        let no = directory
            .authenticate(AuthenticateRequest {
                username: username.into(),
                password: password.into(),
                client_address: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(no, Default::default(), "{username}");
    }

    let check = |address: &str| CheckRecipientRequest {
        address: address.into(),
    };
    let reply = directory
        .check_recipient(check("postmaster@example.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.exists && reply.domain_served);
    let reply = directory
        .check_recipient(check("carol@example.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.exists && reply.domain_served);
    let reply = directory
        .check_recipient(check("../x@example.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.exists && reply.domain_served);
    let reply = directory
        .check_recipient(check("a@elsewhere.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.exists && !reply.domain_served);
    let domains = directory
        .list_domains(ListDomainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .domains;
    assert_eq!(domains, ["example.test"]);

    // The CLI adds a user while the server runs; the server notices.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mda"))
        .args(["--config"])
        .arg(r.tmp.path().join("mda.toml"))
        .args(["user", "add", "carol@other.test", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"carol-pw\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = directory
        .check_recipient(check("carol@other.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.exists && reply.domain_served);
    let domains = directory
        .list_domains(ListDomainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .domains;
    assert_eq!(domains, ["example.test", "other.test"]);
    let results = deliver(channel, &["carol@other.test"], MESSAGE).await;
    assert_eq!(results[0].status, DeliveryStatus::Delivered as i32);
    let mut mailbox = mailbox_client(&r).await;
    let list = mailbox
        .list(authed(ListRequest {}, "carol@other.test", "carol-pw"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 1);

    // Health and reflection are served on the internal listener.
    let health_channel = internal_channel(&r, true).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(health_channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "correo.delivery.v1.Delivery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the internal services (what `grpcurl list` shows).
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(internal_channel(&r, true).await.unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "correo.delivery.v1.Delivery",
        "correo.directory.v1.Directory",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }

    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_deliveries_are_refused_and_write_nothing() {
    let r = start().await;
    let channel = internal_channel(&r, true).await.unwrap();
    let data = |d: &str| DeliverChunk {
        part: Some(deliver_chunk::Part::Data(d.as_bytes().to_vec())),
    };
    let envelope = |sender: &str, recipients: &[&str]| DeliverChunk {
        part: Some(deliver_chunk::Part::Envelope(DeliveryEnvelope {
            sender: sender.into(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            queue_id: "00000000000000ff".into(),
            journey_id: String::new(),
        })),
    };
    let cases = [
        vec![data(MESSAGE)],
        vec![
            envelope("x>\r\nX-Evil: 1", &["alice@example.test"]),
            data(MESSAGE),
        ],
        vec![envelope("bob@example.test", &[])],
        vec![
            envelope("bob@example.test", &["alice@example.test"]),
            data(MESSAGE),
            envelope("bob@example.test", &["bob@example.test"]),
        ],
    ];
    for chunks in cases {
        let err = DeliveryClient::new(channel.clone())
            .deliver(futures::stream::iter(chunks))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert!(!r.data.join("mail/example.test/alice").exists());

    // Too large: a permanent answer for every recipient, nothing written.
    let envelope_chunk = envelope("bob@example.test", &["alice@example.test"]);
    let big = futures::stream::iter(std::iter::once(envelope_chunk).chain((0..=1024).map(|_| {
        DeliverChunk {
            part: Some(deliver_chunk::Part::Data(vec![b'x'; 64 * 1024])),
        }
    })));
    let results = DeliveryClient::new(channel.clone())
        .deliver(big)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1);
    assert_eq!(
        (
            results[0].status,
            results[0].code,
            results[0].enhanced_code.as_str()
        ),
        (DeliveryStatus::Permanent as i32, 552, "5.3.4")
    );
    assert!(!r.data.join("mail/example.test/alice").exists());

    // A mailbox that cannot be written is TEMPORARY (retry later), not lost:
    // here a file squats where Bob's mailbox directory belongs.
    std::fs::create_dir_all(r.data.join("mail/example.test")).unwrap();
    std::fs::write(r.data.join("mail/example.test/bob"), "in the way").unwrap();
    let results = deliver(
        channel,
        &["bob@example.test", "alice@example.test"],
        MESSAGE,
    )
    .await;
    let got: Vec<_> = results
        .iter()
        .map(|r| (r.status, r.code, r.enhanced_code.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (DeliveryStatus::Temporary as i32, 451, "4.3.0"),
            (DeliveryStatus::Delivered as i32, 250, "2.0.0"),
        ]
    );
    r.stop().await;
}

/// One DeliverBatch call; the replies, one per message.
async fn deliver_batch(
    channel: &Channel,
    chunks: Vec<DeliverChunk>,
) -> Vec<correo_proto::delivery::DeliverReply> {
    DeliveryClient::new(channel.clone())
        .deliver_batch(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner()
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivers_each_message_and_keeps_a_bad_one_to_itself() {
    let r = start().await;
    let channel = internal_channel(&r, true).await.unwrap();
    let message = |sender: &str, recipients: &[&str], queue_id: &str, body: &str| {
        message_chunks(sender, recipients, queue_id, "j-batch", body)
    };
    let batch: Vec<DeliverChunk> = [
        message(
            "bob@example.test",
            &["alice@example.test"],
            "00000000000000a1",
            MESSAGE,
        ),
        message(
            "x>\r\nX-Evil: 1",
            &["alice@example.test"],
            "00000000000000a2",
            MESSAGE,
        ),
        message(
            "",
            &["bob@example.test", "nobody@example.test"],
            "00000000000000a3",
            "Subject: to bob\r\n\r\nHi.\r\n",
        ),
        message(
            "carol@remote.test",
            &["alice@example.test", "Postmaster@EXAMPLE.test"],
            "00000000000000a4",
            "Subject: twice\r\n\r\nOne copy.\r\n",
        ),
    ]
    .concat();
    let replies = deliver_batch(&channel, batch).await;
    let got: Vec<Vec<_>> = replies
        .iter()
        .map(|reply| {
            reply
                .results
                .iter()
                .map(|r| (r.recipient.as_str(), r.status, r.code))
                .collect()
        })
        .collect();
    let delivered = DeliveryStatus::Delivered as i32;
    assert_eq!(
        got,
        vec![
            vec![("alice@example.test", delivered, 250)],
            // Refused on its own: the others are delivered all the same.
            vec![("alice@example.test", DeliveryStatus::Temporary as i32, 451)],
            vec![
                ("bob@example.test", delivered, 250),
                ("nobody@example.test", DeliveryStatus::Permanent as i32, 550),
            ],
            // The alias leads to alice: one copy, the same result.
            vec![
                ("alice@example.test", delivered, 250),
                ("Postmaster@EXAMPLE.test", delivered, 250),
            ],
        ]
    );
    let new = |user: &str| {
        let dir = r.data.join(format!("mail/example.test/{user}/Maildir/new"));
        let mut bodies: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        bodies.sort();
        bodies
    };
    let alice = new("alice");
    assert_eq!(alice.len(), 2, "{alice:?}");
    assert!(
        alice
            .iter()
            .any(|b| b.starts_with("Return-Path: <bob@example.test>\r\n") && b.ends_with(MESSAGE))
    );
    assert!(
        alice
            .iter()
            .any(|b| b.starts_with("Return-Path: <carol@remote.test>\r\n")
                && b.ends_with("One copy.\r\n"))
    );
    assert_eq!(
        new("bob"),
        vec!["Return-Path: <>\r\nDelivered-To: bob@example.test\r\nSubject: to bob\r\n\r\nHi.\r\n"]
    );

    // A message too large gets its own permanent answer; its neighbours go.
    let big: Vec<DeliverChunk> = message("", &["bob@example.test"], "00000000000000a6", "")
        .into_iter()
        .chain((0..=1024).map(|_| DeliverChunk {
            part: Some(deliver_chunk::Part::Data(vec![b'x'; 64 * 1024])),
        }))
        .collect();
    let batch = [
        message(
            "",
            &["bob@example.test"],
            "00000000000000a5",
            "Subject: before\r\n\r\n.\r\n",
        ),
        big,
        message(
            "",
            &["bob@example.test"],
            "00000000000000a7",
            "Subject: after\r\n\r\n.\r\n",
        ),
    ]
    .concat();
    let replies = deliver_batch(&channel, batch).await;
    let codes: Vec<Vec<u32>> = replies
        .iter()
        .map(|reply| reply.results.iter().map(|r| r.code).collect())
        .collect();
    assert_eq!(codes, vec![vec![250], vec![552], vec![250]]);
    assert_eq!(new("bob").len(), 3);

    // Data before any envelope is refused as a whole; an empty batch is fine.
    let orphan = DeliverChunk {
        part: Some(deliver_chunk::Part::Data(MESSAGE.as_bytes().to_vec())),
    };
    let err = DeliveryClient::new(channel.clone())
        .deliver_batch(futures::stream::iter(vec![orphan]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let empty = DeliveryClient::new(channel)
        .deliver_batch(futures::stream::iter(Vec::<DeliverChunk>::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.messages.is_empty());
    r.stop().await;
}
