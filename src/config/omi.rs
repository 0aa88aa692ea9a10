//! `[omi]`: OMI CRM. Read through a file-shaped struct because `enabled` decides whether
//! credentials are required, and the credential is one of two keys (token or api_key).

use std::path::PathBuf;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::secret::{self, REDACTED, Secret};
use super::{ConfigError, value};

const DEFAULT_BASE_URL: &str = "https://public-v1.omicall.com";

/// The tag a contact deleted at the source gets under `on_source_delete = "tag"`.
const DEFAULT_DELETED_TAG: &str = "deleted-in-3dolphins";

/// What a contact deleted at 3Dolphins becomes at OMI (docs/delivery.md#deletions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSourceDelete {
    /// Nothing is sent for a deletion.
    #[default]
    Ignore,
    /// The contact is updated with `deleted_tag`, which it loses if it comes back.
    Tag,
}

/// `"ignore"` or `"tag"`, read as text so a wrong value gets a message naming both.
fn on_source_delete<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OnSourceDelete, D::Error> {
    let value = String::deserialize(d)?;
    match value.trim() {
        "ignore" => Ok(OnSourceDelete::Ignore),
        "tag" => Ok(OnSourceDelete::Tag),
        _ => Err(serde::de::Error::custom(format!(
            "{value:?} is not a deletion policy: use \"ignore\" or \"tag\""
        ))),
    }
}

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
    pub on_source_delete: OnSourceDelete,
    /// Added to a contact deleted at the source when `on_source_delete = "tag"`.
    pub deleted_tag: String,
}

impl OmiSettings {
    /// The tag deleted contacts carry, when deletions reach OMI at all.
    pub fn deletion_tag(&self) -> Option<&str> {
        (self.on_source_delete == OnSourceDelete::Tag).then_some(self.deleted_tag.as_str())
    }
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
    #[serde(default, deserialize_with = "on_source_delete")]
    on_source_delete: OnSourceDelete,
    #[serde(default = "default_deleted_tag")]
    deleted_tag: String,
}

fn default_deleted_tag() -> String {
    DEFAULT_DELETED_TAG.to_owned()
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
        let deleted_tag = self.deleted_tag.trim().to_owned();
        if deleted_tag.is_empty() {
            return Err(ConfigError::key(
                "omi.deleted_tag",
                "must not be empty (it marks contacts deleted at the source)",
            ));
        }
        // A live contact carrying the tag would read as deleted, and returning contacts would
        // have it removed and added in one update.
        if self.on_source_delete == OnSourceDelete::Tag && self.tags.contains(&deleted_tag) {
            return Err(ConfigError::key(
                "omi.deleted_tag",
                format!("{deleted_tag:?} is also in omi.tags; pick a tag no live contact carries"),
            ));
        }
        Ok(Some(OmiSettings {
            base_url,
            auth,
            batch_size: self.batch_size,
            requests_per_second: self.requests_per_second,
            max_in_flight: self.max_in_flight,
            tags: self.tags,
            on_source_delete: self.on_source_delete,
            deleted_tag,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn omi(keys: &str) -> Result<Option<OmiSettings>, ConfigError> {
        let toml = format!(
            "[source]\nbase_url = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
             [omi]\ntoken = \"omi-secret\"\n{keys}"
        );
        Settings::from_toml(&toml, None).map(|s| s.omi)
    }

    fn refused(keys: &str) -> (String, String) {
        match omi(keys).unwrap_err() {
            ConfigError::Key { key, message } => (key, message),
            ConfigError::Other(text) => panic!("expected a key error, got {text}"),
        }
    }

    #[test]
    fn deletions_are_ignored_by_default_with_the_spec_tag() {
        let settings = omi("").unwrap().unwrap();
        assert_eq!(settings.on_source_delete, OnSourceDelete::Ignore);
        assert_eq!(settings.deleted_tag, "deleted-in-3dolphins");
        assert_eq!(settings.deletion_tag(), None);
    }

    #[test]
    fn the_tag_policy_names_its_tag() {
        let settings = omi("on_source_delete = \"tag\"\ndeleted_tag = \" gone \"\n")
            .unwrap()
            .unwrap();
        assert_eq!(settings.on_source_delete, OnSourceDelete::Tag);
        assert_eq!(settings.deletion_tag(), Some("gone"));
        let shown = Settings::from_toml(
            "[source]\nbase_url = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
             [omi]\ntoken = \"omi-secret\"\non_source_delete = \"tag\"\n",
            None,
        )
        .unwrap()
        .to_redacted_toml();
        assert!(shown.contains("on_source_delete = \"tag\""), "{shown}");
        assert!(
            shown.contains("deleted_tag = \"deleted-in-3dolphins\""),
            "{shown}"
        );
    }

    #[test]
    fn an_unknown_policy_is_refused_naming_the_key_and_the_choices() {
        let (key, message) = refused("on_source_delete = \"delete\"\n");
        assert_eq!(key, "omi.on_source_delete");
        assert!(
            message.contains("\"delete\"") && message.contains("\"ignore\" or \"tag\""),
            "{message}"
        );
    }

    #[test]
    fn an_empty_deleted_tag_is_refused() {
        for tag in ["\"\"", "\"   \""] {
            let (key, message) = refused(&format!("deleted_tag = {tag}\n"));
            assert_eq!(key, "omi.deleted_tag", "{tag}");
            assert!(message.contains("empty"), "{message}");
        }
    }

    #[test]
    fn a_deleted_tag_that_every_contact_carries_is_refused() {
        let keys =
            "tags = [\"crm\", \"gone\"]\non_source_delete = \"tag\"\ndeleted_tag = \"gone\"\n";
        assert_eq!(refused(keys).0, "omi.deleted_tag");
        // Under "ignore" the tag is never sent, so it may be anything.
        assert!(omi("tags = [\"gone\"]\ndeleted_tag = \"gone\"\n").is_ok());
    }
}
