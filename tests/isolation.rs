//! The jail and the seccomp filters of the `vmm`s that `lambda-vm` starts, looked at from
//! outside through /proc while two SnapStart environments run (one boot for the snapshot, then
//! two restores, on real KVM with the real guest kernel):
//!
//! - each `vmm` runs as a user of its own (not root) with `no_new_privs` and a seccomp filter,
//!   as process 1 of a PID namespace of its own, in mount, network, IPC and UTS namespaces
//!   that are not the host's;
//! - its root (`/proc/<pid>/root`) holds only the image, the snapshot, its own environment
//!   directory (its sockets) and `/dev/kvm` (and `/dev/net/tun` where the host has it): no
//!   host file, not even the kernel (a restore does not need it), no other VM's socket;
//! - a system call outside the main thread's filter kills the `vmm` with SIGSYS, and the
//!   service says so and replaces the environment. The call is *injected*: this test stops the
//!   running `vmm`'s main thread with ptrace and points it at a `getppid` system call, since
//!   nothing a guest does can make our VMM make a call outside its lists.
//!
//! Needs root (the jail), `/dev/kvm` and the guest artefacts (scripts/test.sh builds them).

use integration_tests::server::LocalServer;
use integration_tests::{guest_artifact, host_binary, require_kvm, skip_unless};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn status(server: &LocalServer) -> serde_json::Value {
    let url = format!("http://{}/status", server.invoke_addr);
    let reply = server.request("GET", &url, &[], b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn idle_pids(server: &LocalServer, function: &str) -> Vec<u32> {
    status(server)["functions"][function]["idle_vmm_pids"]
        .as_array()
        .map(|pids| {
            pids.iter()
                .filter_map(|p| u32::try_from(p.as_u64()?).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A `Key:` line of /proc/<pid>/status, its fields.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    proc_info::status_field(&text, key)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Every file (not directory) under `dir`, as a path inside it, symbolic links not followed.
fn files_under(dir: &Path, inside: &Path, found: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = inside.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &path, found);
        } else {
            found.insert(path);
        }
    }
}

/// The `--vsock-uds` argument a `vmm` was started with: its environment's socket.
fn vsock_uds(pid: u32) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args
        .iter()
        .position(|a| *a == b"--vsock-uds")
        .expect("a restored vmm has --vsock-uds");
    PathBuf::from(String::from_utf8(args[at + 1].to_vec()).unwrap())
}

/// Makes the stopped-in-a-system-call main thread of `pid` execute system call `nr` instead
/// of going back to its wait: ptrace stops it, moves its instruction pointer back onto the
/// `syscall` instruction it is in, and sets the call number.
fn inject_syscall(pid: u32, nr: libc::c_long) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace and waitpid on a process this test does not share memory with; every
    // pointer passed is null or to a local of the type the request writes or reads.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, null, null),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(
                libc::PTRACE_GETREGS,
                pid,
                null,
                std::ptr::from_mut(&mut regs).cast::<libc::c_void>()
            ),
            0
        );
        let before = (regs.rip - 2) as *mut libc::c_void;
        let word = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, before, null);
        assert_eq!(
            word & 0xffff,
            0x050f,
            "the main thread is not in a system call"
        );
        regs.rip -= 2;
        regs.rax = u64::try_from(nr).unwrap();
        // No system call to restart: the kernel leaves rip and rax as set here.
        regs.orig_rax = u64::MAX;
        assert_eq!(
            libc::ptrace(
                libc::PTRACE_SETREGS,
                pid,
                null,
                std::ptr::from_mut(&mut regs).cast::<libc::c_void>()
            ),
            0
        );
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, null, null), 0);
    }
}

#[test]
fn jailed_vmms_see_only_their_files_and_die_by_sigsys_outside_their_filter() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    skip_unless!(unsafe { libc::geteuid() } == 0, "the jail needs root");
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("isolation");
    let _ = std::fs::remove_dir_all(&tmp);
    let function_dir = tmp.join("functions").join("snap");
    std::fs::create_dir_all(&function_dir).unwrap();
    let mut function: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    function["function_name"] = json!("snap");
    function["provisioned_concurrency"] = json!(2);
    std::fs::write(function_dir.join("function.json"), function.to_string()).unwrap();
    // The service names the image by this link, and so does the jail.
    let image_link = function_dir.join("image.ext4");
    std::os::unix::fs::symlink(&image, &image_link).unwrap();
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .arg("--kernel")
        .arg(&kernel)
        .arg("--functions-dir")
        .arg(tmp.join("functions"))
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .args(["--listen", "127.0.0.1:0"]);
    let server = LocalServer::from_command(command, "lambda-vm", true);
    let start = server.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("lambda-vm: isolation:")
    });
    assert!(
        start.contains("seccomp on") && start.contains("jail on"),
        "{start}"
    );
    server.wait_for_logs(Duration::from_secs(300), 2, |l| {
        integration_tests::says(l, "snap", "provisioned environment ready")
    });
    let vmms = idle_pids(&server, "snap");
    assert_eq!(vmms.len(), 2, "{}", status(&server));
    let envs: Vec<PathBuf> = vmms
        .iter()
        .map(|&pid| vsock_uds(pid).parent().unwrap().to_owned())
        .collect();
    assert_ne!(envs[0], envs[1]);
    let snapshots = tmp.join("state").join("snapshots").join("snap");

    for (i, &pid) in vmms.iter().enumerate() {
        // Its own user, never root; no way to gain privileges; a seccomp filter.
        for key in ["Uid", "Gid"] {
            let ids = status_field(pid, key);
            assert!(ids.iter().all(|id| id != "0"), "{key}: {ids:?}");
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
        assert_eq!(status_field(pid, "Seccomp"), ["2"]);
        // Process 1 of its own PID namespace: it sees no other process.
        assert_eq!(
            status_field(pid, "NSpid"),
            [pid.to_string(), "1".to_owned()]
        );
        for kind in ["pid", "mnt", "net", "ipc", "uts"] {
            assert_ne!(
                namespace(&pid.to_string(), kind),
                namespace("self", kind),
                "{kind}"
            );
        }
        assert_ne!(
            namespace(&pid.to_string(), "mnt"),
            namespace(&vmms[1 - i].to_string(), "mnt")
        );

        // Its root holds the VM's files and nothing else: no host file, no other VM's socket.
        let mut files = BTreeSet::new();
        files_under(
            Path::new(&format!("/proc/{pid}/root")),
            Path::new("/"),
            &mut files,
        );
        let allowed = |f: &Path| {
            f == image_link
                || f.starts_with(&snapshots)
                || f.starts_with(&envs[i])
                || f == Path::new("/dev/kvm")
                || f == Path::new("/dev/net/tun")
        };
        let foreign: Vec<_> = files.iter().filter(|f| !allowed(f)).collect();
        assert!(foreign.is_empty(), "host files in the jail: {foreign:?}");
        // A restored VM needs no kernel: it is in the snapshot's memory.
        assert!(!files.contains(kernel.as_path()), "{files:?}");
        let snapshot = std::fs::read_dir(&snapshots)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("state").is_file())
            .expect("a snapshot");
        for expected in [
            &image_link,
            &vsock_uds(pid),
            &PathBuf::from("/dev/kvm"),
            &snapshot.join("state"),
            &snapshot.join("memory"),
        ] {
            assert!(
                files.contains(expected.as_path()),
                "{} missing: {files:?}",
                expected.display()
            );
        }
        assert!(
            !files.iter().any(|f| f.starts_with(&envs[1 - i])),
            "{files:?}"
        );
        assert!(!Path::new(&format!("/proc/{pid}/root/etc")).exists());
    }

    // A call outside the main thread's filter, made by each vmm's main thread: SIGSYS.
    for &pid in &vmms {
        inject_syscall(pid, libc::SYS_getppid);
    }
    // Each dead environment fails the invoke that finds it, with a clear error; then a fresh
    // environment (a new restore) answers.
    let mut failures = Vec::new();
    let answered = (0..=vmms.len()).find_map(|_| {
        let reply = server.request("POST", &server.function_url("snap"), &[], b"[9]");
        assert_eq!(reply.status, 200, "{}", reply.text());
        if reply.function_error.is_none() {
            return Some(reply.text());
        }
        failures.push(reply.json());
        None
    });
    assert_eq!(answered.as_deref(), Some("[9]"), "{failures:?}");
    assert!(!failures.is_empty(), "no invoke found a dead environment");
    for failure in &failures {
        assert_eq!(failure["errorType"], "Runtime.ExitError", "{failure}");
        assert!(
            failure["errorMessage"]
                .as_str()
                .unwrap_or_default()
                .contains("host link"),
            "{failure}"
        );
    }
    // The service names the cause of every environment lost that way.
    let crashed = server.wait_for_logs(Duration::from_secs(10), failures.len(), |l| {
        l.contains("the environment is replaced")
    });
    for line in crashed {
        assert!(
            line.contains("signal: 31 (SIGSYS): killed by its seccomp filter"),
            "{line}"
        );
    }
}
