//! gRPC plumbing every role's server carries: the standard health service
//! and server reflection (so `grpcurl` can explore any role).

use tonic_health::server::HealthReporter;

/// Health service plus reporter. The caller marks each of its services
/// serving with `reporter.set_serving::<S>()` once it is ready.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Reflection service describing every Correo gRPC service.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(correo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// `[grpc]` of a role whose own work is not gRPC (the MSA): a listener that
/// only carries health, reflection and the Journey service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorGrpcConfig {
    /// `IP:port`; mutual TLS with the role's `[tls]` identity and CA.
    pub listen: std::net::SocketAddr,
}

/// Errors starting [`serve_operator_services`].
#[derive(Debug, thiserror::Error)]
pub enum OperatorGrpcError {
    #[error("cannot listen on {addr} (grpc.listen): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running operator gRPC listener; it stops when dropped.
pub struct OperatorGrpc {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl OperatorGrpc {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for OperatorGrpc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `grpc.health.v1.Health`, server reflection and
/// `correo.journey.v1.Journey` on `listen`, with mutual TLS (a client
/// certificate signed by `tls.ca` is required). Needs a tokio runtime.
pub async fn serve_operator_services(
    listen: std::net::SocketAddr,
    tls: &crate::tls::TlsFiles,
) -> Result<OperatorGrpc, OperatorGrpcError> {
    let server_tls =
        crate::tls::grpc_server_tls(tls, true)?.timeout(std::time::Duration::from_secs(10));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| OperatorGrpcError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| OperatorGrpcError::Bind {
            addr: listen,
            source,
        })?;
    let (reporter, health) = health();
    reporter
        .set_serving::<correo_proto::journey::journey_server::JourneyServer<crate::journey::JourneyService>>()
        .await;
    let router = tonic::transport::Server::builder()
        .tls_config(server_tls)?
        .add_service(health)
        .add_service(reflection()?)
        .add_service(crate::journey::service());
    let task = tokio::spawn(async move {
        // The reporter lives as long as the server.
        let _reporter = reporter;
        let incoming = tokio_stream_incoming(listener);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "operator gRPC server failed");
        }
    });
    tracing::info!(%addr, "gRPC listening (health, reflection, Journey; mutual TLS)");
    Ok(OperatorGrpc { addr, task })
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
