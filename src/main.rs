//! `contact-sync` binary: parse the command line, load config, run, map errors to exit codes
//! (0 success, 1 runtime failure, 2 usage, 75 another writer holds the database,
//! 78 configuration).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use contact_sync::app::{self, RunMode};
use contact_sync::cli::{Cli, Command, DeadLettersAction, terminal_safe};
use contact_sync::config::{ConfigError, Settings, StoreSettings};
use contact_sync::doctor;
use contact_sync::lock::LockError;
use contact_sync::telemetry;
use tokio_util::sync::CancellationToken;

const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    tune_malloc();
    // Reads FAILPOINTS in test builds only; see src/failpoint.rs.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse_args();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    runtime.block_on(run(cli))
}

/// Three settings of glibc's allocator, made before any thread starts; `MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` in the environment still override them
/// (docs/performance.md, *Memory is bounded*).
/// - Two arenas: glibc gives each thread that allocates its own arena (up to 8 per core), and
///   every SQLite connection runs on a thread of its own, so page caches and payloads spread
///   over many arenas that each kept their freed memory. Two cut the steady-state peak RSS
///   in the benchmark from 82 to 61 MB.
/// - Blocks of 1 MiB and more always mapped on their own, so freeing one returns it to the
///   system. glibc raises that threshold to the size of each mapped block freed: after the
///   first page body of a few megabytes, later ones came from the arenas and stayed there. A
///   first pass with pages of 5,000 records peaked at 77–91 MB, 58 MB with the fixed threshold.
/// - Free memory at the top of a heap given back past 4 MiB, not glibc's 128 KiB: fixing the
///   mmap threshold also fixes this one at its default, and a page's contacts, freed and
///   allocated again page after page, went back to the kernel and were faulted in anew each
///   time (60,000 to 110,000 page faults in a first pass of 200,000, about 7,000 now; a fifth
///   less system time, for 1 to 3 MB more peak RSS; docs/performance.md, "Round 10").
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 1 << 20),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 4 << 20),
        ];
        for (variable, parameter, value) in settings {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
                unsafe {
                    libc::mallopt(parameter, value);
                }
            }
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let path = cli.config_path();
    match cli.command {
        #[cfg(feature = "demo")]
        Some(Command::Demo { contacts }) => print(contact_sync::demo::run(contacts).await),
        // The read-only commands need the database, not the secrets.
        Some(Command::Status { json }) => match load(&path, StoreSettings::load) {
            Ok(settings) => print(app::status(&settings, json).await),
            Err(code) => code,
        },
        Some(Command::DeadLetters { json, action }) => match load(&path, StoreSettings::load) {
            Ok(settings) => print(match action {
                None => app::dead_letters(&settings, json).await,
                Some(DeadLettersAction::Retry {
                    destination,
                    contact,
                }) => app::retry_dead_letters(&settings, destination, contact.as_deref()).await,
            }),
            Err(code) => code,
        },
        Some(Command::CheckConfig { online }) => match load(&path, Settings::load) {
            Ok(settings) if online => preflight(&settings, &path).await,
            Ok(settings) => {
                print!("{}", settings.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => match load(&path, Settings::load) {
            Ok(settings) => {
                daemon(
                    &settings,
                    RunMode {
                        backfill: cli.backfill,
                        dry_run: cli.dry_run,
                    },
                )
                .await
            }
            Err(code) => code,
        },
    }
}

/// Run the daemon, a backfill or a dry run until it ends or SIGTERM/SIGINT arrives.
async fn daemon(settings: &Settings, mode: RunMode) -> ExitCode {
    telemetry::init(settings.log.format, &settings.log.level);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        tracing::info!("shutdown requested");
        on_signal.cancel();
    });
    report(app::run(settings, mode, cancel).await.map(|text| {
        if let Some(text) = text {
            println!("{text}");
        }
    }))
}

/// `check-config --online`: the checklist, exit 1 when a check failed.
async fn preflight(settings: &Settings, path: &Path) -> ExitCode {
    match doctor::run(settings, path).await {
        Ok(checklist) => {
            print!("{}", checklist.render(std::io::stdout().is_terminal()));
            if checklist.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => report(Err(e.into())),
    }
}

/// Load settings, or say what is wrong with them and give the exit code for it.
fn load<T>(
    path: &Path,
    loader: impl FnOnce(&Path) -> Result<T, ConfigError>,
) -> Result<T, ExitCode> {
    loader(path).map_err(|e| {
        eprintln!("contact-sync: {e} (in {})", path.display());
        ExitCode::from(EX_CONFIG)
    })
}

fn print(result: anyhow::Result<String>) -> ExitCode {
    report(result.map(|text| println!("{text}")))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors may quote a remote answer.
            eprintln!("contact-sync: {}", terminal_safe(&format!("{e:#}")));
            if matches!(e.downcast_ref(), Some(LockError::Held { .. })) {
                ExitCode::from(EX_TEMPFAIL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
