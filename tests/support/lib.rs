//! Shared support for the integration tests: where the built artifacts are, the runtimes under
//! test, and a handle on a running `lambda-local` server.
//!
//! Everything here drives real processes: the real server binary, real runtimes, real HTTP.

pub mod aws_clients;
pub mod peers;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A binary built by this workspace for the host, in the profile named by `TEST_PROFILE`
/// (`debug` unless set; the benchmarks use `release`).
pub fn host_binary(name: &str) -> PathBuf {
    let profile = std::env::var("TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    target_dir().join(profile).join(name)
}

/// How often the `wait_*` helpers look again: short against the tests' deadlines, long enough
/// not to steal a core from the processes under test.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `probe` until it gives a value or `timeout` has passed (`None`). Tests synchronise on
/// the condition they need, with a deadline, never on a fixed sleep.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls `condition` until it holds (true) or `timeout` has passed (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || condition().then_some(())).is_some()
}

/// Whether the process `pid` is gone, or a zombie (dead, only not reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Milliseconds since the Unix epoch, as in the Runtime API's deadline header (0 for a clock
/// set before 1970; saturates in the year 584 million).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sends SIGTERM to the process `pid` (a child of the test, still unreaped).
pub fn sigterm(pid: u32) -> std::io::Result<()> {
    let pid =
        i32::try_from(pid).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)?;
    Ok(())
}

/// True when running under CI (`CI=true` or `CI=1`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The one way a test of this workspace skips: prints `SKIPPED test: reason` and returns false
/// (for `if !have_x() { return }` checks). Under CI a test that cannot run fails instead, with
/// the reason.
pub fn skip(test: &str, reason: &str) -> bool {
    assert!(
        !in_ci(),
        "{test}: {reason} (under CI a test that cannot run is a failure)"
    );
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// Whether `/dev/kvm` is here; otherwise [`skip`]s.
pub fn have_kvm(test: &str) -> bool {
    std::path::Path::new("/dev/kvm").exists()
        || skip(test, "/dev/kvm is absent on this machine, so no VM can run")
}

/// Returns `path` if it exists. Otherwise the test cannot run: under CI that is a failure, and
/// on a developer machine the test is skipped with the reason and the fix printed.
pub fn require(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "{what} not found at {}; run scripts/test.sh, which builds and installs every test peer",
        path.display()
    );
    skip(what, &reason);
    None
}

/// The guest artefact (kernel, image, function.json) whose path scripts/test.sh puts in `var`;
/// missing, the test cannot run (a failure under CI, a skip with the fix printed elsewhere).
pub fn guest_artifact(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => require(PathBuf::from(path), var),
        None => {
            skip(var, "not set; run scripts/test.sh, which builds the guest");
            None
        }
    }
}

/// A guest's line as `lambda-vm` logs it (`NAME[N] line`), without that prefix; any other line
/// (`lambda-local` logs the runtime's lines as they are) unchanged.
pub fn guest_line(line: &str) -> &str {
    match line.split_once(' ') {
        Some((prefix, rest)) if is_environment(prefix) => rest,
        _ => line,
    }
}

/// `lambda-vm`'s own line about a function (`lambda-vm: NAME[N]: message` or
/// `lambda-vm: NAME: message`): the function's name and the message.
pub fn service_line(line: &str) -> Option<(&str, &str)> {
    let (prefix, message) = line.strip_prefix("lambda-vm: ")?.split_once(": ")?;
    let name = prefix.split_once('[').map_or(prefix, |(name, _)| name);
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (plain(name) && (prefix == name || is_environment(prefix))).then_some((name, message))
}

/// Whether `line` is `lambda-vm`'s line about function `name` whose message starts with
/// `message`.
pub fn says(line: &str, name: &str, message: &str) -> bool {
    service_line(line).is_some_and(|(n, m)| n == name && m.starts_with(message))
}

/// `NAME[N]`.
fn is_environment(prefix: &str) -> bool {
    prefix
        .strip_suffix(']')
        .and_then(|p| p.split_once('['))
        .is_some_and(|(name, n)| {
            !name.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
}
