//! The `vmm`'s own jail (`--jail-*`), on real KVM with a tiny guest that resets at once: the
//! jailed `vmm` still finds its kernel and `/dev/kvm` and runs the guest to its end, and bad
//! jail flags are refused with the reason before anything runs. What a jailed `vmm` can see is
//! checked from outside by `tests/isolation.rs`.

mod common;

use common::{guest, vmm};
use integration_tests::{ok_or_skip, require_kvm, skip_unless};
use std::path::{Path, PathBuf};

/// A fresh, empty jail root for `name`.
fn jail_root(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jail-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the tiny guest `kernel` in a jail rooted at `root` that holds the kernel and
/// `/dev/kvm`, with `extra` flags; asserts that it ran to its end.
fn run_jailed(kernel: &Path, root: &Path, extra: &[&str]) {
    let (kernel, root) = (kernel.to_str().unwrap(), root.to_str().unwrap());
    let mut args = vec![
        "--kernel",
        kernel,
        "--mem-mib",
        "16",
        "--boot-args",
        "x",
        "--jail-root",
        root,
        "--jail-bind",
        kernel,
        "--jail-dev",
        "/dev/kvm",
        "--jail-uid",
        "1234567",
        "--jail-gid",
        "1234567",
    ];
    args.extend_from_slice(extra);
    let output = vmm(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_jailed_vmm_runs_its_guest_to_the_end() {
    require_kvm!();
    skip_unless!(is_root(), "the jail needs root");
    let kernel = guest("reset");
    let root = jail_root("reset");
    run_jailed(&kernel, &root, &[]);
    // Its root was a private mount: nothing of it is left on the host's side.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);

    // Without the kernel in the jail, the VM cannot be built: the jail really hides the host.
    let output = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--jail-root",
        root.to_str().unwrap(),
        "--jail-dev",
        "/dev/kvm",
        "--jail-uid",
        "1234567",
        "--jail-gid",
        "1234567",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn bad_jail_flags_are_refused_with_the_reason() {
    let root = jail_root("refused");
    let root = root.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--jail-root", root, "--jail-uid", "0", "--jail-gid", "0"],
            "must not be 0",
        ),
        (
            &["--jail-root", root],
            "--jail-uid and --jail-gid are required",
        ),
        (
            &[
                "--jail-root",
                root,
                "--jail-uid",
                "7",
                "--jail-gid",
                "7",
                "--jail-bind",
                "relative/kernel",
            ],
            // Taken from the working directory (the vmm makes its paths absolute first).
            "relative/kernel: No such file",
        ),
    ];
    for (flags, reason) in cases {
        let mut args = vec!["--kernel", "/nonexistent"];
        args.extend_from_slice(flags);
        let output = vmm(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(reason), "{flags:?}: {stderr}");
    }
}

/// A jailed `vmm` joins the cgroup the launcher made for it (`--jail-cgroup`, one flag per
/// hierarchy), before it builds the VM: the guest's memory is charged there.
#[test]
fn a_jailed_vmm_joins_its_cgroup() {
    require_kvm!();
    skip_unless!(is_root(), "the jail needs root");
    let cgroups = ok_or_skip!(cgroups::Cgroups::detect("vmm-jail-test")
        .map_err(|why| format!("no cgroup to test with: {why}")));
    // What a run that failed halfway left.
    cgroups.clean_leftovers();
    let cgroup = cgroups.create(256).unwrap();
    let kernel = guest("reset");
    let root = jail_root("cgroup");
    let dirs: Vec<String> = cgroup.dirs().map(|d| d.display().to_string()).collect();
    let flags: Vec<&str> = dirs
        .iter()
        .flat_map(|dir| ["--jail-cgroup", dir.as_str()])
        .collect();
    run_jailed(&kernel, &root, &flags);
    let peak = cgroup.peak_bytes().unwrap_or(0);
    assert!(
        peak > 0,
        "nothing was charged to {}",
        cgroup.path().display()
    );
    assert!(cgroup.remove_within(std::time::Duration::from_secs(10)));
}
