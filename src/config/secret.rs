//! One secret type for every credential key: given inline (`k`) or read from `k_file`, and
//! never printed, whether through Debug, Display or the redacted config.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// What a secret prints as everywhere, including `check-config` output.
pub const REDACTED: &str = "<redacted>";

/// A credential. Deserializes from a non-empty string; `k_file` is resolved by [`resolve`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Tests and the demo build settings in code.
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(SecretString::from(value))
    }
}

impl From<&Secret> for SecretString {
    fn from(secret: &Secret) -> Self {
        secret.0.clone()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        if value.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(Self::from(value))
    }
}

/// The one way a secret key is read: `key` inline or `key_file`, never both. A file's
/// trailing newline is dropped because `echo secret > file` is how most of them are written;
/// errors name the key and the path, never the content.
pub fn resolve(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            format!("{key}_file"),
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(value), None) => Ok(Some(value)),
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
            Ok(Some(Secret::from(value)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(result: Result<Option<Secret>, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Key { key, message }) => (key, message),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn secret_from_inline_value() {
        let secret = resolve("omi.token", Some("t0ken".into()), None).unwrap();
        assert_eq!(secret.unwrap().expose_secret(), "t0ken");
        assert!(resolve("omi.token", None, None).unwrap().is_none());
    }

    #[test]
    fn secret_from_file_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = resolve("omi.token", None, Some(&path)).unwrap().unwrap();
        assert_eq!(secret.expose_secret(), "s3cret");
    }

    #[test]
    fn secret_and_secret_file_together_name_both_keys() {
        let (key, message) = key_of(resolve(
            "engagelab.api_secret",
            Some("x".into()),
            Some(Path::new("/nonexistent")),
        ));
        assert_eq!(key, "engagelab.api_secret_file");
        assert!(
            message.contains("engagelab.api_secret or engagelab.api_secret_file"),
            "{message}"
        );
    }

    #[test]
    fn missing_secret_file_names_key_and_path() {
        let path = Path::new("/nonexistent/omi-token");
        let (key, message) = key_of(resolve("omi.token", None, Some(path)));
        assert_eq!(key, "omi.token_file");
        assert!(message.contains("/nonexistent/omi-token"), "{message}");
    }

    #[test]
    fn an_unreadable_file_never_shows_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blank");
        std::fs::write(&path, " \n").unwrap();
        let (key, _) = key_of(resolve("source.password", None, Some(&path)));
        assert_eq!(key, "source.password_file");
    }

    #[test]
    fn secret_prints_redacted_everywhere() {
        let secret = Secret::from("hunter2");
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&secret).unwrap(),
            format!("\"{REDACTED}\"")
        );
    }
}
