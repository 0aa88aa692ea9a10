//! The command line (docs/cli.md, a fixed contract), and how text from elsewhere is made safe to
//! print on an operator's terminal.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::domain::Destination;

#[derive(Debug, Parser)]
#[command(
    name = "contact-sync",
    version,
    about = "Keeps 3Dolphins contacts flowing into OMI CRM and EngageLab MA"
)]
pub struct Cli {
    /// Config file [default: $CONTACT_SYNC_CONFIG, then config/contact-sync.toml]
    #[arg(long, global = true, env = "CONTACT_SYNC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Run one full pass, then exit.
    #[arg(long)]
    pub backfill: bool,

    /// Pull and normalize, write nothing; print what would change.
    #[arg(long)]
    pub dry_run: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report what the database holds; safe while the daemon runs.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List permanently failed deliveries with their last error.
    DeadLetters {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<DeadLettersAction>,
    },
    /// Load and validate the config, print it with secrets redacted.
    CheckConfig {
        /// Instead, check the database and each enabled API with the credentials (writes
        /// nothing) and print a checklist; exit 1 if a check fails.
        #[arg(long)]
        online: bool,
    },
    /// Run against built-in stand-ins of the APIs on loopback; needs no config or network.
    // The production build (no `demo` feature) carries no stand-ins.
    #[cfg(feature = "demo")]
    Demo {
        /// Contacts the stand-in source serves.
        #[arg(long, default_value_t = 5_000)]
        contacts: usize,
    },
}

impl Cli {
    /// Parse the process arguments; usage errors exit with code 2.
    pub fn parse_args() -> Self {
        use clap::CommandFactory;
        let cli = Self::parse();
        if cli.command.is_some() && (cli.backfill || cli.dry_run) {
            Self::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--backfill and --dry-run apply to the daemon, not to a subcommand",
                )
                .exit();
        }
        cli
    }

    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("config/contact-sync.toml"))
    }
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// Make dead letters due again (all of them unless narrowed).
    Retry {
        /// Only this destination's.
        #[arg(long)]
        destination: Option<Destination>,
        /// Only this contact's (a 3Dolphins contact id).
        #[arg(long, value_name = "ID")]
        contact: Option<String>,
    },
}

/// Text that came from outside (contact ids, remote error messages) made safe for a terminal:
/// control characters (ESC of an ANSI sequence, CR, tabs that would shift columns) and bidi
/// overrides are written as escapes, so a hostile id cannot rewrite the screen. A backslash
/// is doubled so the escapes stay unambiguous.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_and_ansi_escapes_are_escaped() {
        assert_eq!(
            terminal_safe("\u{1b}[2J\u{1b}]0;x\u{7}"),
            "\\x1b[2J\\x1b]0;x\\x07"
        );
        assert_eq!(terminal_safe("a\tb\r\nc\u{0}"), "a\\x09b\\x0d\\x0ac\\x00");
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(terminal_safe("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(terminal_safe(r"C:\x1b"), r"C:\\x1b");
        assert_eq!(
            terminal_safe("Siti Rahayu ü 62-857"),
            "Siti Rahayu ü 62-857"
        );
    }
}
