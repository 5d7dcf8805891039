//! Starting the MDA: open the directory and the store, bind both listeners,
//! and serve until shut down.
//!
//! Binding and serving are separate steps so callers (tests, the launcher)
//! can bind port 0 and learn the real addresses before serving.

use crate::accounts::{AccountsError, AccountsFile, Directory};
use crate::auth::{Authenticator, HashError};
use crate::config::{BatchSync, Config};
use crate::delivery_service::DeliveryService;
use crate::directory_service::DirectoryService;
use crate::mailbox_service::MailboxService;
use crate::maildir::MailStore;
use crate::state::State;
use correo_proto::delivery::delivery_server::DeliveryServer;
use correo_proto::directory::directory_server::DirectoryServer;
use correo_proto::mailbox::mailbox_server::MailboxServer;
use correo_runtime::tls::TlsError;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on idle connections, so a vanished Watch client is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Age after which a file in a Maildir's `tmp/` is an interrupted delivery.
const STALE_TMP_AGE: Duration = Duration::from_secs(36 * 3600);

/// Why the MDA could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("TLS: {0}")]
    Tls(#[source] TlsError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("{listener} listener: {source}")]
    Transport {
        listener: &'static str,
        source: tonic::transport::Error,
    },
}

/// A bound, ready-to-serve MDA.
pub struct Mda {
    state: Arc<State>,
    grpc: TcpListener,
    mailbox: TcpListener,
    grpc_tls: ServerTlsConfig,
    mailbox_tls: ServerTlsConfig,
    /// The `/metrics` endpoint, when `metrics.listen` is set.
    _metrics: Option<correo_runtime::metrics::MetricsServer>,
}

impl std::fmt::Debug for Mda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mda")
            .field("grpc", &self.grpc.local_addr().ok())
            .field("mailbox", &self.mailbox.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn server_builder() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

impl Mda {
    /// Opens the account directory and the Maildir tree, loads TLS material
    /// and binds both listeners. Fails early, naming what is wrong.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let mail_root = config.data_dir.join("mail");
        std::fs::create_dir_all(&mail_root).map_err(|source| ServeError::DataDir {
            path: mail_root.clone(),
            source,
        })?;
        let file = AccountsFile::in_dir(&config.data_dir);
        let directory = Arc::new(Directory::open(file.clone())?);
        {
            let accounts = directory.snapshot();
            if accounts.users.is_empty() {
                tracing::warn!(path = %file.path().display(), "no users yet; add some with `mda user add`");
            } else {
                tracing::info!(
                    path = %file.path().display(),
                    domains = accounts.domains.len(),
                    users = accounts.users.len(),
                    aliases = accounts.aliases.len(),
                    "account directory loaded"
                );
            }
        }
        // One argon2 run to make the dummy hash: keep it off the async threads.
        let auth_dir = Arc::clone(&directory);
        let auth = tokio::task::spawn_blocking(move || Authenticator::new(auth_dir))
            .await
            .expect("authenticator set-up does not panic")?;
        let batch_sync = match config.store.batch_sync {
            BatchSync::Filesystem if !correo_runtime::durable::syncfs_reports_errors() => {
                tracing::warn!(
                    "store.batch_sync = \"filesystem\" needs Linux 5.17 or later, where syncfs reports every failure, and this kernel is older or its release could not be read; using \"files\""
                );
                BatchSync::Files
            }
            chosen => chosen,
        };
        let store = MailStore::new(&config.data_dir, &config.hostname).with_batch_sync(batch_sync);
        let sweeper = store.clone();
        tokio::task::spawn_blocking(move || {
            let removed = sweeper.sweep_tmp(STALE_TMP_AGE);
            if removed > 0 {
                tracing::info!(removed, "removed stale files from Maildir tmp/ directories");
            }
        });
        let state = Arc::new(State::new(directory, Arc::new(auth), store));

        // A bounded handshake: a client that connects and stalls must not
        // hold a connection forever.
        let grpc_tls = correo_runtime::tls::grpc_server_tls(&config.tls, true)
            .map_err(ServeError::Tls)?
            .timeout(HANDSHAKE_TIMEOUT);
        let mailbox_tls = correo_runtime::tls::grpc_server_tls(&config.tls, false)
            .map_err(ServeError::Tls)?
            .timeout(HANDSHAKE_TIMEOUT);

        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { key, addr, source })
        };
        let grpc = bind("grpc.listen", config.grpc.listen).await?;
        let mailbox = bind("mailbox.listen", config.mailbox.listen).await?;
        correo_runtime::journey::init(
            "mda",
            &config.hostname,
            Some(&correo_runtime::journey::default_log(&config.data_dir)),
        );
        let metrics = correo_runtime::metrics::start(&config.metrics, "mda")
            .await
            .map_err(|source| ServeError::Bind {
                key: "metrics.listen",
                addr: config.metrics.listen.unwrap_or(config.grpc.listen),
                source,
            })?;
        Ok(Mda {
            state,
            grpc,
            mailbox,
            grpc_tls,
            mailbox_tls,
            _metrics: metrics,
        })
    }

    /// Where the internal (mutual-TLS) listener is bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the mailbox listener is bound.
    pub fn mailbox_addr(&self) -> SocketAddr {
        self.mailbox
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves both listeners until `shutdown` resolves, then drains: Watch
    /// streams end and in-flight calls finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (grpc_addr, mailbox_addr) = (self.grpc_addr(), self.mailbox_addr());
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        });
        let closed = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|closing| *closing).await;
        };

        let (health_reporter, health) = correo_runtime::grpc::health();
        health_reporter
            .set_serving::<DeliveryServer<DeliveryService>>()
            .await;
        health_reporter
            .set_serving::<DirectoryServer<DirectoryService>>()
            .await;
        let reflection = correo_runtime::grpc::reflection()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;

        let internal = server_builder()
            .tls_config(self.grpc_tls)
            .map_err(|source| ServeError::Transport {
                listener: "grpc",
                source,
            })?
            .add_service(health)
            .add_service(reflection)
            .add_service(correo_runtime::journey::service())
            .add_service(DeliveryServer::new(DeliveryService::new(Arc::clone(
                &self.state,
            ))))
            .add_service(DirectoryServer::new(DirectoryService::new(Arc::clone(
                &self.state,
            ))))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                closed(closing_rx.clone()),
            );
        let mailbox = server_builder()
            .tls_config(self.mailbox_tls)
            .map_err(|source| ServeError::Transport {
                listener: "mailbox",
                source,
            })?
            .add_service(MailboxServer::new(MailboxService::new(
                Arc::clone(&self.state),
                closing_rx.clone(),
            )))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.mailbox).with_nodelay(Some(true)),
                closed(closing_rx),
            );

        tracing::info!(grpc = %grpc_addr, mailbox = %mailbox_addr, "mda serving");
        // If one listener fails the other is dropped too: half an MDA is no MDA.
        tokio::try_join!(
            async {
                internal.await.map_err(|source| ServeError::Transport {
                    listener: "grpc",
                    source,
                })
            },
            async {
                mailbox.await.map_err(|source| ServeError::Transport {
                    listener: "mailbox",
                    source,
                })
            },
        )?;
        tracing::info!("mda stopped");
        Ok(())
    }
}
