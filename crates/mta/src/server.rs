//! Starting and stopping a node: the queue, the scheduler, the SMTP
//! listeners and the gRPC server, with a graceful shutdown.

use crate::config::Config;
use crate::grpc::{AdminService, QueueService};
use crate::inbound::{Inbound, InboundHandler};
use crate::local::{Mda, MdaError};
use crate::queue::{Queue, QueueError, QueueOptions};
use crate::relay::{Relay, SmtpClient};
use crate::retry::RetryPolicy;
use crate::route::{DnsError, HickoryResolver};
use crate::scheduler::{Limits, Router, Scheduler};
use crate::space::{Recent, Statvfs};
use correo_proto::admin::queue_admin_server::QueueAdminServer;
use correo_proto::queue::queue_server::QueueServer;
use correo_runtime::tls::{TlsError, grpc_server_tls, load_certs, smtp_server_config};
use correo_smtp::client::ClientConfig;
use correo_smtp::server::{BareLineEndings, ConnectionLimiter, ServerConfig, TlsMode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long sessions and deliveries in flight may take to finish after
/// SIGTERM before they are cut (cut work is retried: nothing is lost).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long an SMTP transaction in progress may take to finish after
/// SIGTERM (shorter than [`SHUTDOWN_GRACE`], so its 421 still gets out).
pub const SESSION_GRACE: Duration = Duration::from_secs(20);

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Mda(#[from] MdaError),
    #[error("dns: {0}")]
    Dns(#[from] DnsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(String),
}

/// A running node.
pub struct Server {
    smtp_addrs: Vec<SocketAddr>,
    grpc_addr: SocketAddr,
    queue: Arc<Queue>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    health: tonic_health::server::HealthReporter,
}

impl Server {
    /// Opens the queue, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let config = Arc::new(config);
        let node = config.node_name().to_string();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        correo_runtime::journey::init(
            "mta",
            &node,
            Some(&correo_runtime::journey::default_log(&config.data_dir)),
        );
        if let Some(metrics) = correo_runtime::metrics::start(&config.metrics, "mta")
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.metrics.listen.unwrap_or(config.grpc.listen),
                source,
            })?
        {
            metrics.detach();
        }
        let data_dir = config.data_dir.clone();
        let retry = RetryPolicy::new(&config.retry);
        let options = QueueOptions {
            hostname: config.hostname.clone(),
            min_free_bytes: config.spool.min_free_bytes,
            // statvfs at most once a second, not once per MAIL.
            probe: Arc::new(Recent::new(Statvfs, Duration::from_secs(1))),
        };
        // Reconciliation reads every spool file: keep it off the workers.
        let (queue, report) =
            tokio::task::spawn_blocking(move || Queue::open_with(&data_dir, retry, options))
                .await
                .expect("queue open task")?;
        if let Some(aside) = &report.index_set_aside {
            tracing::warn!(path = %aside.display(), "damaged queue index set aside; rebuilt from the spool");
        }
        tracing::info!(
            node = %node,
            queued = report.queued,
            // Rebuilt from the spool: messages never attempted (kept in
            // memory only), or every message if the index was lost.
            rebuilt = report.rebuilt,
            dropped = report.dropped,
            finished = report.finished,
            "queue opened"
        );
        let queue = Arc::new(queue);
        let counted = queue.clone();
        // The queue gauge of /metrics, counted at each scrape.
        correo_runtime::metrics::set_queue_source(move || {
            let mut counts = Vec::new();
            for m in counted.list().unwrap_or_default() {
                for r in m.recipients.iter().filter(|r| !r.status.is_final()) {
                    let state = if m.held { "held" } else { r.status.as_str() };
                    counts.push(correo_runtime::metrics::QueueCount {
                        state: state.to_string(),
                        destination: r.domain(),
                        recipients: 1,
                    });
                }
            }
            counts
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Delivery.
        let mda = Mda::new(&config.mda.endpoint, &config.mda.server_name, &config.tls)?;
        let resolver = HickoryResolver::new(&config.dns.nameservers)?;
        let smtp_client = Arc::new(SmtpClient::new(ClientConfig {
            helo_name: config.hostname.clone(),
            connect_timeout: config.relay.connect_timeout,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            starttls: config.relay.starttls,
        }));
        // Idle relay connections are kept briefly for reuse, then closed.
        {
            let client = smtp_client.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => client.close_idle(false).await,
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    }
                }
                client.close_idle(true).await;
            });
        }
        let relay = Relay {
            resolver: Arc::new(resolver),
            transport: smtp_client.clone(),
            port: config.relay.port,
            hostname: config.hostname.clone(),
        };
        let router = Router {
            local_domains: config.local_domains.clone(),
            mda: mda.clone(),
            relay,
        };
        let scheduler = Scheduler::new(
            queue.clone(),
            Arc::new(router),
            Limits {
                concurrency: config.scheduler.concurrency,
                per_destination: config.scheduler.per_destination,
                breaker_threshold: config.scheduler.breaker_threshold,
                breaker_first: config.retry.first,
                breaker_max: config.retry.max,
            },
        );
        tasks.spawn(scheduler.run(stop_rx.clone(), SHUTDOWN_GRACE));

        // Inbound SMTP.
        let mut smtp = ServerConfig::new(config.hostname.clone());
        smtp.max_message_size = config.smtp.max_message_size;
        smtp.bare_line_endings = BareLineEndings::Reject;
        smtp.command_timeout = config.smtp.command_timeout;
        smtp.data_timeout = config.smtp.data_timeout;
        smtp.greeting_delay = config.smtp.greeting_delay;
        let limiter = ConnectionLimiter::new(
            config.smtp.max_connections,
            config.smtp.max_connections_per_client,
        );
        if config.smtp.starttls {
            smtp.tls = Some(smtp_server_config(&config.tls.cert, &config.tls.key)?);
            smtp.tls_mode = TlsMode::StartTls;
        }
        let smtp = Arc::new(smtp);
        let inbound = Arc::new(Inbound {
            hostname: config.hostname.clone(),
            local_domains: config.local_domains.clone(),
            queue: queue.clone(),
            directory: Arc::new(crate::local::CachedDirectory::new(
                mda,
                config.mda.recipient_cache,
            )),
        });
        let mut smtp_addrs = Vec::new();
        for addr in &config.smtp.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: *addr,
                    source,
                })?;
            let bound = listener.local_addr().map_err(|source| ServerError::Bind {
                addr: *addr,
                source,
            })?;
            tracing::info!(addr = %bound, starttls = config.smtp.starttls, "SMTP listening");
            smtp_addrs.push(bound);
            tasks.spawn(accept_loop(
                listener,
                smtp.clone(),
                inbound.clone(),
                limiter.clone(),
                stop_rx.clone(),
            ));
        }

        // gRPC.
        let listener = TcpListener::bind(config.grpc.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.grpc.listen,
                source,
            })?;
        let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.grpc.listen,
            source,
        })?;
        let admin_cert = load_certs(&config.tls.cert)?
            .into_iter()
            .next()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let (reporter, health) = correo_runtime::grpc::health();
        reporter.set_serving::<QueueServer<QueueService>>().await;
        reporter
            .set_serving::<QueueAdminServer<AdminService>>()
            .await;
        let reflection = correo_runtime::grpc::reflection()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let router = tonic::transport::Server::builder()
            .tls_config(grpc_server_tls(&config.tls, true)?)?
            .add_service(health)
            .add_service(reflection)
            .add_service(correo_runtime::journey::service())
            .add_service(QueueServer::new(QueueService {
                queue: queue.clone(),
                hostname: config.hostname.clone(),
                node: node.clone(),
                max_message_size: config.smtp.max_message_size,
            }))
            .add_service(QueueAdminServer::new(AdminService {
                queue: queue.clone(),
                admin_cert,
            }));
        let mut grpc_stop = stop_rx.clone();
        tasks.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let signal = async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        tracing::info!(addr = %grpc_addr, "gRPC listening (Queue, QueueAdmin; mutual TLS)");

        Ok(Server {
            smtp_addrs,
            grpc_addr,
            queue,
            stop,
            tasks,
            health: reporter,
        })
    }

    /// Bound SMTP addresses (useful with port 0).
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The queue (tests inspect it).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Stops accepting, lets work in flight finish within the grace time,
    /// flushes the index.
    pub async fn shutdown(mut self) -> Result<(), QueueError> {
        // Load balancers and the MSA's health checks look elsewhere now.
        self.health
            .set_not_serving::<QueueServer<QueueService>>()
            .await;
        self.health
            .set_not_serving::<QueueAdminServer<AdminService>>()
            .await;
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        // Each task has its own grace; this outer bound only guards a hang.
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out; cutting remaining tasks");
            self.tasks.abort_all();
        }
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || queue.flush())
            .await
            .expect("flush task")?;
        tracing::info!("queue flushed; stopped");
        Ok(())
    }
}

/// Accepts SMTP connections, one task per session, until shutdown; then
/// waits up to the grace time for open sessions.
async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    inbound: Arc<Inbound>,
    limiter: Arc<ConnectionLimiter>,
    stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let local = match stream.local_addr() {
                        Ok(local) => local,
                        Err(_) => continue,
                    };
                    // Replies are whole, flushed writes: never hold one back
                    // for the peer's (delayed) ACK of the previous one.
                    let _ = stream.set_nodelay(true);
                    let config = config.clone();
                    let permit = match limiter.try_acquire(peer.ip()) {
                        Ok(permit) => permit,
                        Err(over) => {
                            tracing::warn!(%peer, limit = %over, "connection refused");
                            let reply = over.reply(&config.hostname);
                            sessions.spawn(async move {
                                let _ = correo_smtp::server::refuse(stream, &config, &reply).await;
                            });
                            continue;
                        }
                    };
                    let busy = Arc::new(AtomicBool::new(false));
                    let handler = InboundHandler::with_busy_flag(inbound.clone(), busy.clone());
                    let mut session_stop = stop.clone();
                    let span = tracing::info_span!("smtp", %peer);
                    sessions.spawn(
                        async move {
                            // On shutdown an idle session gets 421 at once; one in
                            // the middle of a transaction may finish it first.
                            let signal = async move {
                                let _ = session_stop.wait_for(|stop| *stop).await;
                                let deadline = tokio::time::Instant::now() + SESSION_GRACE;
                                while busy.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            };
                            let _permit = permit;
                            tracing::debug!("session opened");
                            if let Err(e) = correo_smtp::server::serve(stream, peer, local, config, handler, signal).await {
                                tracing::debug!(error = %e, "session ended with an error");
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            // Map the watch guard away: it must not live across an await.
            _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    if !sessions.is_empty() {
        tracing::info!(
            sessions = sessions.len(),
            "waiting for SMTP sessions to finish"
        );
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            sessions.abort_all();
        }
    }
}
