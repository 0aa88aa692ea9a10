//! Typed settings: a TOML file under `CONTACT_SYNC__SECTION__KEY` variables, validated before
//! the daemon starts. One submodule per section (`sections`: the small ones; `value`: parsers).

mod engagelab;
mod omi;
mod secret;
mod sections;
mod source;
mod value;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use engagelab::{EngagelabSettings, IdentityName};
pub use omi::{OmiAuth, OmiSettings, OnSourceDelete};
pub use secret::Secret;
pub use sections::{
    AdminSettings, DatabaseSettings, HttpSettings, LogFormat, LogSettings, NormalizeSettings,
    RetrySettings,
};
pub use source::{SourceAuth, SourceSettings};

use crate::domain::Destination;

const ENV_PREFIX: &str = "CONTACT_SYNC";

/// A configuration problem, always naming the key it is about. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("config: {0}")]
    Other(String),
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything the daemon runs with. A destination is `None` when its section is absent or
/// says `enabled = false`; when present, its credentials are there.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub source: SourceSettings,
    pub normalize: NormalizeSettings,
    pub omi: Option<OmiSettings>,
    pub engagelab: Option<EngagelabSettings>,
    pub retry: RetrySettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

/// The file as written, after the environment overlay. `deny_unknown_fields` makes a typo an
/// error instead of a silent default. The small sections are already their settings; the
/// three with credentials are file-shaped until their cross-key rules are applied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    #[serde(default)]
    database: DatabaseSettings,
    source: Option<source::SourceSection>,
    #[serde(default)]
    normalize: NormalizeSettings,
    omi: Option<omi::OmiSection>,
    engagelab: Option<engagelab::EngagelabSection>,
    #[serde(default)]
    retry: RetrySettings,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    admin: AdminSettings,
    #[serde(default)]
    log: LogSettings,
}

impl FileSettings {
    /// A present destination section is enabled unless it says `enabled = false`.
    fn destinations(&self) -> Vec<Destination> {
        let mut out = Vec::new();
        if self.omi.as_ref().is_some_and(|o| o.enabled) {
            out.push(Destination::Omi);
        }
        if self.engagelab.as_ref().is_some_and(|e| e.enabled) {
            out.push(Destination::Engagelab);
        }
        out
    }
}

/// What the read-only commands (`status`, `dead-letters`) need: where the database is and
/// which destinations are enabled. No secret is read, so they work from an operator's shell
/// even where the secrets are readable by the service alone (systemd credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub database_url: String,
    pub destinations: Vec<Destination>,
}

impl StoreSettings {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = read_file(config_file(path)?, None)?;
        Ok(Self {
            destinations: file.destinations(),
            database_url: file.database.url,
        })
    }
}

fn config_file(
    path: &Path,
) -> Result<config::File<config::FileSourceFile, config::FileFormat>, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Other(format!(
            "config file {} does not exist",
            path.display()
        )));
    }
    Ok(config::File::from(path).format(config::FileFormat::Toml))
}

/// The file (if any) layered under `CONTACT_SYNC__…` variables (`env`, else the process's),
/// deserialized; no secret file is read yet.
fn read_file<S>(
    file: S,
    env: Option<config::Map<String, String>>,
) -> Result<FileSettings, ConfigError>
where
    S: config::Source + Send + Sync + 'static,
{
    // Values stay strings: `007` must remain `007` for a username or a secret. Numeric and
    // boolean keys still parse, because the `config` crate converts a string on demand.
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(false)
        .source(env);
    config::Config::builder()
        .add_source(file)
        .add_source(environment)
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(describe_config_error)
}

impl Settings {
    /// Load the TOML file at `path` with environment overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(read_file(config_file(path)?, None)?)
    }

    /// Parse TOML text (no file), with the given environment instead of the process's.
    /// Used by tests and the demo.
    pub fn from_toml(
        toml: &str,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let source = config::File::from_str(toml, config::FileFormat::Toml);
        Self::from_file(read_file(source, Some(env.unwrap_or_default()))?)
    }

    fn from_file(file: FileSettings) -> Result<Self, ConfigError> {
        let settings = Settings {
            source: file
                .source
                .ok_or_else(source::missing_base_url)?
                .into_settings()?,
            omi: file
                .omi
                .map(omi::OmiSection::into_settings)
                .transpose()?
                .flatten(),
            engagelab: file
                .engagelab
                .map(engagelab::EngagelabSection::into_settings)
                .transpose()?
                .flatten(),
            database: file.database,
            normalize: file.normalize,
            retry: file.retry,
            http: file.http,
            admin: file.admin,
            log: file.log,
        };
        settings.retry.validate()?;
        if !settings.http.allow_insecure {
            refuse_cleartext("source.base_url", &settings.source.base_url)?;
            if let Some(omi) = &settings.omi {
                refuse_cleartext("omi.base_url", &omi.base_url)?;
            }
            if let Some(engagelab) = &settings.engagelab {
                refuse_cleartext("engagelab.base_url", &engagelab.base_url)?;
            }
        }
        Ok(settings)
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Every API call carries a secret (a bearer token, OMI's `?apiKey=`, EngageLab's Basic
/// header): `http://` is only allowed where nothing leaves the machine.
fn refuse_cleartext(key: &str, url: &url::Url) -> Result<(), ConfigError> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(ConfigError::key(
            key,
            format!(
                "http:// to {} would send credentials in clear; use https:// \
                 (or set http.allow_insecure = true)",
                url.host_str().unwrap_or("?")
            ),
        ));
    }
    Ok(())
}

/// The `config` crate ends its messages with "for key `section.key`" and names an unknown
/// field only by itself; turn both into one error that names the full key.
fn describe_config_error(error: config::ConfigError) -> ConfigError {
    let text = error.to_string();
    let (message, at) = match text.rsplit_once(" for key `") {
        Some((message, rest)) => (message, rest.trim_end_matches('`')),
        None => (text.as_str(), ""),
    };
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match (unknown, at) {
        (Some(field), "") => ConfigError::key(field, "unknown key"),
        (Some(field), section) => ConfigError::key(format!("{section}.{field}"), "unknown key"),
        (None, "") => ConfigError::Other(text),
        (None, key) => ConfigError::key(key, message),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Region;

    const MINIMAL: &str = r#"
        [source]
        base_url = "http://127.0.0.1:1/dolphin/apiv1"
        token = "src-secret-token"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, .. } => key,
            ConfigError::Other(text) => panic!("expected a key error, got {text}"),
        }
    }

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let s = Settings::from_toml(MINIMAL, None).unwrap();
        assert_eq!(s.source.page_size, 100);
        assert_eq!(s.source.poll_interval, Duration::from_secs(300));
        assert_eq!(s.retry.max_attempts, 12);
        assert_eq!(s.retry.max_backoff, Duration::from_secs(300));
        assert_eq!(s.http.timeout, Duration::from_secs(30));
        assert_eq!(s.http.max_body, 16 << 20);
        assert_eq!(s.normalize.default_region, Region::ID);
        assert!(s.omi.is_none() && s.engagelab.is_none());
        assert_eq!(s.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.log.format, None);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let toml = format!("{MINIMAL}\npage_sise = 5\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "source.page_sise"
        );
        let toml = format!("{MINIMAL}\n[retry]\nmax_atempts = 3\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "retry.max_atempts"
        );
        let toml = format!("{MINIMAL}\n[sorce]\nx = 1\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "sorce"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let s = Settings::from_toml(
            MINIMAL,
            env(&[
                ("CONTACT_SYNC__SOURCE__PAGE_SIZE", "250"),
                ("CONTACT_SYNC__OMI__TOKEN", "omi-secret"),
                ("CONTACT_SYNC__OMI__TAGS", "a,b"),
                ("CONTACT_SYNC__RETRY__MAX_BACKOFF", "90s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.source.page_size, 250);
        assert_eq!(s.omi.unwrap().tags, vec!["a", "b"]);
        assert_eq!(s.retry.max_backoff, Duration::from_secs(90));
    }

    #[test]
    fn environment_strings_stay_verbatim() {
        let s = Settings::from_toml(
            "[source]\nbase_url = \"http://127.0.0.1:1/\"\npassword = \"p\"\n",
            env(&[
                ("CONTACT_SYNC__SOURCE__USERNAME", "007"),
                ("CONTACT_SYNC__SOURCE__PASSWORD", "0x10"),
                ("CONTACT_SYNC__OMI__API_KEY", "true"),
                ("CONTACT_SYNC__OMI__TAGS", "1e3"),
                ("CONTACT_SYNC__OMI__ENABLED", "true"),
                ("CONTACT_SYNC__ENGAGELAB__ENABLED", "false"),
                ("CONTACT_SYNC__SOURCE__REQUESTS_PER_SECOND", "2.5"),
            ]),
        )
        .unwrap();
        match &s.source.auth {
            SourceAuth::Login { username, password } => {
                assert_eq!(username, "007");
                assert_eq!(secrecy::ExposeSecret::expose_secret(password), "0x10");
            }
            other => panic!("unexpected {other:?}"),
        }
        let omi = s.omi.as_ref().unwrap();
        match &omi.auth {
            OmiAuth::ApiKey(key) => {
                assert_eq!(secrecy::ExposeSecret::expose_secret(key), "true")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(omi.tags, vec!["1e3"]);
        assert!(s.engagelab.is_none());
        assert_eq!(s.source.requests_per_second, 2.5);
    }

    #[test]
    fn cleartext_to_a_remote_host_is_refused_unless_allowed() {
        for (toml, key) in [
            (
                "[source]\nbase_url = \"http://example.com/\"\ntoken = \"t\"\n",
                "source.base_url",
            ),
            (
                &format!("{MINIMAL}[omi]\ntoken = \"t\"\nbase_url = \"http://10.0.0.8\"\n"),
                "omi.base_url",
            ),
            (
                &format!(
                    "{MINIMAL}[engagelab]\napi_key = \"k\"\napi_secret = \"s\"\nbase_url = \"http://[2001:db8::1]:8080\"\n"
                ),
                "engagelab.base_url",
            ),
        ] {
            assert_eq!(
                key_of(Settings::from_toml(toml, None).unwrap_err()),
                key,
                "{toml}"
            );
            let allowed = format!("{toml}\n[http]\nallow_insecure = true\n");
            assert!(Settings::from_toml(&allowed, None).is_ok(), "{allowed}");
        }
        for url in [
            "http://127.0.0.1:9/",
            "http://127.8.9.10/",
            "http://[::1]:9/",
            "http://LOCALHOST:9/",
            "https://example.com/",
        ] {
            let toml = format!("[source]\nbase_url = \"{url}\"\ntoken = \"t\"\n");
            assert!(Settings::from_toml(&toml, None).is_ok(), "{url}");
        }
    }

    #[test]
    fn secret_file_is_read_and_trailing_newline_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let toml = format!(
            "[source]\nbase_url = \"http://127.0.0.1:1/\"\nusername = \"u\"\npassword_file = {:?}\n",
            path.display().to_string()
        );
        let s = Settings::from_toml(&toml, None).unwrap();
        match s.source.auth {
            SourceAuth::Login { password, .. } => {
                assert_eq!(secrecy::ExposeSecret::expose_secret(&password), "hunter2")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn secret_and_secret_file_together_are_rejected() {
        let toml = format!("{MINIMAL}token_file = \"/nonexistent\"\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "source.token_file"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[source]\nbase_url = \"ftp://x\"\ntoken = \"t\"\n",
                "source.base_url",
            ),
            (&format!("{MINIMAL}page_size = 0\n"), "source.page_size"),
            (
                &format!("{MINIMAL}requests_per_second = -1.0\n"),
                "source.requests_per_second",
            ),
            (
                &format!("{MINIMAL}[normalize]\ndefault_region = \"XX\"\n"),
                "normalize.default_region",
            ),
            (&format!("{MINIMAL}[omi]\nenabled = true\n"), "omi.token"),
            (
                &format!("{MINIMAL}[engagelab]\napi_key = \"k\"\n"),
                "engagelab.api_secret",
            ),
            (
                &format!("{MINIMAL}[admin]\nlisten = \"nowhere\"\n"),
                "admin.listen",
            ),
            (
                &format!("{MINIMAL}[omi]\ntoken = \"t\"\nmax_in_flight = 0\n"),
                "omi.max_in_flight",
            ),
            (
                &format!(
                    "{MINIMAL}[engagelab]\napi_key = \"k\"\napi_secret = \"s\"\nmax_in_flight = 1025\n"
                ),
                "engagelab.max_in_flight",
            ),
            (
                &format!("{MINIMAL}[retry]\ninitial_backoff = \"10m\"\n"),
                "retry.initial_backoff",
            ),
            (
                "[source]\nbase_url = \"http://127.0.0.1:1\"\n",
                "source.token",
            ),
        ];
        for (toml, key) in cases {
            assert_eq!(
                key_of(Settings::from_toml(toml, None).unwrap_err()),
                key,
                "{toml}"
            );
        }
    }

    #[test]
    fn invalid_duration_is_an_error() {
        let toml = format!("{MINIMAL}poll_interval = \"soon\"\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "source.poll_interval"
        );
        let toml = format!("{MINIMAL}page_size = \"many\"\n");
        assert_eq!(
            key_of(Settings::from_toml(&toml, None).unwrap_err()),
            "source.page_size"
        );
    }

    #[test]
    fn redacted_output_has_no_secret() {
        let toml = r#"
            [source]
            base_url = "http://127.0.0.1:1/"
            username = "ops"
            password = "pw-SECRET-1"
            [omi]
            api_key = "omi-SECRET-2"
            [engagelab]
            api_key = "el-key"
            api_secret = "el-SECRET-3"
        "#;
        let out = Settings::from_toml(toml, None).unwrap().to_redacted_toml();
        assert!(!out.contains("SECRET"), "{out}");
        assert!(out.contains("<redacted>") && out.contains("ops"), "{out}");
        assert!(!out.contains("el-key"), "{out}");
        // The output uses the input's key names, so it can be read back as a config.
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["source"]["password"].as_str(), Some("<redacted>"));
        assert_eq!(parsed["omi"]["api_key"].as_str(), Some("<redacted>"));
    }

    #[test]
    fn max_body_accepts_units_and_bytes() {
        for (value, bytes) in [
            (r#""16MiB""#, 16 << 20),
            (r#""512KiB""#, 512 << 10),
            (r#""2MB""#, 2_000_000),
            ("65536", 65_536),
            (r#""65536""#, 65_536),
        ] {
            let toml = format!("{MINIMAL}\n[http]\nmax_body = {value}\n");
            let s = Settings::from_toml(&toml, None).unwrap();
            assert_eq!(s.http.max_body, bytes, "{value}");
        }
        for value in [r#""lots""#, r#""16 parsecs""#, "12", r#""2GiB""#, "-1"] {
            let toml = format!("{MINIMAL}\n[http]\nmax_body = {value}\n");
            let err = Settings::from_toml(&toml, None).unwrap_err();
            assert_eq!(key_of(err), "http.max_body", "{value}");
        }
    }

    #[test]
    fn a_disabled_or_absent_destination_is_none_and_needs_no_credentials() {
        let toml = format!(
            "{MINIMAL}[omi]\nenabled = false\ntoken_file = \"/nonexistent/omi\"\n\
             [engagelab]\nenabled = false\n"
        );
        let s = Settings::from_toml(&toml, None).unwrap();
        assert!(s.omi.is_none() && s.engagelab.is_none());
        let s = Settings::from_toml(
            MINIMAL,
            env(&[
                ("CONTACT_SYNC__ENGAGELAB__API_KEY", "k"),
                ("CONTACT_SYNC__ENGAGELAB__API_SECRET", "s"),
            ]),
        )
        .unwrap();
        assert!(s.omi.is_none());
        let engagelab = s.engagelab.unwrap();
        assert_eq!(engagelab.identity_name, IdentityName::UserId);
        assert_eq!(engagelab.base_url.as_str(), "https://ma-api.engagelab.com/");
    }

    #[test]
    fn identity_name_is_one_of_three_and_a_bad_one_names_the_key() {
        let section = "[engagelab]\napi_key = \"k\"\napi_secret = \"s\"\n";
        for (written, expected) in [
            ("user_id", IdentityName::UserId),
            ("anonymous_id", IdentityName::AnonymousId),
            ("registration_id", IdentityName::RegistrationId),
        ] {
            let toml = format!("{MINIMAL}{section}identity_name = \"{written}\"\n");
            let s = Settings::from_toml(&toml, None).unwrap();
            assert_eq!(s.engagelab.unwrap().identity_name, expected);
        }
        let toml = format!("{MINIMAL}{section}identity_name = \"email\"\n");
        match Settings::from_toml(&toml, None).unwrap_err() {
            ConfigError::Key { key, message } => {
                assert_eq!(key, "engagelab.identity_name");
                for allowed in ["user_id", "anonymous_id", "registration_id"] {
                    assert!(message.contains(allowed), "{message}");
                }
            }
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn store_settings_list_enabled_destinations_without_reading_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "{MINIMAL}[omi]\ntoken_file = \"/nonexistent/omi\"\n\
                 [engagelab]\nenabled = false\n"
            ),
        )
        .unwrap();
        let store = StoreSettings::load(&path).unwrap();
        assert_eq!(store.destinations, vec![Destination::Omi]);
        assert_eq!(store.database_url, "sqlite://data/contact-sync.db");
    }
}
