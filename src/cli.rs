//! The command line (spec §2, a fixed contract).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    CheckConfig,
    /// Serve stand-ins of the three APIs until Ctrl-C and print a config that uses them.
    Sim {
        /// Contacts the stand-in source serves.
        #[arg(long, default_value_t = 5_000)]
        contacts: usize,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        ip: std::net::IpAddr,
        /// Port of the 3Dolphins stand-in; OMI and EngageLab take the next two.
        #[arg(long, default_value_t = 18181)]
        port: u16,
        /// Most records a 3Dolphins page returns, whatever `count` asks for.
        #[arg(long, default_value_t = 50)]
        page_cap: usize,
    },
    /// Run against built-in stand-ins of the APIs on loopback; needs no config or network.
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
        #[arg(long, value_parser = ["omi", "engagelab"])]
        destination: Option<String>,
        /// Only this contact's (a 3Dolphins contact id).
        #[arg(long, value_name = "ID")]
        contact: Option<String>,
    },
}
