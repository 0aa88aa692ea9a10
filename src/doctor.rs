//! `check-config --online`: a pre-flight check of what a first run needs (a writable database
//! no other writer holds, each enabled API accepting our credentials), printed as a checklist.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::sqlite::SqliteConnectOptions;

use crate::cli::terminal_safe;
use crate::config::{OmiAuth, Secret, Settings, SourceAuth};
use crate::lock::{self, LockError, WriterLock};
use crate::net::{self, HttpSetupError, RetryPolicy};
use crate::sink::engagelab::EngagelabClient;
use crate::sink::omi::OmiClient;
use crate::sink::{FailureKind, PushError};
use crate::source::dolphins::{DolphinsClient, SourceError};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    Skipped(String),
    Failed { reason: String, fix: String },
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// Every check, in the order they are printed.
#[derive(Debug, Clone)]
pub struct Checklist {
    pub checks: Vec<Check>,
}

impl Checklist {
    pub fn passed(&self) -> bool {
        self.failed() == 0
    }

    fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
            .count()
    }

    /// One line per check, a fix under each failure, and a verdict. `symbols` (for a
    /// terminal) marks checks with ✔/✘, otherwise with `[ok]`/`[FAIL]`, which a grep finds.
    pub fn render(&self, symbols: bool) -> String {
        let (ok, fail, skip) = if symbols {
            ("✔", "✘", "-")
        } else {
            ("[ok]  ", "[FAIL]", "[skip]")
        };
        let indent = " ".repeat(ok.chars().count() + 1);
        let mut out = String::new();
        for check in &self.checks {
            let (mark, text) = match &check.outcome {
                Outcome::Passed(detail) => (ok, detail),
                Outcome::Skipped(detail) => (skip, detail),
                Outcome::Failed { reason, .. } => (fail, reason),
            };
            out += &format!("{mark} {}: {text}\n", check.name);
            if let Outcome::Failed { fix, .. } = &check.outcome {
                out += &format!("{indent}fix: {fix}\n");
            }
        }
        let failed = self.failed();
        if failed == 0 {
            out += "all checks passed\n";
        } else {
            out += &format!("{failed} of {} checks failed\n", self.checks.len());
        }
        out
    }
}

/// Run every check: the database at once, the three APIs side by side, each API bounded by
/// `http.timeout` and retried at most once, so the whole check is quick. `config` is the
/// (already valid) file, named in the first line.
pub async fn run(settings: &Settings, config: &Path) -> Result<Checklist, HttpSetupError> {
    let http = net::http_client(settings.http.timeout)?;
    let secrets = secrets(settings);
    let timeout = settings.http.timeout;
    let (source, omi, engagelab) = tokio::join!(
        within(timeout, "source.base_url", source(settings, http.clone())),
        within(timeout, "omi.base_url", omi(settings, http.clone())),
        within(timeout, "engagelab.base_url", engagelab(settings, http)),
    );
    let checks = [
        (
            "config",
            Outcome::Passed(format!("{} is valid", config.display())),
        ),
        ("database", database(&settings.database.url)),
        ("3Dolphins", source),
        ("OMI", omi),
        ("EngageLab", engagelab),
    ];
    Ok(Checklist {
        checks: checks
            .into_iter()
            .map(|(name, outcome)| Check {
                name,
                outcome: safe(outcome, &secrets),
            })
            .collect(),
    })
}

/// Text from elsewhere (remote answers, OS errors) made fit to print: escaped for the
/// terminal, and any configured secret a server chose to echo replaced. Our own texts name
/// keys, never values, so only these are rewritten.
fn safe(outcome: Outcome, secrets: &[&Secret]) -> Outcome {
    let clean = |text: String| {
        let text = secrets
            .iter()
            .filter(|s| !s.expose_secret().is_empty())
            // A secret displays as the redaction marker.
            .fold(text, |t, s| t.replace(s.expose_secret(), &s.to_string()));
        terminal_safe(&text)
    };
    match outcome {
        Outcome::Passed(detail) => Outcome::Passed(clean(detail)),
        Outcome::Skipped(detail) => Outcome::Skipped(detail),
        Outcome::Failed { reason, fix } => Outcome::Failed {
            reason: clean(reason),
            fix,
        },
    }
}

/// Every credential the configuration holds.
fn secrets(settings: &Settings) -> Vec<&Secret> {
    let mut all: Vec<&Secret> = Vec::new();
    match &settings.source.auth {
        SourceAuth::Token(token) => all.push(token),
        SourceAuth::Login { password, .. } => all.push(password),
    }
    if let Some(omi) = &settings.omi {
        match &omi.auth {
            OmiAuth::Token(secret) | OmiAuth::ApiKey(secret) => all.push(secret),
        }
    }
    if let Some(engagelab) = &settings.engagelab {
        all.extend([&engagelab.api_key, &engagelab.api_secret]);
    }
    all
}

async fn within(
    timeout: Duration,
    base_url_key: &str,
    check: impl Future<Output = Outcome>,
) -> Outcome {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Outcome::Failed {
            reason: format!("no answer within http.timeout ({timeout:?})"),
            fix: format!(
                "check that {base_url_key} is reachable from here (DNS, proxy, firewall), or \
                 raise http.timeout"
            ),
        })
}

fn failed(reason: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Failed {
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// The database can be written and no other writer holds it. Nothing is left behind: a
/// missing database is not created (the first run creates it, and its directories); only
/// that its nearest existing directory takes new files is checked.
fn database(url: &str) -> Outcome {
    let file = match SqliteConnectOptions::from_str(url) {
        Ok(options) => options.get_filename().to_owned(),
        Err(e) => return failed(e.to_string(), "fix database.url (sqlite://PATH)"),
    };
    if file.as_os_str().is_empty() || file == Path::new(":memory:") {
        return Outcome::Passed("in memory: nothing to check".into());
    }
    let access = |path: &Path| {
        format!(
            "give the user contact-sync runs as read and write access to {}, or change \
             database.url",
            path.display()
        )
    };
    if !file.exists() {
        let dir = nearest_existing_dir(&file);
        return match creates_files_in(&dir) {
            Ok(()) => Outcome::Passed(format!(
                "{} does not exist yet; the first run creates it",
                file.display()
            )),
            Err(e) => failed(
                format!("cannot create files in {}: {e}", dir.display()),
                access(&dir),
            ),
        };
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(&file) {
        return failed(
            format!("cannot open {} for writing: {e}", file.display()),
            access(&file),
        );
    }
    // SQLite keeps its journal and the writer lock beside the database.
    let dir = parent_dir(&file);
    if let Err(e) = creates_files_in(dir) {
        return failed(
            format!(
                "cannot create files in {} (SQLite's journal goes there): {e}",
                dir.display()
            ),
            access(dir),
        );
    }
    // No lock file: no process has ever held the lock there, so none holds it now.
    if lock::lock_path(&file).exists() {
        match WriterLock::acquire(&file) {
            Ok(held) => drop(held),
            Err(held @ LockError::Held { .. }) => {
                return failed(
                    held.to_string(),
                    "stop the other contact-sync (daemon or --backfill) before a backfill, or \
                     point database.url at another database",
                );
            }
            Err(e) => return failed(e.to_string(), access(&lock::lock_path(&file))),
        }
    }
    Outcome::Passed(format!(
        "{} is writable and no other writer holds it",
        file.display()
    ))
}

fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn nearest_existing_dir(file: &Path) -> PathBuf {
    let mut dir = parent_dir(file);
    while !dir.exists() {
        dir = parent_dir(dir);
    }
    dir.to_owned()
}

/// Create a file in `dir` and remove it again: the one sure test of write access.
fn creates_files_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".contact-sync-preflight.{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Log in when the config says so and read one record through the client the pass uses.
async fn source(settings: &Settings, http: reqwest::Client) -> Outcome {
    let retry = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::from(&settings.retry)
    };
    let client = DolphinsClient::new(&settings.source, http, retry, settings.http.max_body);
    let how = match settings.source.auth {
        SourceAuth::Login { .. } => "logged in",
        SourceAuth::Token(_) => "token accepted",
    };
    match client.fetch_page(0, 1).await {
        Ok(page) => Outcome::Passed(match page.total {
            Some(total) => format!("{how}, read a page: totalResults {total}"),
            None => format!("{how}, read a page (no totalResults sent)"),
        }),
        Err(e) => {
            let fix = source_fix(&e, &settings.source.auth);
            failed(e.to_string(), fix)
        }
    }
}

fn source_fix(error: &SourceError, auth: &SourceAuth) -> String {
    let credentials = || match auth {
        SourceAuth::Login { .. } => {
            "check source.username and source.password (or source.password_file)".to_owned()
        }
        SourceAuth::Token(_) => {
            "check source.token (or source.token_file); it may have expired".to_owned()
        }
    };
    match error {
        SourceError::Auth(_) | SourceError::Status { status: 403, .. } => credentials(),
        SourceError::Status { status: 429, .. } => {
            "3Dolphins is rate limiting us: try again later, or lower source.requests_per_second"
                .into()
        }
        SourceError::Status {
            status: 408 | 500..=599,
            ..
        } => "3Dolphins is failing on its side: try again later".into(),
        SourceError::Transport(_) => {
            "check that source.base_url is reachable from here (DNS, proxy, firewall)".into()
        }
        SourceError::TooLarge(_) => "raise http.max_body".into(),
        SourceError::Status { .. } | SourceError::BadResponse(_) | SourceError::BadPaging(_) => {
            "check that source.base_url points at the 3Dolphins API (…/graph/contacts/all is \
             under it)"
                .into()
        }
    }
}

async fn omi(settings: &Settings, http: reqwest::Client) -> Outcome {
    let Some(omi) = &settings.omi else {
        return Outcome::Skipped("skipped (disabled)".into());
    };
    let client = OmiClient::new(omi, http, settings.http.max_body);
    let credentials = match omi.auth {
        OmiAuth::ApiKey(_) => "check omi.api_key (or omi.api_key_file)",
        OmiAuth::Token(_) => {
            "check omi.token (or omi.token_file); a static token cannot be \
                              renewed and may have expired"
        }
    };
    match client.probe().await {
        Ok(()) => Outcome::Passed(match omi.auth {
            OmiAuth::ApiKey(_) => "API key traded for a token, token accepted".into(),
            OmiAuth::Token(_) => "token accepted".into(),
        }),
        Err(e) => destination_failure(&e, "omi", credentials),
    }
}

async fn engagelab(settings: &Settings, http: reqwest::Client) -> Outcome {
    let Some(engagelab) = &settings.engagelab else {
        return Outcome::Skipped("skipped (disabled)".into());
    };
    let client = EngagelabClient::new(engagelab, http, settings.http.max_body);
    match client.probe().await {
        Ok(()) => Outcome::Passed("Basic credentials accepted".into()),
        Err(e) => destination_failure(
            &e,
            "engagelab",
            "check engagelab.api_key and engagelab.api_secret (or their _file keys): the key \
             and secret of an API-type data source of the project",
        ),
    }
}

/// The fix for a destination's failed probe, by the kind the client gave it.
fn destination_failure(error: &PushError, section: &str, credentials: &str) -> Outcome {
    let fix = match error.kind {
        FailureKind::Auth => credentials.to_owned(),
        FailureKind::RateLimited => format!(
            "the API is rate limiting us: try again later, or lower {section}.requests_per_second"
        ),
        FailureKind::Transient => format!(
            "check that {section}.base_url is reachable from here (DNS, proxy, firewall); if it \
             is, the API is failing: try again later"
        ),
        FailureKind::Misconfigured
        | FailureKind::Permanent
        | FailureKind::NotFound
        | FailureKind::InvalidId => format!("check {section}.base_url"),
    };
    failed(error.message.clone(), fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_is_checked_without_being_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/state.db");
        let outcome = database(&format!("sqlite://{}", file.display()));
        assert!(matches!(outcome, Outcome::Passed(_)), "{outcome:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.db");
        std::fs::write(&file, b"").unwrap();
        let held = WriterLock::acquire(&file).unwrap();
        let url = format!("sqlite://{}", file.display());
        match database(&url) {
            Outcome::Failed { reason, .. } => {
                assert!(reason.contains(&std::process::id().to_string()), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        drop(held);
        assert!(matches!(database(&url), Outcome::Passed(_)));
    }

    #[test]
    fn remote_text_is_cleaned_of_secrets_and_escapes() {
        let outcome = safe(
            failed("bad key s3cr3t-value\u{1b}[2J", "check omi.api_key"),
            &[&Secret::from("s3cr3t-value")],
        );
        assert_eq!(
            outcome,
            failed("bad key <redacted>\\x1b[2J", "check omi.api_key")
        );
    }
}
