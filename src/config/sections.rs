//! The small sections (`database`, `normalize`, `retry`, `http`, `admin`, `log`): each deserializes
//! straight into its typed settings, the defaults of docs/configuration.md filling what is left
//! out.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ConfigError, value};
use crate::domain::Region;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(deserialize_with = "non_empty")]
    pub url: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/contact-sync.db".to_owned(),
        }
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    if value.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(value)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeSettings {
    #[serde(
        deserialize_with = "value::region",
        serialize_with = "value::serialize_region"
    )]
    pub default_region: Region,
}

impl Default for NormalizeSettings {
    fn default() -> Self {
        Self {
            default_region: Region::ID,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(
        deserialize_with = "value::positive",
        serialize_with = "humantime_serde::serialize"
    )]
    pub initial_backoff: Duration,
    #[serde(
        deserialize_with = "value::positive",
        serialize_with = "humantime_serde::serialize"
    )]
    pub max_backoff: Duration,
    #[serde(deserialize_with = "value::range::<_, 1, 1_000>")]
    pub max_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl RetrySettings {
    /// The one check across two keys of this section.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_backoff > self.max_backoff {
            return Err(ConfigError::key(
                "retry.initial_backoff",
                "must not be longer than retry.max_backoff",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(
        deserialize_with = "value::positive",
        serialize_with = "humantime_serde::serialize"
    )]
    pub timeout: Duration,
    /// Allow `http://` base URLs to hosts other than loopback (secrets then travel in clear).
    pub allow_insecure: bool,
    /// Bytes of one HTTP answer read at most; a larger answer is refused.
    #[serde(deserialize_with = "value::size")]
    pub max_body: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            allow_insecure: false,
            max_body: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// `None` when `listen = ""` disables the admin server.
    #[serde(
        deserialize_with = "value::listen",
        serialize_with = "value::serialize_listen"
    )]
    pub listen: Option<SocketAddr>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Unset: `pretty` when stderr is a terminal, `json` otherwise (src/telemetry.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// A `tracing` level or filter (`info`, `contact_sync=debug,warn`).
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: None,
            level: "info".to_owned(),
        }
    }
}

fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let level = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| {
            serde::de::Error::custom(format!("{level:?} is not a valid level or filter: {e}"))
        })?;
    Ok(level)
}
