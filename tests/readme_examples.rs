//! The examples of vmm/README.md and bootstrap/README.md that the other tests do not run, as
//! written: the `vmm` booting our init from the README's `vm.json`, snapshotted with SIGUSR1 and
//! restored in a fresh process; `lambda-vm` serving the shell worker example in a microVM; and
//! the image builder refusing the Python worker example, whose interpreter the image lacks.
//!
//! Needs `GUEST_VMLINUX`, `GUEST_INITRAMFS` and `GUEST_SHELL_ROOTFS` (scripts/test.sh builds the
//! shell worker example's images and sets them) and `/dev/kvm` for the first two.

use integration_tests::server::LocalServer;
use integration_tests::{
    guest_artifact, host_binary, require, require_kvm, wait_until, workspace_root,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fresh directory under the target's temp dir.
fn fresh(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first ```json block after `marker` in `readme`.
fn json_block_after(readme: &str, marker: &str) -> String {
    let after = &readme[readme.find(marker).expect("the marker is in the README")..];
    let start = after.find("```json\n").expect("a json block follows") + "```json\n".len();
    let len = after[start..].find("```").expect("the block ends");
    after[start..start + len].to_owned()
}

/// A `vmm` whose console (stdout) and stderr lines are kept.
struct Vmm {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Vmm {
    fn start(dir: &Path, args: &[&str]) -> Vmm {
        let mut child = Command::new(host_binary("vmm"))
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmm starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Vmm { child, lines }
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    fn wait_for(&self, needle: &str, at_least: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.count(needle) >= at_least),
            "no {needle:?} on the console within {timeout:?}:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let status = integration_tests::wait_for(timeout, || self.child.try_wait().ok().flatten());
        status.and_then(|s| s.code())
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// vmm/README.md: the `vm.json` shown there boots our init (it says it waits for the host on
/// its vsock socket); `--snapshot-dir` and SIGUSR1 write a snapshot and exit 0; `--restore-from`
/// in a fresh process goes on where it stopped (init tries again).
#[test]
fn the_vmm_readme_config_file_boots_our_init_and_snapshots_and_restores() {
    require_kvm!();
    let (Some(kernel), Some(initramfs), Some(_)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_INITRAMFS"),
        require(host_binary("vmm"), "vmm"),
    ) else {
        return;
    };
    let dir = fresh("readme-vmm");
    std::os::unix::fs::symlink(&kernel, dir.join("vmlinux")).unwrap();
    std::fs::create_dir_all(dir.join("target/rootfs")).unwrap();
    std::os::unix::fs::symlink(&initramfs, dir.join("target/rootfs/shell-echo.cpio")).unwrap();
    let readme = std::fs::read_to_string(workspace_root().join("vmm/README.md")).unwrap();
    // The README's file, its socket moved from /tmp into this test's directory.
    let config = json_block_after(&readme, "`vm.json` (paths relative")
        .replace("/tmp/v.sock", &dir.join("v.sock").display().to_string());
    assert!(config.contains("\"initrd_path\": \"target/rootfs/shell-echo.cpio\""));
    std::fs::write(dir.join("vm.json"), &config).unwrap();

    let waiting = "cannot open the host link";
    let mut booted = Vmm::start(
        &dir,
        &["--config-file", "vm.json", "--snapshot-dir", "snap"],
    );
    booted.wait_for("Run /init as init process", 1, Duration::from_secs(300));
    booted.wait_for(waiting, 1, Duration::from_secs(300));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(booted.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eq!(booted.exit_code(Duration::from_secs(60)), Some(0));
    assert!(dir.join("snap/state").is_file() && dir.join("snap/memory").is_file());

    // The restored guest goes on: its init, still trying, reaches a host listening on the new
    // socket (hybrid vsock: the guest's connections to port P arrive on `v2.sock_P`).
    let port = proto::host_link::PORT;
    let listener =
        std::os::unix::net::UnixListener::bind(dir.join(format!("v2.sock_{port}"))).unwrap();
    listener.set_nonblocking(true).unwrap();
    let restored = Vmm::start(&dir, &["--restore-from", "snap", "--vsock-uds", "v2.sock"]);
    let connected = integration_tests::wait_for(Duration::from_secs(120), || {
        listener.accept().ok().map(|(stream, _)| stream)
    });
    assert!(
        connected.is_some(),
        "the restored guest's init did not connect:\n{}",
        restored.lines.lock().unwrap().join("\n")
    );
}

/// vmm/README.md: `lambda-vm` serving the shell worker example's ext4 image with the example's
/// own function.json, from the repository root, answers the README's curl.
#[test]
fn the_shell_worker_example_answers_in_a_microvm() {
    require_kvm!();
    let (Some(kernel), Some(rootfs)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SHELL_ROOTFS"),
    ) else {
        return;
    };
    let root = workspace_root();
    assert_eq!(
        rootfs.canonicalize().unwrap(),
        root.join("target/rootfs/shell-echo.ext4")
            .canonicalize()
            .unwrap(),
        "the README names target/rootfs/shell-echo.ext4"
    );
    let state = fresh("readme-shell-state");
    let mut command = Command::new(host_binary("lambda-vm"));
    command
        .current_dir(&root)
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--rootfs",
            "target/rootfs/shell-echo.ext4",
            "--function-config",
            "bootstrap/examples/shell-worker/function.json",
            "--listen",
            "127.0.0.1:0",
            "--no-network",
        ])
        .arg("--state-dir")
        .arg(&state);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);
    let reply = server.invoke_raw(br#"{"hello":"world"}"#, &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.function_error.is_none(), "{}", reply.text());
    assert_eq!(reply.json(), serde_json::json!({"hello": "world"}));
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// bootstrap/README.md: the Python worker needs a python3 the image does not have, so the image
/// builder refuses it, naming the interpreter, and writes nothing.
#[test]
fn the_python_worker_image_is_refused_naming_its_interpreter() {
    let out = fresh("readme-python");
    let output = Command::new(workspace_root().join("scripts/build-rootfs.sh"))
        .current_dir(workspace_root())
        .arg("bootstrap/examples/python-worker")
        .arg("--out")
        .arg(out.join("python-worker.cpio"))
        .output()
        .expect("scripts/build-rootfs.sh runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the image was built:\n{stderr}");
    assert!(
        stderr.contains(
            "worker.py needs python3 in /usr/local/bin, /usr/bin, /bin, /opt/bin, which the image lacks"
        ),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
