//! gRPC plumbing every role's server carries: the standard health service
//! and server reflection (so `grpcurl` can explore any role).

use tonic_health::server::HealthReporter;

/// Health service plus reporter. The caller marks each of its services
/// serving with `reporter.set_serving::<S>()` once it is ready.
pub fn health() -> (HealthReporter, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
    tonic_health::server::health_reporter()
}

/// Reflection service describing every Correo gRPC service.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(correo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
