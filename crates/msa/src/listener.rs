//! The SMTP listeners: bind, accept, one task per connection, and a
//! graceful stop (stop accepting, let sessions finish, then 421 the rest).

use crate::MsaError;
use crate::config::Config;
use crate::directory::Directory;
use crate::handler::{Session, Shared};
use crate::mta_pool::{MtaPool, PoolSettings};
use crate::throttle::{LoginThrottle, ThrottleSettings};
use correo_smtp::server::{
    AuthMechanism, BareLineEndings, ConnectionLimiter, ServerConfig, TlsMode,
};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::Instrument;

/// After the 421, how long sessions get to close before they are aborted.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// A bound, not yet running MSA.
pub struct Server {
    listeners: Vec<(TcpListener, Arc<ServerConfig>)>,
    shared: Arc<Shared>,
    shutdown_timeout: Duration,
    /// One limiter for every listener.
    limiter: Arc<ConnectionLimiter>,
}

fn smtp_config(
    config: &Config,
    tls: Arc<rustls::ServerConfig>,
    mode: TlsMode,
) -> Arc<ServerConfig> {
    let mut c = ServerConfig::new(config.hostname.clone());
    c.tls = Some(tls);
    c.tls_mode = mode;
    c.auth_mechanisms = vec![
        AuthMechanism::ScramSha256,
        AuthMechanism::Plain,
        AuthMechanism::Login,
    ];
    c.require_auth = true;
    c.max_message_size = config.submission.max_message_size;
    c.max_recipients = config.submission.max_recipients;
    c.max_errors = config.submission.max_errors;
    c.command_timeout = config.submission.command_timeout;
    c.data_timeout = config.submission.data_timeout;
    c.greeting_delay = config.submission.greeting_delay;
    // RFC 6409 8.x: a submission server may fix line endings; MUAs get them wrong.
    c.bare_line_endings = BareLineEndings::Normalize;
    Arc::new(c)
}

impl Server {
    /// Loads TLS material, binds every listener, prepares the directory
    /// client and resolves the MTA endpoints once. Needs a tokio runtime.
    pub async fn bind(config: &Config) -> Result<Server, MsaError> {
        let tls = correo_runtime::tls::smtp_server_config(&config.tls.cert, &config.tls.key)?;
        let starttls = smtp_config(config, tls.clone(), TlsMode::StartTls);
        let implicit = smtp_config(config, tls, TlsMode::Implicit);

        let directory_tls =
            correo_runtime::tls::grpc_client_tls(&config.tls, &config.directory.server_name, true)?;
        let directory = Directory::new(
            &config.directory.endpoint,
            directory_tls,
            config.directory.timeout,
        )?;
        let mta_tls =
            correo_runtime::tls::grpc_client_tls(&config.tls, &config.mta.server_name, true)?;
        let pool = MtaPool::start(PoolSettings {
            endpoints: config.mta_endpoints(),
            tls: mta_tls,
            connect_timeout: config.mta.connect_timeout,
            submit_timeout: config.mta.submit_timeout,
            refresh_interval: config.mta.refresh_interval,
        })
        .await;

        let mut listeners = Vec::new();
        for (addrs, smtp) in [
            (config.starttls_addrs(), &starttls),
            (config.tls_addrs(), &implicit),
        ] {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| MsaError::Bind { addr, source })?;
                tracing::info!(listen = %listener.local_addr().unwrap_or(addr), mode = ?smtp.tls_mode, "submission listener bound");
                listeners.push((listener, smtp.clone()));
            }
        }
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                hostname: config.hostname.clone(),
                directory,
                pool,
                throttle: LoginThrottle::new(ThrottleSettings {
                    window: config.login_throttle.window,
                    max_failures_per_client: config.login_throttle.max_failures_per_client,
                    max_failures_per_account: config.login_throttle.max_failures_per_account,
                }),
            }),
            shutdown_timeout: config.submission.shutdown_timeout,
            limiter: ConnectionLimiter::new(
                config.submission.max_connections,
                config.submission.max_connections_per_client,
            ),
        })
    }

    /// Bound addresses with their TLS mode (port 0 in the config resolved).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, TlsMode)> {
        self.listeners
            .iter()
            .filter_map(|(l, c)| l.local_addr().ok().map(|a| (a, c.tls_mode)))
            .collect()
    }

    /// Serves until `shutdown` resolves, then drains the sessions.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), MsaError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut accepts =
            futures::stream::select_all(self.listeners.into_iter().map(|(listener, smtp)| {
                TcpListenerStream::new(listener).map(move |conn| (conn, smtp.clone()))
            }));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some((conn, smtp)) = accepts.next() => {
                    let stream = match conn {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else { continue };
                    let _ = stream.set_nodelay(true);
                    let permit = match self.limiter.try_acquire(peer.ip()) {
                        Ok(permit) => permit,
                        Err(over) => {
                            tracing::warn!(peer = %peer, limit = %over, "connection refused");
                            let reply = over.reply(&smtp.hostname);
                            sessions.spawn(async move {
                                let _ = correo_smtp::server::refuse(stream, &smtp, &reply).await;
                            });
                            continue;
                        }
                    };
                    let handler = Session::new(self.shared.clone());
                    let mut stop = stop_rx.clone();
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let span = tracing::info_span!("smtp", peer = %peer, mode = ?smtp.tls_mode);
                    sessions.spawn(
                        async move {
                            let _permit = permit;
                            tracing::debug!("connection accepted");
                            if let Err(e) = correo_smtp::server::serve(stream, peer, local, smtp, handler, stopped).await {
                                tracing::debug!(error = %e, "session ended with an I/O error");
                            }
                        }
                        .instrument(span),
                    );
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(accepts);
        tracing::info!(
            sessions = sessions.len(),
            "stopped accepting; letting sessions finish"
        );
        if tokio::time::timeout(self.shutdown_timeout, drain(&mut sessions))
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "shutdown timeout: closing remaining sessions with 421"
            );
            let _ = stop_tx.send(true);
            if tokio::time::timeout(ABORT_GRACE, drain(&mut sessions))
                .await
                .is_err()
            {
                sessions.abort_all();
            }
        }
        tracing::info!("msa stopped");
        Ok(())
    }
}

async fn drain(sessions: &mut JoinSet<()>) {
    while sessions.join_next().await.is_some() {}
}
