//! Shared support for the integration tests: where the built artifacts are, the runtimes under
//! test, and a handle on a running `lambda-local` server.
//!
//! Everything here drives real processes: the real server binary, real runtimes, real HTTP.

pub mod aws_clients;
pub mod cluster;
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

/// Ends the calling test as skipped, with the reason: prints `SKIPPED <test>: <reason>` and
/// returns from the function it is written in. Under CI (`CI=true` or `1`), where nothing may be
/// skipped, the test fails with the reason instead. The one way a test of this workspace skips.
///
/// `skip!("no /dev/kvm")` returns `()`, for a test itself; `skip!(return None; "...")` returns
/// that value, for a helper whose caller then returns (`let Some(x) = helper() else { return }`).
#[macro_export]
macro_rules! skip {
    (return $value:expr; $($reason:tt)+) => {{
        $crate::skipped(&format!($($reason)+));
        return $value;
    }};
    ($($reason:tt)+) => {{
        $crate::skipped(&format!($($reason)+));
        return;
    }};
}

/// [`skip!`] unless `condition` holds: `skip_unless!(is_root(), "the jail needs root")`.
#[macro_export]
macro_rules! skip_unless {
    ($condition:expr, $($reason:tt)+) => {
        if !$condition {
            $crate::skip!($($reason)+);
        }
    };
}

/// The value of a `Result<T, String>`, or [`skip!`] with the error as the reason.
#[macro_export]
macro_rules! ok_or_skip {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(reason) => $crate::skip!("{reason}"),
        }
    };
}

/// Skips the calling test where there is no `/dev/kvm`.
#[macro_export]
macro_rules! require_kvm {
    () => {
        $crate::skip_unless!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is absent on this machine, so no VM can run"
        )
    };
}

/// What [`skip!`] does before it returns: fails the test under CI, prints the skip elsewhere.
/// The test is named by its thread, which the test harness names after it.
pub fn skipped(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        !in_ci(),
        "{test}: {reason} (under CI a test that cannot run is a failure)"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// Returns `path` if it exists. Otherwise the test cannot run: under CI that is a failure, and
/// on a developer machine the test is skipped with the reason and the fix printed.
pub fn require(path: PathBuf, what: &str) -> Option<PathBuf> {
    if !path.exists() {
        skip!(return None;
            "{what} not found at {}; run scripts/test.sh, which builds and installs every test peer",
            path.display()
        );
    }
    Some(path)
}

/// The guest artefact (kernel, image, function.json) whose path scripts/test.sh puts in `var`;
/// missing, the test cannot run (a failure under CI, a skip with the fix printed elsewhere).
pub fn guest_artifact(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => require(PathBuf::from(path), var),
        None => skip!(return None; "{var} is not set; run scripts/test.sh, which builds the guest"),
    }
}

/// How many descriptors process `pid` has open (0 once it is gone).
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// The resident memory of process `pid`, in KiB (0 once it is gone).
pub fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
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

/// The jail cgroups `lambda-vm` process `pid` made and that still exist. They are named
/// `lambda-vm-<pid>-<start time>-<n>` and made under the service's own cgroup in each
/// hierarchy, which is the test's own (the service is the test's child).
pub fn jail_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let prefix = format!("lambda-vm-{pid}-");
    let mut found = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let mounts = if controllers.is_empty() {
            vec!["unified", ""]
        } else {
            vec![controllers]
        };
        for mount in mounts {
            let parent = Path::new("/sys/fs/cgroup")
                .join(mount)
                .join(path.trim_start_matches('/'));
            for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}
