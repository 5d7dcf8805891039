//! Typed configuration: defaults, then a TOML file, then environment
//! overrides, then validation — all at start-up, with errors that name the
//! offending key (the chasquid `config.Load` order).
//!
//! Environment overrides use a prefix and `__` as the path separator:
//! `CORREO_MTA__SMTP__LISTEN=127.0.0.1:2525` sets `smtp.listen`. A value is
//! parsed as a TOML value when it is one (numbers, booleans, arrays) and is
//! taken as a string otherwise. The environment is injected as a list of
//! pairs, so tests never mutate the process environment (linkerd2-proxy).

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A validation failure for `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks a loaded configuration; reports the first bad value by key.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from an optional TOML file and the environment pairs that start
/// with `env_prefix` (e.g. `CORREO_MTA__`), then validates it. Keys missing
/// from both take `T`'s serde defaults.
pub fn load<T, I>(file: Option<&Path>, env_prefix: &str, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let (mut table, origin) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
            (table, path.display().to_string())
        }
        None => (toml::Table::new(), "(defaults)".to_string()),
    };
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(env_prefix) && k.len() > env_prefix.len())
        .collect();
    overrides.sort();
    for (var, value) in overrides {
        let path: Vec<String> = var[env_prefix.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        set_path(&mut table, &path, parse_env_value(&value)).map_err(|message| {
            ConfigError::Env {
                var: var.clone(),
                message,
            }
        })?;
    }
    let config: T = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: origin,
            message: e.to_string(),
        })?;
    config.validate()?;
    Ok(config)
}

/// Loads `T` with the real process environment.
pub fn load_from_process<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    load(file, env_prefix, std::env::vars())
}

fn parse_env_value(value: &str) -> toml::Value {
    // `key = <value>` parses only if the value is a TOML literal.
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Smtp {
        #[serde(default = "default_listen")]
        listen: String,
        #[serde(default)]
        max_recipients: u32,
    }
    fn default_listen() -> String {
        "127.0.0.1:25".into()
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        smtp: Smtp,
        #[serde(default)]
        names: Vec<String>,
    }
    impl Validate for Conf {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.smtp.max_recipients > 1000 {
                return Err(ConfigError::invalid("smtp.max_recipients", "at most 1000"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[smtp]\nmax_recipients = 5\n").unwrap();
        let c: Conf = load(
            Some(&path),
            "T__",
            env(&[
                ("T__SMTP__LISTEN", "0.0.0.0:2525"),
                ("T__NAMES", "[\"a\",\"b\"]"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.smtp.listen, "0.0.0.0:2525");
        assert_eq!(c.smtp.max_recipients, 5);
        assert_eq!(c.names, vec!["a", "b"]);
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let err =
            load::<Conf, _>(None, "T__", env(&[("T__SMTP__MAX_RECIPIENTS", "5000")])).unwrap_err();
        assert!(err.to_string().contains("smtp.max_recipients"), "{err}");
        let err = load::<Conf, _>(None, "T__", env(&[("T__SMTP__BOGUS", "1")])).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err =
            load::<Conf, _>(None, "T__", env(&[("T__SMTP__MAX_RECIPIENTS", "many")])).unwrap_err();
        assert!(err.to_string().contains("max_recipients"), "{err}");
    }
}
