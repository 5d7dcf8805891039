//! `msa.toml`: the typed configuration, its defaults and its validation.
//!
//! Loaded by [`Config::load`] from an optional file plus `CORREO_MSA__…` environment
//! overrides (see `correo_runtime::config`). Every struct refuses unknown
//! keys, so a typo fails at start-up instead of being silently ignored.

use correo_runtime::config::{ConfigError, Validate};
use correo_runtime::telemetry::LogFormat;
use correo_runtime::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Prefix of the environment overrides (`CORREO_MSA__MTA__ENDPOINTS='["mta:7201"]'`).
pub const ENV_PREFIX: &str = "CORREO_MSA__";

/// The whole `msa.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Greeting/EHLO name, `Received: by` host and the right side of Message-IDs we add.
    pub hostname: String,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub submission: SubmissionConfig,
    /// SMTP certificate for clients, and our client identity towards the MTA and MDA.
    pub tls: TlsFiles,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub mta: MtaConfig,
    #[serde(default)]
    pub login_throttle: LoginThrottleConfig,
    /// `[grpc] listen`: health, reflection and Journey (mutual TLS); none when absent.
    #[serde(default)]
    pub grpc: Option<correo_runtime::grpc::OperatorGrpcConfig>,
    /// `[metrics] listen`: the Prometheus `/metrics` endpoint; none when absent.
    #[serde(default)]
    pub metrics: correo_runtime::metrics::MetricsConfig,
    /// `[journey] log`: the journey event log file; in memory only when absent.
    #[serde(default)]
    pub journey: correo_runtime::journey::JourneyConfig,
}

/// `[login_throttle]`: failed AUTH attempts allowed per sliding window;
/// beyond them `421 4.7.0` and close (see [`crate::throttle`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginThrottleConfig {
    #[serde(default = "default_throttle_window", with = "humantime_serde")]
    pub window: Duration,
    /// Per client address (IPv6: per /64); 0 = unlimited.
    #[serde(default = "default_failures_per_client")]
    pub max_failures_per_client: usize,
    /// Per account, from any address; 0 = unlimited.
    #[serde(default = "default_failures_per_account")]
    pub max_failures_per_account: usize,
}

fn default_throttle_window() -> Duration {
    Duration::from_secs(300)
}
fn default_failures_per_client() -> usize {
    10
}
fn default_failures_per_account() -> usize {
    5
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        LoginThrottleConfig {
            window: default_throttle_window(),
            max_failures_per_client: default_failures_per_client(),
            max_failures_per_account: default_failures_per_account(),
        }
    }
}

/// `[submission]`: the SMTP listeners facing mail user agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionConfig {
    /// Port-587-style listeners: plaintext greeting, STARTTLS required before AUTH.
    #[serde(default = "default_starttls_listen")]
    pub starttls_listen: Vec<String>,
    /// Port-465-style listeners: TLS from the first byte (RFC 8314).
    #[serde(default = "default_tls_listen")]
    pub tls_listen: Vec<String>,
    /// Largest message accepted, in octets (advertised with SIZE).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Most recipients per message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// How long running sessions may go on after SIGTERM before they are told 421.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
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
    /// Client mistakes before `421 4.7.0` and close.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// Sessions at once over all listeners (0 = unlimited); beyond: `421 4.7.0`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Sessions at once from one client address (IPv6: /64; 0 = unlimited).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
}

/// `[directory]`: the MDA's Directory service, for AUTH.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `https://host:port` of the MDA's gRPC listener.
    #[serde(default = "default_directory_endpoint")]
    pub endpoint: String,
    /// Name the MDA's certificate must carry.
    #[serde(default = "default_mda_name")]
    pub server_name: String,
    /// Limit for one Authenticate call (connecting included).
    #[serde(default = "default_directory_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[mta]`: where accepted submissions are handed off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaConfig {
    /// `host:port` entries; every address each host resolves to is used.
    #[serde(default = "default_mta_endpoints")]
    pub endpoints: Vec<String>,
    /// Name every MTA's certificate must carry.
    #[serde(default = "default_mta_name")]
    pub server_name: String,
    /// How often the endpoints are resolved again (new replicas, gone replicas).
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// TCP+TLS connect limit per MTA address.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit for one whole Queue.Submit call (a 25 MB message included).
    #[serde(default = "default_submit_timeout", with = "humantime_serde")]
    pub submit_timeout: Duration,
}

fn default_starttls_listen() -> Vec<String> {
    vec!["127.0.0.1:1587".into()]
}
fn default_tls_listen() -> Vec<String> {
    vec!["127.0.0.1:1465".into()]
}
fn default_max_message_size() -> usize {
    26_214_400
}
fn default_max_recipients() -> usize {
    100
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_errors() -> usize {
    10
}
fn default_max_connections() -> usize {
    500
}
fn default_max_connections_per_client() -> usize {
    20
}
fn default_directory_endpoint() -> String {
    "https://127.0.0.1:7101".into()
}
fn default_mda_name() -> String {
    "mda".into()
}
fn default_directory_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_mta_endpoints() -> Vec<String> {
    vec!["127.0.0.1:7201".into()]
}
fn default_mta_name() -> String {
    "mta".into()
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_submit_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        SubmissionConfig {
            starttls_listen: default_starttls_listen(),
            tls_listen: default_tls_listen(),
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            shutdown_timeout: default_shutdown_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            greeting_delay: Duration::ZERO,
            max_errors: default_max_errors(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            endpoint: default_directory_endpoint(),
            server_name: default_mda_name(),
            timeout: default_directory_timeout(),
        }
    }
}

impl Default for MtaConfig {
    fn default() -> Self {
        MtaConfig {
            endpoints: default_mta_endpoints(),
            server_name: default_mta_name(),
            refresh_interval: default_refresh_interval(),
            connect_timeout: default_connect_timeout(),
            submit_timeout: default_submit_timeout(),
        }
    }
}

/// An `mta.endpoints` entry split into host and port; the host is resolved later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
        let port: u16 = port.parse().map_err(|_| format!("invalid port `{port}`"))?;
        if port == 0 {
            return Err("port 0 is not an endpoint".into());
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty()
            || host.contains(['/', ' '])
            || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err())
        {
            return Err(format!("invalid host `{host}` (expected host:port)"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// The `host:port` form `tokio::net::lookup_host` takes.
    pub fn lookup_target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lookup_target())
    }
}

impl Config {
    /// Loads `msa.toml` (if given) and the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        correo_runtime::config::load_from_process(file, ENV_PREFIX)
    }

    /// Loads with an injected environment (tests).
    pub fn load_with_env<I>(file: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        correo_runtime::config::load(file, ENV_PREFIX, env)
    }

    /// `submission.starttls_listen` as socket addresses (validated at load).
    pub fn starttls_addrs(&self) -> Vec<SocketAddr> {
        parse_listen(&self.submission.starttls_listen)
    }

    /// `submission.tls_listen` as socket addresses (validated at load).
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        parse_listen(&self.submission.tls_listen)
    }

    /// `mta.endpoints` split (validated at load).
    pub fn mta_endpoints(&self) -> Vec<HostPort> {
        self.mta
            .endpoints
            .iter()
            .filter_map(|e| HostPort::parse(e).ok())
            .collect()
    }
}

fn parse_listen(list: &[String]) -> Vec<SocketAddr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 253
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(ConfigError::invalid(
                "hostname",
                format!("`{h}` is not a host name (letters, digits, '.', '-')"),
            ));
        }
        let s = &self.submission;
        for (key, list) in [
            ("submission.starttls_listen", &s.starttls_listen),
            ("submission.tls_listen", &s.tls_listen),
        ] {
            for (i, a) in list.iter().enumerate() {
                a.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        format!("{key}[{i}]"),
                        format!("`{a}` is not an IP:port socket address"),
                    )
                })?;
            }
        }
        if s.starttls_listen.is_empty() && s.tls_listen.is_empty() {
            return Err(ConfigError::invalid(
                "submission.starttls_listen",
                "no listener: set submission.starttls_listen or submission.tls_listen",
            ));
        }
        if s.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "submission.max_message_size",
                "must be at least 1024 octets",
            ));
        }
        if s.max_recipients == 0 {
            return Err(ConfigError::invalid(
                "submission.max_recipients",
                "must be at least 1",
            ));
        }
        nonzero("submission.shutdown_timeout", s.shutdown_timeout)?;
        nonzero("submission.command_timeout", s.command_timeout)?;
        nonzero("submission.data_timeout", s.data_timeout)?;
        if s.max_errors == 0 {
            return Err(ConfigError::invalid(
                "submission.max_errors",
                "must be at least 1",
            ));
        }
        if s.greeting_delay >= s.command_timeout {
            return Err(ConfigError::invalid(
                "submission.greeting_delay",
                "must be shorter than submission.command_timeout",
            ));
        }
        nonzero("login_throttle.window", self.login_throttle.window)?;

        let d = &self.directory;
        match d.endpoint.parse::<tonic::transport::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "directory.endpoint",
                    format!("`{}` is not an https://host:port URL", d.endpoint),
                ));
            }
        }
        if d.server_name.is_empty() {
            return Err(ConfigError::invalid(
                "directory.server_name",
                "must not be empty",
            ));
        }
        nonzero("directory.timeout", d.timeout)?;

        let m = &self.mta;
        if m.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                "mta.endpoints",
                "at least one host:port is needed",
            ));
        }
        for (i, e) in m.endpoints.iter().enumerate() {
            HostPort::parse(e).map_err(|msg| {
                ConfigError::invalid(format!("mta.endpoints[{i}]"), format!("`{e}`: {msg}"))
            })?;
        }
        if m.server_name.is_empty() {
            return Err(ConfigError::invalid("mta.server_name", "must not be empty"));
        }
        nonzero("mta.refresh_interval", m.refresh_interval)?;
        nonzero("mta.connect_timeout", m.connect_timeout)?;
        nonzero("mta.submit_timeout", m.submit_timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
hostname = "msa.example.test"
log_format = "text"
[submission]
starttls_listen = ["127.0.0.1:1587"]
tls_listen = ["127.0.0.1:1465"]
max_message_size = 26214400
[tls]
ca = "var/certs/ca.pem"
cert = "var/certs/msa.pem"
key = "var/certs/msa.key"
[directory]
endpoint = "https://127.0.0.1:7101"
server_name = "mda"
[mta]
endpoints = ["127.0.0.1:7201"]
server_name = "mta"
"#;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msa.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn architecture_example_loads() {
        let c = load_str(EXAMPLE, &[]).unwrap();
        assert_eq!(c.hostname, "msa.example.test");
        assert_eq!(
            c.starttls_addrs(),
            vec!["127.0.0.1:1587".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.tls_addrs().len(), 1);
        assert_eq!(c.submission.max_message_size, 26_214_400);
        assert_eq!(
            c.mta_endpoints(),
            vec![HostPort {
                host: "127.0.0.1".into(),
                port: 7201
            }]
        );
        assert_eq!(c.mta.refresh_interval, Duration::from_secs(5));
        // Security defaults.
        assert_eq!(c.submission.command_timeout, Duration::from_secs(300));
        assert_eq!(c.submission.greeting_delay, Duration::ZERO);
        assert_eq!(c.submission.max_errors, 10);
        assert_eq!(
            (
                c.submission.max_connections,
                c.submission.max_connections_per_client
            ),
            (500, 20)
        );
        assert_eq!(c.login_throttle.window, Duration::from_secs(300));
        assert_eq!(
            (
                c.login_throttle.max_failures_per_client,
                c.login_throttle.max_failures_per_account
            ),
            (10, 5)
        );
    }

    #[test]
    fn env_overrides_apply() {
        let c = load_str(
            EXAMPLE,
            &[
                (
                    "CORREO_MSA__MTA__ENDPOINTS",
                    r#"["mta:7201", "[::1]:7202"]"#,
                ),
                ("CORREO_MSA__SUBMISSION__TLS_LISTEN", "[]"),
            ],
        )
        .unwrap();
        assert_eq!(c.mta_endpoints().len(), 2);
        assert_eq!(c.mta_endpoints()[1].lookup_target(), "[::1]:7202");
        assert!(c.tls_addrs().is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("CORREO_MSA__MTA__ENDPOINTS", r#"["mta"]"#)],
                "mta.endpoints[0]",
            ),
            (&[("CORREO_MSA__MTA__ENDPOINTS", "[]")], "mta.endpoints"),
            (
                &[("CORREO_MSA__SUBMISSION__STARTTLS_LISTEN", r#"["nope"]"#)],
                "submission.starttls_listen[0]",
            ),
            (
                &[("CORREO_MSA__DIRECTORY__ENDPOINT", "http://x:1")],
                "directory.endpoint",
            ),
            (&[("CORREO_MSA__HOSTNAME", "bad host")], "hostname"),
            (&[("CORREO_MSA__MTA__BOGUS", "1")], "bogus"),
            (
                &[("CORREO_MSA__MTA__REFRESH_INTERVAL", "0s")],
                "mta.refresh_interval",
            ),
            (
                &[("CORREO_MSA__SUBMISSION__COMMAND_TIMEOUT", "0s")],
                "submission.command_timeout",
            ),
            (
                &[("CORREO_MSA__SUBMISSION__GREETING_DELAY", "10m")],
                "submission.greeting_delay",
            ),
            (
                &[("CORREO_MSA__SUBMISSION__MAX_ERRORS", "0")],
                "submission.max_errors",
            ),
            (
                &[("CORREO_MSA__LOGIN_THROTTLE__WINDOW", "0s")],
                "login_throttle.window",
            ),
        ];
        for (env, key) in cases {
            let err = load_str(EXAMPLE, env).unwrap_err().to_string();
            assert!(err.contains(key), "{env:?}: {err}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(HostPort::parse("mta:7201").unwrap().host, "mta");
        assert_eq!(HostPort::parse("[::1]:7201").unwrap().host, "::1");
        assert!(HostPort::parse("mta").is_err());
        assert!(HostPort::parse("mta:0").is_err());
        assert!(HostPort::parse(":7201").is_err());
        assert!(HostPort::parse("https://mta:7201").is_err());
    }
}
