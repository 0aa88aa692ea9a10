//! The real binary under kill -9 at named crash points, beside another writer, and with its
//! normalize thread held (docs/reliability.md). The stand-ins live in this process, so they
//! outlive every kill.

use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{BIN, Stack};
use contact_sync::sink::Destination;
use contact_sync::store;
use contact_sync_sim::dolphins::DolphinsOptions;
use contact_sync_sim::engagelab::EngagelabOptions;
use contact_sync_sim::omi::OmiOptions;
use tokio::process::Command;

/// A generous bound for one run of the binary on a slow machine.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn command(stack: &Stack, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(stack.config_path())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run(mut command: Command) -> Output {
    tokio::time::timeout(RUN_DEADLINE, command.output())
        .await
        .expect("the binary ends")
        .expect("the binary starts")
}

/// Run with `args` to a successful end.
async fn run_ok(stack: &Stack, args: &[&str]) {
    let out = run(command(stack, args)).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a backfill that is killed at the `(skip + 1)`th crossing of `point`; returns whether
/// it was (a run that finished first is fine, and says so).
async fn backfill_killed_at(stack: &Stack, point: &str, skip: u32) -> bool {
    let mut command = command(stack, &["--backfill"]);
    let actions = match skip {
        0 => "return".to_owned(),
        n => format!("{n}*off->return"),
    };
    command.env("FAILPOINTS", format!("{point}={actions}"));
    let out = run(command).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.signal() == Some(9) {
        assert!(stderr.contains(&format!("crash point {point}")), "{stderr}");
        return true;
    }
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_crash_point_loses_nothing_and_adds_nothing_twice() {
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 400,
            ..DolphinsOptions::default()
        },
        OmiOptions::default(),
        EngagelabOptions::default(),
        "batch_size = 5\n",
    )
    .await;
    let points = [
        "pass.inside_page_commit",
        "omi.after_intent",
        "push.before_ack",
        "engagelab.before_euid_commit",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for point in points {
        let mut kills = 0;
        for _ in 0..30 {
            if kills == 10 {
                break;
            }
            // Fresh work for every run, so there is always something to cross the point with.
            for id in stack.dolphins.ids().into_iter().take(60) {
                let n = rng.u32(..);
                stack.dolphins.update(&id, |r| {
                    r["contactLastName"] = serde_json::json!(format!("K{n}"));
                    r["contactEmail"] = serde_json::json!([format!("k{n}@example.com")]);
                });
            }
            // And new contacts, which need an add at OMI and a register at EngageLab.
            for _ in 0..3 {
                let n = rng.u32(..);
                stack.dolphins.push(serde_json::json!({
                    "id": format!("new-{n}"),
                    "contactFirstName": "New",
                    "phones": [format!("62857{:08}", n % 100_000_000)],
                }));
            }
            if backfill_killed_at(&stack, point, rng.u32(0..3)).await {
                kills += 1;
            }
        }
        assert_eq!(kills, 10, "{point} was crossed and killed 10 times");
    }

    // A clean run converges to what an uninterrupted one would have done.
    run_ok(&stack, &["--backfill"]).await;
    stack.assert_each_added_once();
    let ids = stack.dolphins.ids();
    assert!(ids.len() >= 400 + 3 * 40, "{}", ids.len());
    for id in &ids {
        let source = stack.dolphins.get(id).unwrap();
        let at_omi = stack.omi.contact(id).unwrap();
        if let Some(last) = source["contactLastName"]
            .as_str()
            .filter(|l| l.starts_with('K'))
        {
            assert!(at_omi["fullName"].as_str().unwrap().ends_with(last), "{id}");
        }
    }
    let status = store::status(&stack.store, &[Destination::Omi, Destination::Engagelab])
        .await
        .unwrap();
    let omi = &status.destinations[&Destination::Omi];
    let n = ids.len() as i64;
    assert_eq!((omi.synced, omi.pending, omi.dead), (n, 0, 0));
    let el = &status.destinations[&Destination::Engagelab];
    assert_eq!((el.synced + el.skipped, el.pending, el.dead), (n, 0, 0));
}

/// Polls `check` until it holds, failing the test after `RUN_DEADLINE`.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_exits_75_and_read_only_commands_work_beside_the_daemon() {
    let stack = Stack::with_contacts(300).await;
    let mut daemon = command(&stack, &[]).spawn().unwrap();
    let pid = daemon.id().unwrap();
    let db = stack.dir.path().join("test.db");
    let lock = contact_sync::lock::lock_path(&db);
    wait_for("the daemon to take the lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid.to_string())
    })
    .await;

    let out = run(command(&stack, &["--backfill"])).await;
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");

    for args in [
        &["status", "--json"][..],
        &["dead-letters"],
        &["dead-letters", "retry"],
        &["--dry-run"],
    ] {
        run_ok(&stack, args).await;
    }

    // Once the daemon is gone, however it went, the lock is free: no stale lock to clean.
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    run_ok(&stack, &["--backfill"]).await;
    stack.assert_each_added_once();
}

/// A quiet pass normalizes nothing, not even the records each page re-reads from the one
/// before (`page_overlap`): with the normalize thread held for good it still runs to its end.
/// A page waits for the normalizations read ahead for it (so a thread that falls behind
/// holds two pages, not every page read meanwhile: docs/performance.md, "Round 11"), and a
/// quiet pass must not have any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pass_over_overlapping_pages_ends_with_the_normalize_thread_held() {
    // Pages of 100 that re-read the last 5 records of the page before (the default overlap).
    let stack = Stack::with_contacts(400).await;
    assert_eq!(stack.settings.source.page_overlap, 5);
    // The hold point is live where the binary normalizes: a first pass needs it.
    let mut first = command(&stack, &["--backfill"]);
    first.env("FAILPOINTS", "normalize.job=panic");
    let out = run(first).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("failpoint normalize.job panic"), "{stderr}");
    run_ok(&stack, &["--backfill"]).await;
    let mut quiet = command(&stack, &["--backfill"]);
    quiet.env("FAILPOINTS", "normalize.job=pause");
    let out = run(quiet).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    stack.assert_each_added_once();
}

/// A panic in one of the engine's tasks is not swallowed: the daemon logs which task it was,
/// stops the others, and exits 1 on its own; nothing is lost for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_ends_the_daemon_with_exit_1_naming_it() {
    let stack = Stack::with_contacts(50).await;
    let mut daemon = command(&stack, &[]);
    daemon.env("FAILPOINTS", "push.before_ack=panic");
    let out = run(daemon).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pusher task panicked"), "{stderr}");
    run_ok(&stack, &["--backfill"]).await;
    stack.assert_each_added_once();
}
