//! End to end in a microVM, on real KVM: `lambda-vm` boots the real guest kernel with the echo
//! function's ext4 image as a read-only root drive (our `init` as PID 1, the conformance echo
//! function on our `bootstrap` library as the runtime), and the function is invoked through the
//! emulator-compatible endpoint over HTTP, host link and vsock. Boots are few (two: the first,
//! and the fresh VM after a crash), since each takes tens of seconds on emulated KVM.
//!
//! Needs `GUEST_VMLINUX`, `GUEST_ROOTFS` and `GUEST_FUNCTION_CONFIG` (scripts/test.sh builds and
//! sets them).
//! Skipped, with the reason printed, only where /dev/kvm is absent.

use integration_tests::server::LocalServer;
use integration_tests::{host_binary, in_ci, require};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn guest_artifact(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => require(PathBuf::from(path), var),
        None if in_ci() => panic!("{var} is not set; scripts/test.sh sets it"),
        None => {
            eprintln!("SKIPPED: {var} is not set; run scripts/test.sh, which builds the guest");
            None
        }
    }
}

#[test]
fn a_function_in_a_microvm_answers_fails_and_powers_off() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: /dev/kvm is absent; microVMs need KVM");
        return;
    }
    let (Some(kernel), Some(rootfs), Some(service)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_ROOTFS"),
        require(host_binary("lambda-vm"), "lambda-vm"),
    ) else {
        return;
    };
    let Some(function_config) = guest_artifact("GUEST_FUNCTION_CONFIG") else {
        return;
    };
    let console = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-console.log");
    let mut command = Command::new(service);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--function-config")
        .arg(function_config)
        .arg("--console")
        .arg(&console)
        .args(["--listen", "127.0.0.1:0"]);
    let mut server = LocalServer::from_command(command, "lambda-vm", true);

    // The first invoke boots the VM; the runtime's init is in the guest's first REPORT.
    let event = json!({"hello": "microvm", "n": [1, 2, 3]});
    let reply = server.assert_echo(&event);
    assert!(reply.request_id.is_some());
    let report = server.wait_for_log(Duration::from_secs(30), |l| {
        l.starts_with("REPORT RequestId:")
    });
    assert!(report.contains("Init Duration:"), "{report}");
    assert!(report.contains("Memory Size: 128 MB"), "{report}");
    let logs = server.logs();
    assert!(
        logs.iter().any(|l| l.starts_with("START RequestId:")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("END RequestId:")),
        "{logs:?}"
    );

    // A handler error: 200 with X-Amz-Function-Error and the function's error JSON.
    let error = server
        .invoke(&json!({"action": "error", "message": "broken on purpose"}))
        .unhandled_error();
    assert_eq!(error["errorMessage"], "broken on purpose", "{error}");

    // The same VM goes on serving.
    server.assert_echo(&json!({"again": true}));
    let boots = |server: &LocalServer| {
        server
            .logs()
            .iter()
            .filter(|l| l.starts_with("lambda-vm: microVM up"))
            .count()
    };
    assert_eq!(boots(&server), 1);

    // A runtime that dies mid-invoke fails that invoke; the next one gets a fresh microVM.
    let crash = server.invoke(&json!({"action": "crash"}));
    assert_eq!(
        crash.function_error.as_deref(),
        Some("Unhandled"),
        "{crash:?}"
    );
    server.assert_echo(&json!({"after": "crash"}));
    assert_eq!(boots(&server), 2, "{:?}", server.logs());

    // SIGTERM: the service asks init to power off; the guest resets through the i8042 and the
    // service exits cleanly.
    let status = server
        .terminate(Duration::from_secs(120))
        .expect("lambda-vm exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        console.contains("Run /init as init process"),
        "guest console:\n{console}"
    );
}
