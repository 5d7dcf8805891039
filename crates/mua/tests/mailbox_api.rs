//! The mailbox commands against a fake Mailbox gRPC server on loopback,
//! over real TLS with certificates from `correo_runtime::pki`: list, read,
//! save-attachment, delete and watch through the CLI, the Basic
//! credentials on every call, and the errors a user sees.

use correo_proto::mailbox::mailbox_server::{Mailbox, MailboxServer};
use correo_proto::mailbox::{
    DeleteReply, DeleteRequest, FetchChunk, FetchRequest, ListReply, ListRequest, MessageSummary,
    WatchRequest,
};
use futures::Stream;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

const ADDRESS: &str = "alice@example.test";
const PASSWORD: &str = "correct horse:battery";
// base64("alice@example.test:correct horse:battery")
const EXPECTED_AUTH: &str = "Basic YWxpY2VAZXhhbXBsZS50ZXN0OmNvcnJlY3QgaG9yc2U6YmF0dGVyeQ==";

const MESSAGE: &str = "From: Bob <bob@example.test>\r\n\
To: alice@example.test\r\n\
Subject: Quarterly report\r\n\
Date: Tue, 1 Dec 2026 08:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Numbers attached.\r\n\
--b1\r\n\
Content-Type: text/csv\r\n\
Content-Disposition: attachment; filename=\"q4.csv\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
YSxiCjEsMgo=\r\n\
--b1--\r\n";

#[derive(Default)]
struct State {
    messages: BTreeMap<String, Vec<u8>>,
    auth_headers: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let ok = header == EXPECTED_AUTH;
        self.state.lock().unwrap().auth_headers.push(header);
        if ok {
            Ok(())
        } else {
            Err(Status::unauthenticated("bad credentials"))
        }
    }

    fn summary(id: &str, data: &[u8]) -> MessageSummary {
        MessageSummary {
            id: id.to_string(),
            from: "Bob <bob@example.test>".into(),
            subject: "Quarterly report".into(),
            date: "Tue, 1 Dec 2026 08:00:00 +0000".into(),
            size: data.len() as u64,
            delivered_at: 1_796_112_000,
            seen: false,
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Mailbox for Fake {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        self.check(request.metadata())?;
        let state = self.state.lock().unwrap();
        let messages = state
            .messages
            .iter()
            .map(|(id, d)| Fake::summary(id, d))
            .collect();
        Ok(Response::new(ListReply { messages }))
    }

    type FetchStream = BoxStream<FetchChunk>;
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        self.check(request.metadata())?;
        let id = &request.get_ref().id;
        let data = self
            .state
            .lock()
            .unwrap()
            .messages
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found("no such message"))?;
        // Small chunks, so reassembly is exercised.
        let chunks: Vec<Result<FetchChunk, Status>> = data
            .chunks(100)
            .map(|c| Ok(FetchChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        self.check(request.metadata())?;
        match self
            .state
            .lock()
            .unwrap()
            .messages
            .remove(&request.get_ref().id)
        {
            Some(_) => Ok(Response::new(DeleteReply {})),
            None => Err(Status::not_found("no such message")),
        }
    }

    type WatchStream = BoxStream<MessageSummary>;
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.check(request.metadata())?;
        let arrivals = vec![
            Ok(Fake::summary("1796112001.M1.mda", b"x")),
            Ok(MessageSummary {
                subject: "second \u{1b}[31mred".into(),
                ..Fake::summary("1796112002.M2.mda", b"yy")
            }),
        ];
        // Then nothing more, like a quiet mailbox.
        let stream = futures::stream::iter(arrivals).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

use futures::StreamExt as _;

struct Harness {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    profile: PathBuf,
    fake: Fake,
}

async fn start() -> Harness {
    correo_runtime::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let certs = dir.join("certs");
    correo_runtime::pki::ensure_ca(&certs).unwrap();
    correo_runtime::pki::ensure_leaf(&certs, "mda", &["mda", "localhost", "127.0.0.1"]).unwrap();
    let files = correo_runtime::tls::TlsFiles::in_dir(&certs, "mda");
    let tls = correo_runtime::tls::grpc_server_tls(&files, false).unwrap();

    let fake = Fake::default();
    fake.state
        .lock()
        .unwrap()
        .messages
        .insert("1796112000.M0P1.mda".into(), MESSAGE.as_bytes().to_vec());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(MailboxServer::new(fake.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let profile = dir.join("mua.toml");
    std::fs::write(
        &profile,
        format!(
            "address = \"{ADDRESS}\"\nca = \"{}\"\n[mailbox]\nendpoint = \"https://127.0.0.1:{}\"\nserver_name = \"mda\"\n",
            certs.join("ca.pem").display(),
            addr.port()
        ),
    )
    .unwrap();
    Harness {
        _dir: tmp,
        dir,
        profile,
        fake,
    }
}

/// Runs the CLI in-process with an injected environment; returns stdout or the error text.
async fn mua(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    mua_with_stdin(h, args, env, b"").await
}

async fn mua_with_stdin(
    h: &Harness,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Result<String, String> {
    use clap::Parser as _;
    let mut argv = vec!["mua", "--profile", h.profile.to_str().unwrap()];
    argv.extend_from_slice(args);
    let cli = mua::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut input: &[u8] = stdin;
    let mut ctx = mua::cli::Context {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stdout: &mut out,
        stdin: &mut input,
        interactive: false,
    };
    let result = mua::cli::run(cli, &mut ctx).await;
    result
        .map(|()| String::from_utf8(out).unwrap())
        .map_err(|e| format!("{e:#}"))
}

const GOOD: &[(&str, &str)] = &[("CORREO_PASSWORD", PASSWORD)];

#[tokio::test]
async fn list_read_save_delete() {
    let h = start().await;

    let listing = mua(&h, &["list"], GOOD).await.unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(lines[0].starts_with("ID"), "{listing}");
    assert!(lines[1].starts_with("1796112000.M0P1.mda"), "{listing}");
    assert!(
        lines[1].contains("Bob <bob@example.test>") && lines[1].contains("Quarterly report"),
        "{listing}"
    );

    let view = mua(&h, &["read", "1796112000.M0P1.mda"], GOOD)
        .await
        .unwrap();
    assert!(view.contains("From: Bob <bob@example.test>"), "{view}");
    assert!(view.contains("Subject: Quarterly report"), "{view}");
    assert!(view.contains("Numbers attached."), "{view}");
    assert!(view.contains("[1] q4.csv  text/csv  8 B"), "{view}");

    let raw = mua(&h, &["read", "--raw", "1796112000.M0P1.mda"], GOOD)
        .await
        .unwrap();
    assert_eq!(raw, MESSAGE);

    // By index into a directory, then by name to a file; no clobbering.
    let saved = mua(
        &h,
        &[
            "save-attachment",
            "1796112000.M0P1.mda",
            "1",
            "--out",
            h.dir.to_str().unwrap(),
        ],
        GOOD,
    )
    .await
    .unwrap();
    assert!(saved.contains("q4.csv"), "{saved}");
    assert_eq!(std::fs::read(h.dir.join("q4.csv")).unwrap(), b"a,b\n1,2\n");
    let again = mua(
        &h,
        &[
            "save-attachment",
            "1796112000.M0P1.mda",
            "q4.csv",
            "--out",
            h.dir.to_str().unwrap(),
        ],
        GOOD,
    )
    .await
    .unwrap_err();
    assert!(again.contains("--force"), "{again}");
    let target = h.dir.join("numbers.csv");
    mua(
        &h,
        &[
            "save-attachment",
            "1796112000.M0P1.mda",
            "q4.csv",
            "-o",
            target.to_str().unwrap(),
        ],
        GOOD,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"a,b\n1,2\n");
    let stdout = mua(
        &h,
        &["save-attachment", "1796112000.M0P1.mda", "1", "--out", "-"],
        GOOD,
    )
    .await
    .unwrap();
    assert_eq!(stdout, "a,b\n1,2\n");
    let missing = mua(&h, &["save-attachment", "1796112000.M0P1.mda", "7"], GOOD)
        .await
        .unwrap_err();
    assert!(missing.contains("[1] q4.csv"), "{missing}");

    let deleted = mua(&h, &["delete", "1796112000.M0P1.mda"], GOOD)
        .await
        .unwrap();
    assert!(deleted.contains("Deleted 1796112000.M0P1.mda"), "{deleted}");
    assert_eq!(mua(&h, &["list"], GOOD).await.unwrap(), "No messages.\n");
    let gone = mua(&h, &["read", "1796112000.M0P1.mda"], GOOD)
        .await
        .unwrap_err();
    assert!(
        gone.contains("no message with id `1796112000.M0P1.mda`") && gone.contains("mua list"),
        "{gone}"
    );

    // Every call carried the same Basic credentials.
    let headers = h.fake.state.lock().unwrap().auth_headers.clone();
    assert!(headers.len() >= 9, "{headers:?}");
    assert!(headers.iter().all(|a| a == EXPECTED_AUTH), "{headers:?}");
}

#[tokio::test]
async fn watch_prints_arrivals() {
    let h = start().await;
    let out = mua(&h, &["watch", "--count", "2"], GOOD).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("1796112001.M1.mda") && lines[0].contains("Quarterly report"),
        "{out}"
    );
    assert!(lines[1].contains("1796112002.M2.mda"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "escape sequence reached the terminal: {out:?}"
    );
    assert_eq!(h.fake.state.lock().unwrap().auth_headers, [EXPECTED_AUTH]);

    let out = mua(&h, &["watch", "--count", "1", "--json"], GOOD)
        .await
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(first["id"], "1796112001.M1.mda");

    // The library stream directly, for callers other than the CLI.
    let profile = mua::profile::Profile::load(Some(&h.profile), &[]).unwrap();
    let mut client = mua::mailbox::MailboxClient::connect(&profile, PASSWORD)
        .await
        .unwrap();
    let stream = client.watch().await.unwrap();
    let first: Vec<_> = stream.take(2).collect().await;
    assert_eq!(first.len(), 2);
    assert_eq!(first[1].as_ref().unwrap().size, 2);
}

#[tokio::test]
async fn password_sources() {
    let h = start().await;
    // --password-stdin wins over the environment and reads one line only.
    let listing = mua_with_stdin(
        &h,
        &["--password-stdin", "list"],
        &[("CORREO_PASSWORD", "wrong")],
        format!("{PASSWORD}\r\nrest").as_bytes(),
    )
    .await
    .unwrap();
    assert!(listing.contains("1796112000.M0P1.mda"), "{listing}");
    let err = mua(&h, &["list"], &[]).await.unwrap_err();
    assert!(
        err.contains("CORREO_PASSWORD") && err.contains("--password-stdin"),
        "{err}"
    );
}

#[tokio::test]
async fn readable_errors() {
    let h = start().await;

    let wrong = mua(&h, &["list"], &[("CORREO_PASSWORD", "nope")])
        .await
        .unwrap_err();
    assert!(
        wrong.contains("refused the login of alice@example.test"),
        "{wrong}"
    );
    assert!(wrong.contains("check CORREO_PASSWORD"), "{wrong}");

    // The certificate carries "mda", not "mta".
    let name = mua(
        &h,
        &["list"],
        &[
            ("CORREO_PASSWORD", PASSWORD),
            ("CORREO_MUA__MAILBOX__SERVER_NAME", "mta"),
        ],
    )
    .await
    .unwrap_err();
    assert!(name.contains("TLS with the mailbox API"), "{name}");
    assert!(name.contains("mailbox.server_name"), "{name}");

    // A CA that did not sign the server's certificate.
    let other_ca = h.dir.join("other");
    correo_runtime::pki::ensure_ca(&other_ca).unwrap();
    let ca = other_ca.join("ca.pem");
    let untrusted = mua(
        &h,
        &["list"],
        &[
            ("CORREO_PASSWORD", PASSWORD),
            ("CORREO_MUA__CA", ca.to_str().unwrap()),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        untrusted.contains("TLS with the mailbox API"),
        "{untrusted}"
    );

    // Nothing listening.
    let port = free_port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let down = mua(
        &h,
        &["list"],
        &[
            ("CORREO_PASSWORD", PASSWORD),
            ("CORREO_MUA__MAILBOX__ENDPOINT", &endpoint),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        down.contains(&format!("cannot connect to the mailbox API at {endpoint}")),
        "{down}"
    );
    assert!(down.contains("is `correo up`"), "{down}");

    let missing_ca = mua(
        &h,
        &["list"],
        &[
            ("CORREO_PASSWORD", PASSWORD),
            ("CORREO_MUA__CA", "/nonexistent/ca.pem"),
        ],
    )
    .await
    .unwrap_err();
    assert!(missing_ca.contains("/nonexistent/ca.pem"), "{missing_ca}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
