//! The real AWS clients (boto3 and the AWS CLI, installed into the test virtualenv from
//! tests/requirements.txt) driven against a running service by `tests/aws_clients/check.py`.

use crate::peers::venv_python;
use crate::{skip, workspace_root};
use std::process::Command;

/// What the service under test can do beyond invoking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `lambda-local`: one environment, no reserved concurrency.
    Local,
    /// `lambda-vm`: pools of environments, reserved concurrency settable.
    Host,
}

/// Runs every client check against the invoke endpoint at `invoke_addr`, serving the echo
/// function as `function_name`; panics with the checker's output when one fails. Returns false
/// (after [`skip!`]) when the clients are not installed.
pub fn check(invoke_addr: &str, function_name: &str, service: Service) -> bool {
    let python = venv_python();
    let aws = python.with_file_name("aws");
    let installed = aws.exists()
        && Command::new(&python)
            .args(["-c", "import boto3"])
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        skip!(return false;
            "boto3 or the AWS CLI is not installed next to {}; scripts/test.sh installs them",
            python.display()
        );
    }
    let script = workspace_root().join("tests/aws_clients/check.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(format!("http://{invoke_addr}"))
        .arg(function_name)
        .arg(&aws)
        .args((service == Service::Host).then_some("--reserved-concurrency"))
        .output()
        .expect("running the AWS client checks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "the AWS client checks failed:\n{text}"
    );
    true
}

/// Whether boto3 is installed in the test virtualenv; otherwise the calling test is skipped
/// ([`skip!`]: a failure under CI) and false returned.
pub fn have_boto3() -> bool {
    let python = venv_python();
    let installed = Command::new(&python)
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        skip!(return false;
            "boto3 is not installed next to {}; scripts/test.sh installs it",
            python.display()
        );
    }
    true
}

/// Reads one `InvokeWithResponseStream` answer of `function_name` at `invoke_addr` with boto3
/// (`tests/streaming/read_stream.py`, whose flags `flags` are) and returns what arrived: the
/// response's fields, the chunks (base64) and the `InvokeComplete` event.
pub fn read_stream(
    invoke_addr: &str,
    function_name: &str,
    payload: &serde_json::Value,
    flags: &[&str],
) -> serde_json::Value {
    let script = workspace_root().join("tests/streaming/read_stream.py");
    let output = Command::new(venv_python())
        .arg(script)
        .arg(format!("http://{invoke_addr}"))
        .arg(function_name)
        .arg(payload.to_string())
        .args(flags)
        .output()
        .expect("running boto3's invoke_with_response_stream");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "boto3 failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("boto3's summary is not JSON ({e}): {stdout}"))
}
