//! Crash points for the kill -9 tests (docs/reliability.md), and hold points. They are live
//! only when the `fail` crate's `failpoints` feature is on, which the dev-dependencies turn on
//! for `cargo test`; a `cargo build` compiles every point to nothing.

/// A named place where a test may kill the process. With `FAILPOINTS="<name>=<n>*off->return"`
/// the process prints `crash point <name>` to stderr and is killed with SIGKILL on the
/// (n+1)th time it gets here, so nothing after this point runs: no commit, no unwinding.
#[allow(unused_variables)] // `name` is unused where the points are compiled out
pub fn crash_point(name: &str) {
    fail::fail_point!(name, |_| kill_self(name));
}

/// A named place a test may hold up: with `FAILPOINTS="<name>=pause"` whatever gets here
/// waits for good, which shows that nothing the test needs waits for it.
#[allow(unused_variables)] // `name` is unused where the points are compiled out
pub fn hold_point(name: &str) {
    fail::fail_point!(name);
}

#[allow(dead_code)] // used only where the points are live
fn kill_self(name: &str) {
    eprintln!("crash point {name}");
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // SIGKILL is asynchronous; never go on past the point.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
