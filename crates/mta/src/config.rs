//! `mta.toml`: the typed configuration of a transfer agent, loaded with
//! `correo_runtime::config` (file, then `CORREO_MTA__…` overrides, then
//! [`Validate`]). Every struct refuses unknown keys so a typo is an error,
//! not a silently ignored setting.

use correo_runtime::config::{ConfigError, Validate};
use correo_runtime::telemetry::LogFormat;
use correo_runtime::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment prefix of the overrides.
pub const ENV_PREFIX: &str = "CORREO_MTA__";

/// The whole `mta.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EHLO name and the `by` host of Received headers.
    pub hostname: String,
    /// Node name in logs and replies; defaults to `hostname`.
    #[serde(default)]
    pub node: Option<String>,
    /// Holds `spool/` (the truth) and `queue.sled` (the index).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Domains delivered to the MDA; everything else is relayed by MX.
    #[serde(default)]
    pub local_domains: Vec<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub grpc: GrpcConfig,
    pub tls: TlsFiles,
    #[serde(default)]
    pub mda: MdaConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[metrics] listen`: the Prometheus `/metrics` endpoint; none when absent.
    #[serde(default)]
    pub metrics: correo_runtime::metrics::MetricsConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("var/mta")
}

/// `[spool]`: the queue's disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Below this many free bytes on the spool's file system new mail is
    /// refused at MAIL time with `452 4.3.1` (gRPC: UNAVAILABLE); 0 = no check.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_min_free_bytes() -> u64 {
    100 * 1024 * 1024
}

/// `[smtp]`: the inbound SMTP listener (port 25 side).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(default = "default_smtp_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Offer STARTTLS with `[tls].cert`/`key`.
    #[serde(default = "yes")]
    pub starttls: bool,
    /// Limit for reading one whole command line (idle and slow-drip
    /// clients get `421 4.4.2`); also bounds the TLS handshake and writes.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Limit for the whole DATA phase.
    #[serde(default = "default_data_timeout", with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Wait before the greeting; a client talking during it gets `554 5.5.1`.
    #[serde(default, with = "humantime_serde")]
    pub greeting_delay: Duration,
    /// Sessions at once (0 = unlimited); beyond: `421 4.7.0`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Sessions at once from one client address (IPv6: /64; 0 = unlimited).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: default_smtp_listen(),
            max_message_size: default_max_message_size(),
            starttls: true,
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            greeting_delay: Duration::ZERO,
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
        }
    }
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_connections() -> usize {
    500
}
fn default_max_connections_per_client() -> usize {
    20
}

fn default_smtp_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
}
fn default_max_message_size() -> usize {
    52_428_800
}
fn yes() -> bool {
    true
}

/// `[grpc]`: Queue + QueueAdmin (+ health, reflection), mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default = "default_grpc_listen")]
    pub listen: SocketAddr,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: default_grpc_listen(),
        }
    }
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7201))
}

/// `[mda]`: where local domains are delivered (Delivery + Directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdaConfig {
    #[serde(default = "default_mda_endpoint")]
    pub endpoint: String,
    /// Name the MDA's certificate must carry.
    #[serde(default = "default_mda_server_name")]
    pub server_name: String,
    /// How long a "this local address exists" answer of the MDA's
    /// directory is reused at RCPT time ("0s": ask every time). Only
    /// positive answers are kept; an account removed meanwhile gets its
    /// mail refused at delivery (a bounce) instead of at RCPT.
    #[serde(default = "default_recipient_cache", with = "humantime_serde")]
    pub recipient_cache: Duration,
}

impl Default for MdaConfig {
    fn default() -> Self {
        MdaConfig {
            endpoint: default_mda_endpoint(),
            server_name: default_mda_server_name(),
            recipient_cache: default_recipient_cache(),
        }
    }
}

fn default_recipient_cache() -> Duration {
    Duration::from_secs(30)
}

fn default_mda_endpoint() -> String {
    "https://127.0.0.1:7101".into()
}
fn default_mda_server_name() -> String {
    "mda".into()
}

/// `[dns]`: resolvers for MX lookups.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` of each nameserver (UDP and TCP); empty = /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

/// `[relay]`: outbound SMTP to other organisations' MX hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default = "default_relay_port")]
    pub port: u16,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Opportunistic STARTTLS when the peer offers it.
    #[serde(default = "yes")]
    pub starttls: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            port: default_relay_port(),
            connect_timeout: default_connect_timeout(),
            starttls: true,
        }
    }
}

fn default_relay_port() -> u16 {
    25
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[retry]`: the back-off of deferred recipients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay after the first temporary failure.
    #[serde(default = "default_retry_first", with = "humantime_serde")]
    pub first: Duration,
    /// Upper bound of the doubling delay.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub max: Duration,
    /// After this long in the queue a deferred recipient fails for good.
    #[serde(default = "default_retry_lifetime", with = "humantime_serde")]
    pub lifetime: Duration,
    /// After this long in the queue the sender gets one "delayed" DSN for
    /// recipients still being retried; 0 = never.
    #[serde(default = "default_delay_warning", with = "humantime_serde")]
    pub delay_warning: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            first: default_retry_first(),
            max: default_retry_max(),
            lifetime: default_retry_lifetime(),
            delay_warning: default_delay_warning(),
        }
    }
}

fn default_delay_warning() -> Duration {
    Duration::from_secs(4 * 3600)
}

fn default_retry_first() -> Duration {
    Duration::from_secs(300)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(4000)
}
fn default_retry_lifetime() -> Duration {
    Duration::from_secs(5 * 86_400)
}

/// `[scheduler]`: how many deliveries run at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Deliveries in flight across all destinations.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Deliveries in flight to one destination domain.
    #[serde(default = "default_per_destination")]
    pub per_destination: usize,
    /// Consecutive connection failures after which a destination is backed
    /// off as a whole (its recipients deferred without connecting) until
    /// the back-off ends (`retry.first`, doubling, at most `retry.max`);
    /// 0 = never.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            concurrency: default_concurrency(),
            per_destination: default_per_destination(),
            breaker_threshold: default_breaker_threshold(),
        }
    }
}

fn default_breaker_threshold() -> u32 {
    5
}

fn default_concurrency() -> usize {
    20
}
fn default_per_destination() -> usize {
    10
}

impl Config {
    /// The node name: `node`, or `hostname` when unset.
    pub fn node_name(&self) -> &str {
        self.node.as_deref().unwrap_or(&self.hostname)
    }

    /// Whether `domain` is delivered locally (case-insensitive).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !valid_domain(&self.hostname) {
            return Err(ConfigError::invalid("hostname", "must be a domain name"));
        }
        if let Some(node) = &self.node
            && (node.is_empty() || node.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(ConfigError::invalid(
                "node",
                "must be a non-empty name without spaces",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        for (i, domain) in self.local_domains.iter().enumerate() {
            if !valid_domain(domain) {
                return Err(ConfigError::invalid(
                    format!("local_domains[{i}]"),
                    format!("`{domain}` is not a domain name"),
                ));
            }
        }
        if self.smtp.listen.is_empty() {
            return Err(ConfigError::invalid(
                "smtp.listen",
                "needs at least one address",
            ));
        }
        if self.smtp.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "smtp.max_message_size",
                "must be at least 1024",
            ));
        }
        if self.smtp.command_timeout.is_zero() || self.smtp.data_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "smtp.command_timeout",
                "smtp.command_timeout and smtp.data_timeout must be longer than 0s",
            ));
        }
        if self.smtp.greeting_delay >= self.smtp.command_timeout {
            return Err(ConfigError::invalid(
                "smtp.greeting_delay",
                "must be shorter than smtp.command_timeout",
            ));
        }
        if !self.mda.endpoint.starts_with("https://") {
            return Err(ConfigError::invalid(
                "mda.endpoint",
                "must be an https:// URL (mutual TLS)",
            ));
        }
        if self.mda.server_name.is_empty() {
            return Err(ConfigError::invalid("mda.server_name", "must not be empty"));
        }
        if self.relay.port == 0 {
            return Err(ConfigError::invalid("relay.port", "must not be 0"));
        }
        if self.relay.connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "relay.connect_timeout",
                "must be positive",
            ));
        }
        if self.retry.first.is_zero() {
            return Err(ConfigError::invalid("retry.first", "must be positive"));
        }
        if self.retry.max < self.retry.first {
            return Err(ConfigError::invalid(
                "retry.max",
                "must be at least retry.first",
            ));
        }
        if self.retry.lifetime < self.retry.first {
            return Err(ConfigError::invalid(
                "retry.lifetime",
                "must be at least retry.first",
            ));
        }
        if self.scheduler.concurrency == 0 {
            return Err(ConfigError::invalid(
                "scheduler.concurrency",
                "must be at least 1",
            ));
        }
        if self.scheduler.per_destination == 0 {
            return Err(ConfigError::invalid(
                "scheduler.per_destination",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use correo_runtime::config::load;

    const SAMPLE: &str = r#"
hostname = "mx.example.test"
node = "mta-1"
data_dir = "var/mta"
local_domains = ["example.test"]
log_format = "text"
[smtp]
listen = ["127.0.0.1:2525"]
max_message_size = 52428800
starttls = true
[grpc]
listen = "127.0.0.1:7201"
[tls]
ca = "var/certs/ca.pem"
cert = "var/certs/mta.pem"
key = "var/certs/mta.key"
[mda]
endpoint = "https://127.0.0.1:7101"
server_name = "mda"
[dns]
nameservers = ["127.0.0.1:5353"]
[relay]
port = 25
connect_timeout = "30s"
starttls = true
[retry]
first = "5m"
max = "4000s"
lifetime = "5d"
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mta.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn architecture_sample_loads() {
        let (_d, path) = write(SAMPLE);
        let c: Config = load(Some(&path), ENV_PREFIX, Vec::new()).unwrap();
        assert_eq!(c.node_name(), "mta-1");
        assert_eq!(c.retry.first, Duration::from_secs(300));
        assert_eq!(c.retry.lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(c.dns.nameservers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert!(c.is_local_domain("EXAMPLE.test"));
        assert_eq!(c.scheduler.concurrency, 20);
    }

    #[test]
    fn env_overrides_and_errors_name_the_key() {
        let (_d, path) = write(SAMPLE);
        let env = vec![(
            "CORREO_MTA__SMTP__LISTEN".to_string(),
            r#"["0.0.0.0:25"]"#.to_string(),
        )];
        let c: Config = load(Some(&path), ENV_PREFIX, env).unwrap();
        assert_eq!(c.smtp.listen, vec!["0.0.0.0:25".parse().unwrap()]);

        let env = vec![("CORREO_MTA__RETRY__MAX".to_string(), "1s".to_string())];
        let err = load::<Config, _>(Some(&path), ENV_PREFIX, env).unwrap_err();
        assert!(err.to_string().contains("retry.max"), "{err}");

        let env = vec![("CORREO_MTA__RELAY__BOGUS".to_string(), "1".to_string())];
        let err = load::<Config, _>(Some(&path), ENV_PREFIX, env).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");

        let env = vec![(
            "CORREO_MTA__LOCAL_DOMAINS".to_string(),
            r#"["ok.test", "bad domain"]"#.to_string(),
        )];
        let err = load::<Config, _>(Some(&path), ENV_PREFIX, env).unwrap_err();
        assert!(err.to_string().contains("local_domains[1]"), "{err}");
    }
}
