//! The user's profile (`mua.toml`): who they are, which CA to trust, and
//! where the submission server and the mailbox API live.
//!
//! Found at `--profile FILE`, else `$CORREO_MUA_PROFILE`, else
//! `$XDG_CONFIG_HOME/correo/mua.toml` (`~/.config/correo/mua.toml`), then
//! overridden by `CORREO_MUA__…` variables (`CORREO_MUA__SUBMISSION__PORT=587`)
//! through `correo_runtime::config`. The environment is passed in, so tests
//! never touch the process environment.
//!
//! Defaults are those of a local `correo up`, so a profile can be as short as
//! `address` and `ca`.

use correo_runtime::config::{self, ConfigError, Validate};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override profile keys.
pub const ENV_PREFIX: &str = "CORREO_MUA__";
/// Environment variable naming the profile file.
pub const PROFILE_VAR: &str = "CORREO_MUA_PROFILE";

/// The loaded, validated profile.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The user's address: the From header, the envelope sender and the login.
    pub address: String,
    /// The private CA that signs the servers' certificates. Only this CA is
    /// trusted, for both SMTP submission and the mailbox API. A relative
    /// path is taken from the current directory, like the roles' configs.
    pub ca: PathBuf,
    #[serde(default)]
    pub submission: Submission,
    #[serde(default)]
    pub mailbox: MailboxEndpoint,
}

/// How TLS is used on the submission connection.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connect, then STARTTLS before AUTH (RFC 3207, port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465).
    Tls,
}

/// `[submission]`: the MSA.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    #[serde(default = "default_submission_host")]
    pub host: String,
    /// Defaults to 1587 for STARTTLS and 1465 for TLS (the ports of `correo up`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    /// Name the server's certificate must carry; defaults to `localhost`.
    #[serde(default = "default_submission_server_name")]
    pub server_name: String,
}

impl Default for Submission {
    fn default() -> Self {
        Submission {
            host: default_submission_host(),
            port: None,
            security: Security::default(),
            server_name: default_submission_server_name(),
        }
    }
}

impl Submission {
    /// The port to connect to, from the profile or the security mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Starttls => 1587,
            Security::Tls => 1465,
        })
    }
}

/// `[mailbox]`: the MDA's mailbox API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MailboxEndpoint {
    #[serde(default = "default_mailbox_endpoint")]
    pub endpoint: String,
    /// Name the MDA's certificate must carry.
    #[serde(default = "default_mailbox_server_name")]
    pub server_name: String,
}

impl Default for MailboxEndpoint {
    fn default() -> Self {
        MailboxEndpoint {
            endpoint: default_mailbox_endpoint(),
            server_name: default_mailbox_server_name(),
        }
    }
}

fn default_submission_host() -> String {
    "127.0.0.1".into()
}
fn default_submission_server_name() -> String {
    "localhost".into()
}
fn default_mailbox_endpoint() -> String {
    "https://127.0.0.1:7143".into()
}
fn default_mailbox_server_name() -> String {
    "mda".into()
}

impl Validate for Profile {
    fn validate(&self) -> Result<(), ConfigError> {
        if correo_smtp::Address::parse(&self.address).is_err() {
            return Err(ConfigError::invalid(
                "address",
                format!(
                    "`{}` is not a mail address like alice@example.test",
                    self.address
                ),
            ));
        }
        if self.ca.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "ca",
                "must name the CA certificate file (PEM)",
            ));
        }
        if self.submission.host.trim().is_empty() {
            return Err(ConfigError::invalid("submission.host", "must not be empty"));
        }
        if self.submission.port == Some(0) {
            return Err(ConfigError::invalid("submission.port", "must be 1-65535"));
        }
        if self.submission.server_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "submission.server_name",
                "must not be empty",
            ));
        }
        // The password travels on every mailbox call: never in clear text.
        if !self.mailbox.endpoint.starts_with("https://") {
            return Err(ConfigError::invalid(
                "mailbox.endpoint",
                format!(
                    "`{}` must start with https:// (the password is sent on every call)",
                    self.mailbox.endpoint
                ),
            ));
        }
        if self.mailbox.server_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "mailbox.server_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// Why no profile could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "no profile found at {path}: create it (see `mua --help`), pass --profile FILE, or set {PROFILE_VAR}"
    )]
    NotFound { path: PathBuf },
    #[error(
        "no profile: pass --profile FILE or set {PROFILE_VAR} (neither HOME nor XDG_CONFIG_HOME is set)"
    )]
    NoHome,
    #[error("profile: {0}")]
    Config(#[from] ConfigError),
}

/// Where the profile comes from, and whether it was asked for explicitly.
fn locate(
    explicit: Option<&Path>,
    env: &[(String, String)],
) -> Result<(PathBuf, bool), ProfileError> {
    if let Some(path) = explicit {
        return Ok((path.to_path_buf(), true));
    }
    let var = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    if let Some(path) = var(PROFILE_VAR) {
        return Ok((PathBuf::from(path), true));
    }
    let config_home = match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => Path::new(&home).join(".config"),
        (None, None) => return Err(ProfileError::NoHome),
    };
    Ok((config_home.join("correo").join("mua.toml"), false))
}

impl Profile {
    /// Loads the profile from `explicit` (the `--profile` flag) or the
    /// locations above, with the overrides found in `env`.
    pub fn load(
        explicit: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Profile, ProfileError> {
        let (path, asked) = locate(explicit, env)?;
        let has_overrides = env.iter().any(|(k, _)| k.starts_with(ENV_PREFIX));
        // A missing default file is fine when the environment carries the
        // whole profile (containers, CI); a file the user named must exist.
        let file = if asked || path.exists() {
            Some(path.as_path())
        } else if has_overrides {
            None
        } else {
            return Err(ProfileError::NotFound { path });
        };
        Ok(config::load(file, ENV_PREFIX, env.iter().cloned())?)
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

    const SAMPLE: &str = r#"
address = "alice@example.test"
ca = "var/certs/ca.pem"
[submission]
host = "127.0.0.1"
port = 1587
security = "starttls"
server_name = "localhost"
[mailbox]
endpoint = "https://127.0.0.1:7143"
server_name = "mda"
"#;

    #[test]
    fn loads_the_documented_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mua.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        let p = Profile::load(Some(&path), &[]).unwrap();
        assert_eq!(p.address, "alice@example.test");
        assert_eq!(p.submission.port(), 1587);
        assert_eq!(p.submission.security, Security::Starttls);
        assert_eq!(p.mailbox.server_name, "mda");
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mua.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        let p = Profile::load(
            Some(&path),
            &env(&[
                ("CORREO_MUA__SUBMISSION__PORT", "1465"),
                ("CORREO_MUA__SUBMISSION__SECURITY", "tls"),
                ("CORREO_MUA__ADDRESS", "bob@example.test"),
                ("CORREO_MUA_PROFILE", "/nonexistent"), // --profile wins
            ]),
        )
        .unwrap();
        assert_eq!(p.address, "bob@example.test");
        assert_eq!(p.submission.port(), 1465);
        assert_eq!(p.submission.security, Security::Tls);
    }

    #[test]
    fn located_by_variable_then_by_home() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named.toml");
        std::fs::write(&named, SAMPLE).unwrap();
        let p = Profile::load(
            None,
            &env(&[("CORREO_MUA_PROFILE", named.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(p.address, "alice@example.test");

        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/correo")).unwrap();
        std::fs::write(
            home.join(".config/correo/mua.toml"),
            SAMPLE.replace("alice", "carol"),
        )
        .unwrap();
        let p = Profile::load(None, &env(&[("HOME", home.to_str().unwrap())])).unwrap();
        assert_eq!(p.address, "carol@example.test");
    }

    #[test]
    fn defaults_and_env_only_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::load(
            None,
            &env(&[
                ("HOME", dir.path().to_str().unwrap()),
                ("CORREO_MUA__ADDRESS", "dave@example.test"),
                ("CORREO_MUA__CA", "/tmp/ca.pem"),
                ("CORREO_MUA__SUBMISSION__SECURITY", "tls"),
            ]),
        )
        .unwrap();
        assert_eq!(p.submission.port(), 1465);
        assert_eq!(p.submission.server_name, "localhost");
        assert_eq!(p.mailbox.endpoint, "https://127.0.0.1:7143");
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = Profile::load(None, &env(&[("HOME", dir.path().to_str().unwrap())])).unwrap_err();
        assert!(matches!(err, ProfileError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("--profile"), "{err}");

        let path = dir.path().join("mua.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        let err = Profile::load(
            Some(&path),
            &env(&[("CORREO_MUA__MAILBOX__ENDPOINT", "http://127.0.0.1:7143")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mailbox.endpoint"), "{err}");
        let err = Profile::load(
            Some(&path),
            &env(&[("CORREO_MUA__ADDRESS", "not-an-address")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`address`"), "{err}");
        let err = Profile::load(
            Some(&path),
            &env(&[("CORREO_MUA__SUBMISSION__SECURITY", "none")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("security") || err.to_string().contains("none"),
            "{err}"
        );
    }
}
