//! `mda.toml`: defaults, then the file, then `CORREO_MDA__…` environment
//! overrides, then validation naming the bad key (see docs/ARCHITECTURE.md).

use correo_runtime::config::{ConfigError, Validate};
use correo_runtime::telemetry::LogFormat;
use correo_runtime::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override `mda.toml`.
pub const ENV_PREFIX: &str = "CORREO_MDA__";

/// The MDA's whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Holds `accounts.json` and `mail/<domain>/<user>/Maildir`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// This host's name; part of every Maildir unique name.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub grpc: Grpc,
    #[serde(default)]
    pub mailbox: Mailbox,
    #[serde(default)]
    pub store: Store,
    #[serde(default = "default_tls")]
    pub tls: TlsFiles,
    /// `[metrics] listen`: the Prometheus `/metrics` endpoint; none when absent.
    #[serde(default)]
    pub metrics: correo_runtime::metrics::MetricsConfig,
}

/// The internal listener: Delivery, Directory, health, reflection (mTLS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grpc {
    #[serde(default = "default_grpc_listen")]
    pub listen: SocketAddr,
}

/// The user-facing listener: the Mailbox API (TLS, password per call).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    #[serde(default = "default_mailbox_listen")]
    pub listen: SocketAddr,
}

/// How the Maildir store makes files durable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Store {
    #[serde(default)]
    pub batch_sync: BatchSync,
}

/// How the files of one delivery call (`Deliver` or `DeliverBatch`)
/// reach the disk.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchSync {
    /// One syncfs(2) of the file system for the whole batch (the
    /// default, and the cheapest), which also waits for every other
    /// writer of that file system.
    #[default]
    Filesystem,
    /// One fsync per file, one after the other: for a mail store that
    /// shares its file system with heavy writers.
    Files,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            listen: default_grpc_listen(),
        }
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            listen: default_mailbox_listen(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("var/mda")
}
fn default_hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7101))
}
fn default_mailbox_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7143))
}
fn default_tls() -> TlsFiles {
    TlsFiles::in_dir(Path::new("var/certs"), "mda")
}

impl Config {
    /// Loads the configuration from an optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        correo_runtime::config::load_from_process(file, ENV_PREFIX)
    }

    /// Loads with an injected environment (for tests).
    pub fn load_with_env<I>(file: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        correo_runtime::config::load(file, ENV_PREFIX, env)
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if crate::address::validate_domain(&self.hostname).is_none() {
            return Err(ConfigError::invalid(
                "hostname",
                format!("`{}` is not a valid host name", self.hostname),
            ));
        }
        let (grpc, mailbox) = (self.grpc.listen, self.mailbox.listen);
        if grpc == mailbox && grpc.port() != 0 {
            return Err(ConfigError::invalid(
                "mailbox.listen",
                "must differ from grpc.listen (the two listeners trust clients differently)",
            ));
        }
        for (key, path) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_documented_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mda.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "var/mda"
hostname = "mda.example.test"
log_format = "json"
[grpc]
listen = "127.0.0.1:7101"
[mailbox]
listen = "127.0.0.1:7143"
[store]
batch_sync = "files"
[tls]
ca = "var/certs/ca.pem"
cert = "var/certs/mda.pem"
key = "var/certs/mda.key"
"#,
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            env(&[("CORREO_MDA__MAILBOX__LISTEN", "0.0.0.0:7143")]),
        )
        .unwrap();
        assert_eq!(c.hostname, "mda.example.test");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.grpc.listen, "127.0.0.1:7101".parse().unwrap());
        assert_eq!(c.mailbox.listen, "0.0.0.0:7143".parse().unwrap());
        assert_eq!(c.tls.key, PathBuf::from("var/certs/mda.key"));
        assert_eq!(c.store.batch_sync, BatchSync::Files);
    }

    #[test]
    fn defaults_match_the_architecture() {
        let c = Config::load_with_env(None, env(&[("CORREO_MDA__HOSTNAME", "h.test")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("var/mda"));
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:7101");
        assert_eq!(c.mailbox.listen.to_string(), "127.0.0.1:7143");
        assert_eq!(c.tls, TlsFiles::in_dir(Path::new("var/certs"), "mda"));
        assert_eq!(c.store.batch_sync, BatchSync::Filesystem);
    }

    #[test]
    fn errors_name_the_key() {
        for (var, value, key) in [
            ("CORREO_MDA__GRPC__LISTEN", "localhost", "grpc.listen"),
            (
                "CORREO_MDA__MAILBOX__LISTEN",
                "127.0.0.1:7101",
                "mailbox.listen",
            ),
            ("CORREO_MDA__HOSTNAME", "bad host", "hostname"),
            ("CORREO_MDA__DATA_DIR", "\"\"", "data_dir"),
            ("CORREO_MDA__GRPC__BOGUS", "1", "bogus"),
            ("CORREO_MDA__LOG_FORMAT", "xml", "log_format"),
            ("CORREO_MDA__STORE__BATCH_SYNC", "never", "store.batch_sync"),
        ] {
            let mut e = env(&[(var, value)]);
            e.push(("CORREO_MDA__HOSTNAME".into(), "h.test".into()));
            if var == "CORREO_MDA__HOSTNAME" {
                e.pop();
            }
            let err = Config::load_with_env(None, e).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }
}
