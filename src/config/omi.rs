//! `[omi]`: OMI CRM. Read through a file-shaped struct because `enabled` decides whether
//! credentials are required, and the credential is one of two keys (token or api_key).

use std::path::PathBuf;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::secret::{self, REDACTED, Secret};
use super::{ConfigError, value};

const DEFAULT_BASE_URL: &str = "https://public-v1.omicall.com";

/// How OMI is authenticated: a static bearer token, or an API key exchanged for 24 h tokens.
#[derive(Debug, Clone)]
pub enum OmiAuth {
    Token(Secret),
    ApiKey(Secret),
}

impl Serialize for OmiAuth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Self::Token(_) => map.serialize_entry("token", REDACTED)?,
            Self::ApiKey(_) => map.serialize_entry("api_key", REDACTED)?,
        }
        map.end()
    }
}

/// An enabled OMI destination.
#[derive(Debug, Clone, Serialize)]
pub struct OmiSettings {
    pub base_url: Url,
    #[serde(flatten)]
    pub auth: OmiAuth,
    pub batch_size: u32,
    pub requests_per_second: f64,
    /// The most requests in flight; the adaptive limit stays at or below it.
    pub max_in_flight: u32,
    pub tags: Vec<String>,
}

/// `[omi]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OmiSection {
    #[serde(default = "value::yes")]
    pub(super) enabled: bool,
    #[serde(default, deserialize_with = "value::optional_url")]
    base_url: Option<Url>,
    token: Option<Secret>,
    token_file: Option<PathBuf>,
    api_key: Option<Secret>,
    api_key_file: Option<PathBuf>,
    #[serde(
        default = "default_batch_size",
        deserialize_with = "value::range::<_, 1, 1_000>"
    )]
    batch_size: u32,
    #[serde(default = "default_rate", deserialize_with = "value::rate")]
    requests_per_second: f64,
    #[serde(
        default = "default_max_in_flight",
        deserialize_with = "value::range::<_, 1, 1_024>"
    )]
    max_in_flight: u32,
    #[serde(default, deserialize_with = "value::list_or_comma_separated")]
    tags: Vec<String>,
}

fn default_batch_size() -> u32 {
    50
}

fn default_rate() -> f64 {
    5.0
}

/// The documented default (docs/configuration.md#omi): OMI batches, so few requests cover a
/// high contact rate.
fn default_max_in_flight() -> u32 {
    32
}

impl OmiSection {
    /// `None` when the section says `enabled = false`: a disabled destination needs no
    /// credentials, so none are read.
    pub(super) fn into_settings(self) -> Result<Option<OmiSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let base_url = match self.base_url {
            Some(url) => url,
            None => value::default_url("omi.base_url", DEFAULT_BASE_URL)?,
        };
        let token = secret::resolve("omi.token", self.token, self.token_file.as_deref())?;
        let api_key = secret::resolve("omi.api_key", self.api_key, self.api_key_file.as_deref())?;
        let auth = match (token, api_key) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "omi.token",
                    "set either a token or an api_key, not both",
                ));
            }
            (Some(token), None) => OmiAuth::Token(token),
            (None, Some(key)) => OmiAuth::ApiKey(key),
            (None, None) => {
                return Err(ConfigError::key(
                    "omi.token",
                    "is required (or omi.api_key) while omi.enabled = true",
                ));
            }
        };
        Ok(Some(OmiSettings {
            base_url,
            auth,
            batch_size: self.batch_size,
            requests_per_second: self.requests_per_second,
            max_in_flight: self.max_in_flight,
            tags: self.tags,
        }))
    }
}
