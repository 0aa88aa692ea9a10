//! `[engagelab]`: EngageLab MA. Read through a file-shaped struct because `enabled` decides
//! whether `api_key` and `api_secret` are required.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use super::secret::{self, Secret};
use super::{ConfigError, value};

const DEFAULT_BASE_URL: &str = "https://ma-api.engagelab.com";

/// The identity a 3Dolphins contact id is registered as at EngageLab; sent as written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityName {
    #[default]
    UserId,
    AnonymousId,
    RegistrationId,
}

/// An enabled EngageLab destination.
#[derive(Debug, Clone, Serialize)]
pub struct EngagelabSettings {
    pub base_url: Url,
    pub api_key: Secret,
    pub api_secret: Secret,
    pub identity_name: IdentityName,
    pub requests_per_second: f64,
    /// The most requests in flight; the adaptive limit stays at or below it.
    pub max_in_flight: u32,
}

/// `[engagelab]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EngagelabSection {
    #[serde(default = "value::yes")]
    pub(super) enabled: bool,
    #[serde(default, deserialize_with = "value::optional_url")]
    base_url: Option<Url>,
    api_key: Option<Secret>,
    api_key_file: Option<PathBuf>,
    api_secret: Option<Secret>,
    api_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "identity_name")]
    identity_name: IdentityName,
    #[serde(default = "default_rate", deserialize_with = "value::rate")]
    requests_per_second: f64,
    #[serde(
        default = "default_max_in_flight",
        deserialize_with = "value::range::<_, 1, 1_024>"
    )]
    max_in_flight: u32,
}

/// Through serde's own enum error, which lists the allowed values; the `config` crate's
/// does not.
fn identity_name<'de, D: Deserializer<'de>>(d: D) -> Result<IdentityName, D::Error> {
    use serde::de::value::{Error, StrDeserializer};
    let written = String::deserialize(d)?;
    IdentityName::deserialize(StrDeserializer::<Error>::new(&written))
        .map_err(serde::de::Error::custom)
}

fn default_rate() -> f64 {
    10.0
}

/// The documented default (docs/configuration.md#engagelab), above OMI's: EngageLab takes
/// one request per contact.
fn default_max_in_flight() -> u32 {
    64
}

impl EngagelabSection {
    /// `None` when the section says `enabled = false`: a disabled destination needs no
    /// credentials, so none are read.
    pub(super) fn into_settings(self) -> Result<Option<EngagelabSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let base_url = match self.base_url {
            Some(url) => url,
            None => value::default_url("engagelab.base_url", DEFAULT_BASE_URL)?,
        };
        let required =
            |key: &str| ConfigError::key(key, "is required while engagelab.enabled = true");
        let api_key = secret::resolve(
            "engagelab.api_key",
            self.api_key,
            self.api_key_file.as_deref(),
        )?
        .ok_or_else(|| required("engagelab.api_key"))?;
        let api_secret = secret::resolve(
            "engagelab.api_secret",
            self.api_secret,
            self.api_secret_file.as_deref(),
        )?
        .ok_or_else(|| required("engagelab.api_secret"))?;
        Ok(Some(EngagelabSettings {
            base_url,
            api_key,
            api_secret,
            identity_name: self.identity_name,
            requests_per_second: self.requests_per_second,
            max_in_flight: self.max_in_flight,
        }))
    }
}
