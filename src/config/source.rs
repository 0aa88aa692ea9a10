//! `[source]`: the 3Dolphins API. Read through a file-shaped struct because its credentials
//! are a choice across keys (a token, or username + password), each inline or from a file.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::secret::{self, REDACTED, Secret};
use super::{ConfigError, value};

/// How a client proves who it is: a bearer token handed over as is, or credentials exchanged
/// for one.
#[derive(Debug, Clone)]
pub enum SourceAuth {
    Token(Secret),
    Login { username: String, password: Secret },
}

impl Serialize for SourceAuth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Self::Token(_) => map.serialize_entry("token", REDACTED)?,
            Self::Login { username, .. } => {
                map.serialize_entry("username", username)?;
                map.serialize_entry("password", REDACTED)?;
            }
        }
        map.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceSettings {
    pub base_url: Url,
    #[serde(flatten)]
    pub auth: SourceAuth,
    pub page_size: u32,
    /// Records of the previous page read again at the start of the next one, so a record that
    /// shifts back when earlier ones are deleted mid-pass is not skipped.
    pub page_overlap: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub requests_per_second: f64,
}

/// `[source]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceSection {
    #[serde(default, deserialize_with = "value::optional_url")]
    base_url: Option<Url>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    #[serde(
        default = "default_page_size",
        deserialize_with = "value::range::<_, 1, 10_000>"
    )]
    page_size: u32,
    #[serde(
        default = "default_page_overlap",
        deserialize_with = "value::range::<_, 0, 1_000>"
    )]
    page_overlap: u32,
    #[serde(
        default = "default_poll_interval",
        deserialize_with = "value::positive"
    )]
    poll_interval: Duration,
    #[serde(default = "default_rate", deserialize_with = "value::rate")]
    requests_per_second: f64,
}

fn default_page_size() -> u32 {
    100
}

fn default_page_overlap() -> u32 {
    5
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_rate() -> f64 {
    5.0
}

impl SourceSection {
    pub(super) fn into_settings(self) -> Result<SourceSettings, ConfigError> {
        let base_url = self.base_url.ok_or_else(missing_base_url)?;
        let token = secret::resolve("source.token", self.token, self.token_file.as_deref())?;
        let password = secret::resolve(
            "source.password",
            self.password,
            self.password_file.as_deref(),
        )?;
        let username = self.username.filter(|u| !u.trim().is_empty());
        let auth = match (token, username, password) {
            (Some(token), None, None) => SourceAuth::Token(token),
            (Some(_), _, _) => {
                return Err(ConfigError::key(
                    "source.token",
                    "set either a token or username/password, not both",
                ));
            }
            (None, Some(username), Some(password)) => SourceAuth::Login { username, password },
            (None, Some(_), None) => {
                return Err(ConfigError::key(
                    "source.password",
                    "is required with source.username",
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::key(
                    "source.username",
                    "is required with source.password",
                ));
            }
            (None, None, None) => {
                return Err(ConfigError::key(
                    "source.token",
                    "is required (or source.username and source.password)",
                ));
            }
        };
        Ok(SourceSettings {
            base_url,
            auth,
            page_size: self.page_size,
            page_overlap: self.page_overlap,
            poll_interval: self.poll_interval,
            requests_per_second: self.requests_per_second,
        })
    }
}

pub(super) fn missing_base_url() -> ConfigError {
    ConfigError::key("source.base_url", "is required (the 3Dolphins API base)")
}
