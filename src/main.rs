//! `contact-sync` binary: parse the command line, load config, run, map errors to exit codes
//! (0 success, 1 runtime failure, 2 usage, 78 configuration).

use std::process::ExitCode;

use contact_sync::app::{self, RunMode};
use contact_sync::cli::{Cli, Command, DeadLettersAction};
use contact_sync::config::Settings;
use contact_sync::{demo, telemetry};
use tokio_util::sync::CancellationToken;

const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Demo { contacts }) => {
            return report(demo::run(contacts).await.map(|text| println!("{text}")));
        }
        Some(Command::Sim {
            contacts,
            ip,
            port,
            page_cap,
        }) => {
            return report(app::serve_sims(contacts, ip, port, page_cap).await);
        }
        _ => {}
    }
    let path = cli.config_path();
    let settings = match Settings::load(&path) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("contact-sync: {e} (in {})", path.display());
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            print!("{}", settings.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Status { json }) => report(
            app::status(&settings, json)
                .await
                .map(|text| println!("{text}")),
        ),
        Some(Command::DeadLetters { json, action: None }) => report(
            app::dead_letters(&settings, json)
                .await
                .map(|text| println!("{text}")),
        ),
        Some(Command::DeadLetters {
            action:
                Some(DeadLettersAction::Retry {
                    destination,
                    contact,
                }),
            ..
        }) => report(
            app::retry_dead_letters(&settings, destination.as_deref(), contact.as_deref())
                .await
                .map(|text| println!("{text}")),
        ),
        Some(Command::Demo { .. } | Command::Sim { .. }) => unreachable!("handled above"),
        None => {
            telemetry::init(settings.log.format, &settings.log.level);
            let mode = RunMode {
                backfill: cli.backfill,
                dry_run: cli.dry_run,
            };
            let cancel = CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                app::shutdown_signal().await;
                tracing::info!("shutdown requested");
                on_signal.cancel();
            });
            report(app::run(&settings, mode, cancel).await.map(|text| {
                if let Some(text) = text {
                    println!("{text}");
                }
            }))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("contact-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}
