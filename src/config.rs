//! Typed settings (spec §3): a TOML file layered under `CONTACT_SYNC__SECTION__KEY` variables,
//! secrets resolved from `*_file` paths, everything validated before the daemon starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::domain::Region;

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

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub source: SourceSettings,
    pub normalize: NormalizeSettings,
    pub omi: OmiSettings,
    pub engagelab: EngagelabSettings,
    pub retry: RetrySettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[serde(default = "default_database_url")]
    pub url: String,
}

/// How a client proves who it is: a bearer token handed over as is, or credentials exchanged
/// for one.
#[derive(Debug, Clone)]
pub enum SourceAuth {
    Token(SecretString),
    Login {
        username: String,
        password: SecretString,
    },
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

#[derive(Debug, Clone, Serialize)]
pub struct NormalizeSettings {
    #[serde(serialize_with = "serialize_region")]
    pub default_region: Region,
}

#[derive(Debug, Clone)]
pub enum OmiAuth {
    Token(SecretString),
    ApiKey(SecretString),
}

#[derive(Debug, Clone, Serialize)]
pub struct OmiSettings {
    pub enabled: bool,
    pub base_url: Url,
    #[serde(flatten)]
    pub auth: Option<OmiAuth>,
    pub batch_size: u32,
    pub requests_per_second: f64,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngagelabSettings {
    pub enabled: bool,
    pub base_url: Url,
    #[serde(serialize_with = "redact_opt")]
    pub api_key: Option<SecretString>,
    #[serde(serialize_with = "redact_opt")]
    pub api_secret: Option<SecretString>,
    pub identity_name: String,
    pub requests_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpSettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Allow `http://` base URLs to hosts other than loopback (secrets then travel in clear).
    pub allow_insecure: bool,
    /// Bytes of one HTTP answer read at most; a larger answer is refused.
    pub max_body: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    /// `None` when `listen = ""` disables the admin server.
    #[serde(serialize_with = "serialize_listen")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

// ---------------------------------------------------------------------------------------------
// Raw, file-shaped structs: what the `config` crate deserializes before secrets are resolved
// and values validated. `deny_unknown_fields` makes a typo an error instead of a silent default.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    database: Option<DatabaseSettings>,
    source: Option<RawSource>,
    normalize: Option<RawNormalize>,
    omi: Option<RawOmi>,
    engagelab: Option<RawEngagelab>,
    retry: Option<RawRetry>,
    http: Option<RawHttp>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    base_url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    page_size: Option<u32>,
    page_overlap: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    requests_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNormalize {
    default_region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOmi {
    enabled: Option<bool>,
    base_url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    batch_size: Option<u32>,
    requests_per_second: Option<f64>,
    #[serde(default, deserialize_with = "list_or_comma_separated")]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngagelab {
    enabled: Option<bool>,
    base_url: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    api_secret: Option<String>,
    api_secret_file: Option<PathBuf>,
    identity_name: Option<String>,
    requests_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default, with = "humantime_serde")]
    initial_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    allow_insecure: Option<bool>,
    max_body: Option<RawSize>,
}

/// A size as written: `"16MiB"`, `"512KiB"`, or a number of bytes (TOML integer or string).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

fn default_database_url() -> String {
    "sqlite://data/contact-sync.db".to_owned()
}

/// What the read-only commands (`status`, `dead-letters`) need: where the database is and
/// which destinations are enabled. No secret is read, so they work from an operator's shell
/// even where the secrets are readable by the service alone (systemd credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub database_url: String,
    pub destinations: Vec<&'static str>,
}

impl StoreSettings {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw = read_raw(config_file(path)?, None)?;
        let mut destinations = Vec::new();
        if section_enabled(raw.omi.as_ref(), |o| o.enabled) {
            destinations.push("omi");
        }
        if section_enabled(raw.engagelab.as_ref(), |e| e.enabled) {
            destinations.push("engagelab");
        }
        let database_url = raw.database.map_or_else(default_database_url, |d| d.url);
        Ok(Self {
            database_url,
            destinations,
        })
    }
}

/// A TOML list, or (from the environment, where every value is a string) one string split on
/// commas: `CONTACT_SYNC__OMI__TAGS=a,b`.
fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(
        Option::<ListOrText>::deserialize(deserializer)?.map(|value| match value {
            ListOrText::List(list) => list,
            ListOrText::Text(text) if text.trim().is_empty() => Vec::new(),
            ListOrText::Text(text) => text.split(',').map(|t| t.trim().to_owned()).collect(),
        }),
    )
}

/// An absent destination section is a disabled destination; a present one is enabled unless
/// it says `enabled = false`.
fn section_enabled<T>(section: Option<&T>, enabled: impl Fn(&T) -> Option<bool>) -> bool {
    section.is_some_and(|s| enabled(s).unwrap_or(true))
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
/// deserialized without validation.
fn read_raw<S>(
    file: S,
    env: Option<config::Map<String, String>>,
) -> Result<RawSettings, ConfigError>
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
        Self::from_raw(read_raw(config_file(path)?, None)?)
    }

    /// Parse TOML text (no file), with the given environment instead of the process's.
    /// Used by tests and the demo.
    pub fn from_toml(
        toml: &str,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let source = config::File::from_str(toml, config::FileFormat::Toml);
        Self::from_raw(read_raw(source, Some(env.unwrap_or_default()))?)
    }

    fn from_raw(raw: RawSettings) -> Result<Self, ConfigError> {
        let source = raw.source.unwrap_or_default();
        let retry = raw.retry.unwrap_or_default();
        let http = raw.http.unwrap_or_default();
        let settings = Settings {
            database: raw.database.unwrap_or_else(|| DatabaseSettings {
                url: default_database_url(),
            }),
            source: SourceSettings {
                base_url: parse_url(
                    "source.base_url",
                    source.base_url.as_deref().ok_or_else(|| {
                        ConfigError::key("source.base_url", "is required (the 3Dolphins API base)")
                    })?,
                )?,
                auth: source_auth(&source)?,
                page_size: in_range(
                    "source.page_size",
                    source.page_size.unwrap_or(100),
                    1,
                    10_000,
                )?,
                page_overlap: in_range(
                    "source.page_overlap",
                    source.page_overlap.unwrap_or(5),
                    0,
                    1_000,
                )?,
                poll_interval: positive(
                    "source.poll_interval",
                    source.poll_interval.unwrap_or(Duration::from_secs(300)),
                )?,
                requests_per_second: rate(
                    "source.requests_per_second",
                    source.requests_per_second.unwrap_or(5.0),
                )?,
            },
            normalize: NormalizeSettings {
                default_region: parse_region(
                    raw.normalize
                        .and_then(|n| n.default_region)
                        .as_deref()
                        .unwrap_or("ID"),
                )?,
            },
            omi: omi_settings(raw.omi)?,
            engagelab: engagelab_settings(raw.engagelab)?,
            retry: RetrySettings {
                initial_backoff: positive(
                    "retry.initial_backoff",
                    retry.initial_backoff.unwrap_or(Duration::from_secs(1)),
                )?,
                max_backoff: positive(
                    "retry.max_backoff",
                    retry.max_backoff.unwrap_or(Duration::from_secs(300)),
                )?,
                max_attempts: in_range(
                    "retry.max_attempts",
                    retry.max_attempts.unwrap_or(12),
                    1,
                    1_000,
                )?,
            },
            http: HttpSettings {
                timeout: positive(
                    "http.timeout",
                    http.timeout.unwrap_or(Duration::from_secs(30)),
                )?,
                allow_insecure: http.allow_insecure.unwrap_or(false),
                max_body: parse_size("http.max_body", http.max_body.as_ref(), DEFAULT_MAX_BODY)?,
            },
            admin: AdminSettings {
                listen: parse_listen(
                    raw.admin
                        .and_then(|a| a.listen)
                        .as_deref()
                        .unwrap_or("127.0.0.1:9464"),
                )?,
            },
            log: log_settings(raw.log.unwrap_or_default())?,
        };
        if settings.retry.initial_backoff > settings.retry.max_backoff {
            return Err(ConfigError::key(
                "retry.initial_backoff",
                "must not be longer than retry.max_backoff",
            ));
        }
        if settings.database.url.trim().is_empty() {
            return Err(ConfigError::key("database.url", "must not be empty"));
        }
        if !settings.http.allow_insecure {
            let mut urls = vec![("source.base_url", &settings.source.base_url)];
            if settings.omi.enabled {
                urls.push(("omi.base_url", &settings.omi.base_url));
            }
            if settings.engagelab.enabled {
                urls.push(("engagelab.base_url", &settings.engagelab.base_url));
            }
            for (key, url) in urls {
                refuse_cleartext(key, url)?;
            }
        }
        Ok(settings)
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn source_auth(raw: &RawSource) -> Result<SourceAuth, ConfigError> {
    let token = secret(
        "source.token",
        raw.token.as_deref(),
        raw.token_file.as_deref(),
    )?;
    let password = secret(
        "source.password",
        raw.password.as_deref(),
        raw.password_file.as_deref(),
    )?;
    let username = raw.username.clone().filter(|u| !u.trim().is_empty());
    match (token, username, password) {
        (Some(token), None, None) => Ok(SourceAuth::Token(token)),
        (Some(_), _, _) => Err(ConfigError::key(
            "source.token",
            "set either a token or username/password, not both",
        )),
        (None, Some(username), Some(password)) => Ok(SourceAuth::Login { username, password }),
        (None, Some(_), None) => Err(ConfigError::key(
            "source.password",
            "is required with source.username",
        )),
        (None, None, Some(_)) => Err(ConfigError::key(
            "source.username",
            "is required with source.password",
        )),
        (None, None, None) => Err(ConfigError::key(
            "source.token",
            "is required (or source.username and source.password)",
        )),
    }
}

fn omi_settings(raw: Option<RawOmi>) -> Result<OmiSettings, ConfigError> {
    let enabled = section_enabled(raw.as_ref(), |o| o.enabled);
    let raw = raw.unwrap_or_default();
    let token = secret("omi.token", raw.token.as_deref(), raw.token_file.as_deref())?;
    let api_key = secret(
        "omi.api_key",
        raw.api_key.as_deref(),
        raw.api_key_file.as_deref(),
    )?;
    let auth = match (token, api_key) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::key(
                "omi.token",
                "set either a token or an api_key, not both",
            ));
        }
        (Some(t), None) => Some(OmiAuth::Token(t)),
        (None, Some(k)) => Some(OmiAuth::ApiKey(k)),
        (None, None) if enabled => {
            return Err(ConfigError::key(
                "omi.token",
                "is required (or omi.api_key) while omi.enabled = true",
            ));
        }
        (None, None) => None,
    };
    Ok(OmiSettings {
        enabled,
        base_url: parse_url(
            "omi.base_url",
            raw.base_url
                .as_deref()
                .unwrap_or("https://public-v1.omicall.com"),
        )?,
        auth,
        batch_size: in_range("omi.batch_size", raw.batch_size.unwrap_or(50), 1, 1_000)?,
        requests_per_second: rate(
            "omi.requests_per_second",
            raw.requests_per_second.unwrap_or(5.0),
        )?,
        tags: raw.tags.unwrap_or_default(),
    })
}

fn engagelab_settings(raw: Option<RawEngagelab>) -> Result<EngagelabSettings, ConfigError> {
    let enabled = section_enabled(raw.as_ref(), |e| e.enabled);
    let raw = raw.unwrap_or_default();
    let api_key = secret(
        "engagelab.api_key",
        raw.api_key.as_deref(),
        raw.api_key_file.as_deref(),
    )?;
    let api_secret = secret(
        "engagelab.api_secret",
        raw.api_secret.as_deref(),
        raw.api_secret_file.as_deref(),
    )?;
    if enabled && api_key.is_none() {
        return Err(ConfigError::key(
            "engagelab.api_key",
            "is required while engagelab.enabled = true",
        ));
    }
    if enabled && api_secret.is_none() {
        return Err(ConfigError::key(
            "engagelab.api_secret",
            "is required while engagelab.enabled = true",
        ));
    }
    let identity_name = raw.identity_name.unwrap_or_else(|| "user_id".to_owned());
    if !["user_id", "anonymous_id", "registration_id"].contains(&identity_name.as_str()) {
        return Err(ConfigError::key(
            "engagelab.identity_name",
            format!("must be user_id, anonymous_id or registration_id, not {identity_name:?}"),
        ));
    }
    Ok(EngagelabSettings {
        enabled,
        base_url: parse_url(
            "engagelab.base_url",
            raw.base_url
                .as_deref()
                .unwrap_or("https://ma-api.engagelab.com"),
        )?,
        api_key,
        api_secret,
        identity_name,
        requests_per_second: rate(
            "engagelab.requests_per_second",
            raw.requests_per_second.unwrap_or(10.0),
        )?,
    })
}

fn log_settings(raw: RawLog) -> Result<LogSettings, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| {
            ConfigError::key(
                "log.level",
                format!("{level:?} is not a valid level or filter: {e}"),
            )
        })?;
    Ok(LogSettings {
        format: raw.format.unwrap_or(LogFormat::Json),
        level,
    })
}

/// A secret given inline or as `<key>_file`. Setting both is an error; a file's trailing
/// newline is dropped because `echo secret > file` is how most of them are written.
fn secret(
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            format!("{key}_file"),
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(value), None) if value.trim().is_empty() => {
            Err(ConfigError::key(key, "must not be empty"))
        }
        (Some(value), None) => Ok(Some(SecretString::from(value.to_owned()))),
        (None, Some(path)) => {
            let path = &credential_path(path);
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::key(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let value = text.trim_end_matches(['\r', '\n']);
            if value.trim().is_empty() {
                return Err(ConfigError::key(
                    format!("{key}_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(SecretString::from(value.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// A relative `*_file` path names a systemd credential (`LoadCredential=`) when the service
/// manager set `$CREDENTIALS_DIRECTORY`; otherwise it is relative to the working directory.
fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_owned(),
    }
}

fn parse_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| ConfigError::key(key, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::key(key, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(key, "must not have a query or fragment"));
    }
    Ok(url)
}

/// Every API call carries a secret (a bearer token, OMI's `?apiKey=`, EngageLab's Basic
/// header): `http://` is only allowed where nothing leaves the machine.
fn refuse_cleartext(key: &str, url: &Url) -> Result<(), ConfigError> {
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

const DEFAULT_MAX_BODY: usize = 16 << 20;

/// A byte size between 1 KiB and 1 GiB: below, no page of contacts fits; above, the cap no
/// longer protects a 192 MiB container.
fn parse_size(key: &str, raw: Option<&RawSize>, default: usize) -> Result<usize, ConfigError> {
    const UNITS: [(&str, u64); 7] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];
    let bytes = match raw {
        None => return Ok(default),
        Some(RawSize::Bytes(n)) => *n,
        Some(RawSize::Text(text)) => {
            let text = text.trim();
            let (number, unit) = UNITS
                .iter()
                .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
                .unwrap_or((text, 1));
            number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .ok_or_else(|| {
                    ConfigError::key(
                        key,
                        format!("{text:?} is not a size (like \"16MiB\", \"512KiB\" or bytes)"),
                    )
                })?
        }
    };
    if !(1 << 10..=1 << 30).contains(&bytes) {
        return Err(ConfigError::key(key, "must be between 1KiB and 1GiB"));
    }
    Ok(bytes as usize)
}

fn parse_region(value: &str) -> Result<Region, ConfigError> {
    value
        .trim()
        .to_ascii_uppercase()
        .parse::<Region>()
        .map_err(|_| {
            ConfigError::key(
                "normalize.default_region",
                format!("{value:?} is not an ISO 3166 region code such as \"ID\""),
            )
        })
}

fn parse_listen(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value.trim().parse().map(Some).map_err(|_| {
        ConfigError::key(
            "admin.listen",
            format!("{value:?} is not an address such as \"127.0.0.1:9464\" (or \"\" to disable)"),
        )
    })
}

fn in_range(key: &str, value: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::key(
            key,
            format!("must be between {min} and {max}, not {value}"),
        ))
    }
}

fn rate(key: &str, value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 100_000.0 {
        Ok(value)
    } else {
        Err(ConfigError::key(
            key,
            format!("must be a rate above 0 and at most 100000, not {value}"),
        ))
    }
}

fn positive(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::key(key, "must be longer than zero"))
    } else {
        Ok(value)
    }
}

/// The `config` crate ends its messages with "for key `section`" and names an unknown field
/// only by itself; turn both into one error that names the full key.
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

const REDACTED: &str = "<redacted>";

fn redact_opt<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_str(""),
    }
}

impl Serialize for SourceAuth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
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

impl Serialize for OmiAuth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Self::Token(_) => map.serialize_entry("token", REDACTED)?,
            Self::ApiKey(_) => map.serialize_entry("api_key", REDACTED)?,
        }
        map.end()
    }
}

fn serialize_region<S: Serializer>(region: &Region, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(region.as_ref())
}

fn serialize_listen<S: Serializer>(listen: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match listen {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!s.omi.enabled && !s.engagelab.enabled);
        assert_eq!(s.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.log.format, LogFormat::Json);
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
        assert!(s.omi.enabled);
        assert_eq!(s.omi.tags, vec!["a", "b"]);
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
        match &s.omi.auth {
            Some(OmiAuth::ApiKey(key)) => {
                assert_eq!(secrecy::ExposeSecret::expose_secret(key), "true")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(s.omi.tags, vec!["1e3"]);
        assert!(s.omi.enabled && !s.engagelab.enabled);
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
}
