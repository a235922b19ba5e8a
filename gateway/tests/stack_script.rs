//! The supervisor of `scripts/stack` (in `scripts/lib.sh`), with stand-in
//! components: a component that exits is named and restarted; one that keeps
//! exiting stops the stack, naming it; a stop signal stops every component.
//! (The real stack needs a release build: run `./scripts/stack` by hand.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib.sh");

/// Runs `body` (bash, after sourcing scripts/lib.sh, with `$DIR` a temp dir)
/// in the background, with stderr captured to `$DIR/stderr`.
fn spawn(dir: &Path, body: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let script = format!("set -euo pipefail\nsource {LIB:?}\nSTACK_RESTART_DELAY=0.05\n{body}\n");
    let mut cmd = Command::new("bash");
    // A shell started in the background (as a CI runner may start this test)
    // inherits SIGINT ignored, and bash cannot trap a signal ignored on entry:
    // give the script the disposition a terminal's Ctrl-C finds.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.arg("-c")
        .arg(script)
        .env("DIR", dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("bash")
}

fn stderr(dir: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(dir.join("stderr"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// Polls `cond` every 10 ms until it holds, failing after `WAIT`.
fn wait_until(what: &str, dir: &Path, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; stderr:\n{}",
            stderr(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child, dir: &Path) -> std::process::ExitStatus {
    let mut status = None;
    wait_until("the script to exit", dir, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

fn pids(file: &PathBuf) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

const STACK: &str = r#"
trap 'sup_stop' EXIT
trap 'exit 130' INT TERM
sup_start flaky steady
sup_loop || die "$SUP_GAVE_UP keeps exiting; stopping the stack"
"#;

#[test]
fn a_component_that_keeps_exiting_stops_the_stack_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
run_flaky() {{ echo "$BASHPID" >> "$DIR/flaky.pids"; exit 3; }}
run_steady() {{ echo "$BASHPID" >> "$DIR/steady.pids"; exec sleep 300; }}
{STACK}"#
    );
    let mut child = spawn(dir.path(), &body);
    let status = wait_exit(&mut child, dir.path());
    let err = stderr(dir.path());
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("flaky exited (status 3); restarting it in 0.05s")
            .count(),
        4,
        "{err}"
    );
    assert!(
        err.contains("flaky exited (status 3), 5 times within 30s: giving up"),
        "{err}"
    );
    assert!(
        err.contains("error: flaky keeps exiting; stopping the stack"),
        "{err}"
    );
    assert_eq!(pids(&dir.path().join("flaky.pids")).len(), 5);
    // The other component ran once and was stopped with the stack.
    let steady = pids(&dir.path().join("steady.pids"));
    assert_eq!(steady.len(), 1, "{err}");
    assert!(!alive(steady[0]), "steady (pid {}) still runs", steady[0]);
}

#[test]
fn a_component_that_exits_is_restarted_and_a_stop_signal_stops_all() {
    let dir = tempfile::tempdir().unwrap();
    // flaky exits once (as a Redis that is shut down), then stays up.
    let body = format!(
        r#"
run_flaky() {{
  echo "$BASHPID" >> "$DIR/flaky.pids"
  if [ -e "$DIR/stopped-once" ]; then exec sleep 300; fi
  touch "$DIR/stopped-once"
  exit 0
}}
run_steady() {{ echo "$BASHPID" >> "$DIR/steady.pids"; exec sleep 300; }}
{STACK}"#
    );
    let mut child = spawn(dir.path(), &body);
    let flaky = dir.path().join("flaky.pids");
    wait_until("flaky to be restarted", dir.path(), || {
        pids(&flaky).len() == 2 && stderr(dir.path()).contains("flaky restarted")
    });
    let err = stderr(dir.path());
    assert!(
        err.contains("flaky exited (status 0); restarting it in 0.05s"),
        "{err}"
    );
    assert!(!err.contains("steady exited"), "{err}");
    let running = [pids(&flaky)[1], pids(&dir.path().join("steady.pids"))[0]];
    assert!(running.iter().all(|&p| alive(p)), "{err}");

    // Ctrl-C (SIGINT to the script): every component stops, none restarts.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, dir.path());
    assert_eq!(status.code(), Some(130), "{}", stderr(dir.path()));
    for p in running {
        wait_until("components to stop", dir.path(), || !alive(p));
    }
    assert_eq!(pids(&flaky).len(), 2, "no restart after the stop signal");
}
