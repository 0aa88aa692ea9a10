//! `contact-sync-sim` binary: serve the three stand-ins on fixed ports until Ctrl-C or SIGTERM,
//! and print a contact-sync config that points at them (for trying things by hand, and benches).

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use contact_sync_sim::stack::{SimStack, SimStackOptions};

#[derive(Debug, Parser)]
#[command(
    name = "contact-sync-sim",
    version,
    about = "Serve stand-ins of the three APIs until Ctrl-C and print a config that uses them"
)]
struct Args {
    /// Contacts the stand-in source serves.
    #[arg(long, default_value_t = 5_000)]
    contacts: usize,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port of the 3Dolphins stand-in; OMI and EngageLab take the next two.
    #[arg(long, default_value_t = 18181)]
    port: u16,
    /// Most records a 3Dolphins page returns, whatever `count` asks for.
    #[arg(long, default_value_t = 50)]
    page_cap: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // A port past 65535 becomes 0 (any free port) rather than an error: the printed config
    // says which one was taken.
    let ports = [
        args.port,
        args.port.checked_add(1).unwrap_or(0),
        args.port.checked_add(2).unwrap_or(0),
    ];
    let sims = match SimStack::start(SimStackOptions {
        contacts: args.contacts,
        ip: args.ip,
        ports,
        page_cap: args.page_cap,
        ..SimStackOptions::default()
    })
    .await
    {
        Ok(sims) => sims,
        Err(e) => {
            eprintln!("contact-sync-sim: starting the stand-ins: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# Stand-ins are up; save this as a config file and run contact-sync with it.");
    println!("# Stop them with Ctrl-C.\n");
    println!("{}", sims.config_toml(Path::new("data/contact-sync.db")));
    shutdown_signal().await;
    sims.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
