//! Logging: tracing to stderr, human-readable on a terminal and JSON otherwise unless
//! `log.format` says which, filtered by `log.level` (or `RUST_LOG` when set).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
/// Lines go through [`crate::progress::LogWriter`], so they never land inside a progress bar.
pub fn init(format: Option<LogFormat>, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(crate::progress::LogWriter);
    let _ = match resolve(format, terminal) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The format in force: the configured one, else `pretty` for a person at a terminal and
/// `json` for a log collector.
pub fn resolve(format: Option<LogFormat>, terminal: bool) -> LogFormat {
    match format {
        Some(format) => format,
        None if terminal => LogFormat::Pretty,
        None => LogFormat::Json,
    }
}

/// Mask e-mail addresses and phone-like digit runs in text bound for a log line: remote error
/// messages quote the very contact data logs must not carry. `budi.santoso@example.com`
/// becomes `b***@example.com`; `+62 857-8212-0717` becomes `+** ***-****-*717`.
pub fn mask_pii(text: &str) -> String {
    let masked: Vec<String> = text.split(' ').map(mask_email).collect();
    mask_digit_runs(&masked.join(" "))
}

fn mask_email(word: &str) -> String {
    let Some((local, domain)) = word.split_once('@') else {
        return word.to_owned();
    };
    let start = local
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || "._%+-".contains(*c)))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (prefix, local) = local.split_at(start);
    match local.chars().next() {
        Some(first) => format!("{prefix}{first}***@{domain}"),
        None => word.to_owned(),
    }
}

/// Digit runs (spaces, dashes, dots and brackets allowed inside) of six digits or more keep
/// only their last three digits.
fn mask_digit_runs(text: &str) -> String {
    const KEEP: usize = 3;
    const MIN_DIGITS: usize = 6;
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i;
        let mut digits = 0;
        while end < chars.len() && (chars[end].is_ascii_digit() || " -.()".contains(chars[end])) {
            digits += usize::from(chars[end].is_ascii_digit());
            end += 1;
        }
        // Trailing separators belong to the text after the run.
        while end > i && !chars[end - 1].is_ascii_digit() {
            end -= 1;
        }
        let mut seen = 0;
        for &c in &chars[i..end] {
            if c.is_ascii_digit() {
                seen += 1;
                out.push(if digits >= MIN_DIGITS && seen <= digits - KEEP {
                    '*'
                } else {
                    c
                });
            } else {
                out.push(c);
            }
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{mask_pii, resolve};
    use crate::config::LogFormat;

    #[test]
    fn log_format_follows_the_terminal_unless_configured() {
        assert_eq!(resolve(None, true), LogFormat::Pretty);
        assert_eq!(resolve(None, false), LogFormat::Json);
        assert_eq!(resolve(Some(LogFormat::Json), true), LogFormat::Json);
        assert_eq!(resolve(Some(LogFormat::Pretty), false), LogFormat::Pretty);
    }

    #[test]
    fn emails_and_phones_are_masked() {
        assert_eq!(
            mask_pii("refId abc: phone 6281229198426 is assigned to another contact"),
            "refId abc: phone **********426 is assigned to another contact"
        );
        assert_eq!(mask_pii("+62 857-8212-0717"), "+** ***-****-*717");
        assert_eq!(
            mask_pii("email Budi.Santoso@example.com taken"),
            "email B***@example.com taken"
        );
        assert_eq!(mask_pii("<siti@example.co.id>"), "<s***@example.co.id>");
    }

    #[test]
    fn short_numbers_and_plain_text_are_kept() {
        assert_eq!(
            mask_pii("HTTP 503 after 12 attempts"),
            "HTTP 503 after 12 attempts"
        );
        assert_eq!(
            mask_pii("EngageLab error 55004: bad param"),
            "EngageLab error 55004: bad param"
        );
    }
}
