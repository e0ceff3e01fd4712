//! Drives a real `vmm --api-sock` process for the API tests: every exchange is recorded, and
//! [`ApiVmm::check_contract`] has them checked against vmm/api/openapi.yaml.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use integration_tests::{peers::venv_python, skip, wait_until, workspace_root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use vmm::api::client::ApiClient;

/// Long enough for a tiny guest or an API answer under emulation, short enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(30);

/// A `vmm` serving the API in a directory of its own.
pub struct ApiVmm {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub client: ApiClient,
    exchanges: PathBuf,
}

impl ApiVmm {
    /// Starts `vmm --api-sock DIR/api.sock --serial-out DIR/console` plus `args`, in
    /// `CARGO_TARGET_TMPDIR/api/NAME` (emptied first), and waits for its socket.
    pub fn start(name: &str, args: &[&str]) -> ApiVmm {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("api")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(&dir, "api.sock", args)
    }

    /// A further `vmm` in an existing directory, on socket `socket_name`.
    pub fn start_in(dir: &Path, socket_name: &str, args: &[&str]) -> ApiVmm {
        let socket = dir.join(socket_name);
        let console = dir.join(format!("{socket_name}.console"));
        let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("--api-sock")
            .arg(&socket)
            .arg("--serial-out")
            .arg(&console)
            .args(args)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{socket_name}.stderr"))).unwrap())
            .spawn()
            .expect("starting vmm");
        let mut client = ApiClient::new(&socket, WAIT);
        client
            .wait_ready(WAIT)
            .expect("the API socket never accepted");
        ApiVmm {
            child,
            dir: dir.to_owned(),
            socket,
            client,
            exchanges: dir.join(format!("{socket_name}.exchanges.jsonl")),
        }
    }

    /// One request; records it and its answer. Returns the status and body.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let reply = self
            .client
            .request(method, path, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let record = serde_json::json!({
            "method": method,
            "path": path,
            "request_body": body,
            "status": reply.status,
            "response_body": if reply.body.is_empty() { None } else { Some(&text) },
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.exchanges)
            .unwrap();
        writeln!(file, "{record}").unwrap();
        (reply.status, text)
    }

    /// A request that must succeed (204, or 200 for a GET); returns the body.
    pub fn ok(&mut self, method: &str, path: &str, body: Option<&str>) -> String {
        let (status, text) = self.call(method, path, body);
        let want = if method == "GET" { 200 } else { 204 };
        assert_eq!(status, want, "{method} {path} {body:?}: {text}");
        text
    }

    /// A request that must be refused with 400 and a fault message containing `reason`.
    pub fn refused(&mut self, method: &str, path: &str, body: Option<&str>, reason: &str) {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body:?}: {text}");
        let fault: serde_json::Value = serde_json::from_str(&text).unwrap();
        let message = fault["fault_message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{method} {path}: {message:?} does not say {reason:?}"
        );
    }

    pub fn get_json(&mut self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok("GET", path, None)).unwrap()
    }

    pub fn state(&mut self) -> String {
        self.get_json("/")["state"].as_str().unwrap().to_owned()
    }

    pub fn console_path(&self) -> PathBuf {
        let name = self.socket.file_name().unwrap().to_string_lossy();
        self.dir.join(format!("{name}.console"))
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.console_path()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        let name = self.socket.file_name().unwrap().to_string_lossy();
        std::fs::read_to_string(self.dir.join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Waits until the console satisfies `condition`.
    pub fn wait_console(&self, what: &str, condition: impl Fn(&str) -> bool) {
        let seen = wait_until(WAIT, || condition(&self.console()));
        assert!(seen, "no {what} on the console:\n{}", self.console());
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let ended = integration_tests::wait_for(WAIT, || self.child.try_wait().ok().flatten());
        ended.unwrap_or_else(|| panic!("the vmm did not exit:\n{}", self.stderr()))
    }

    pub fn exchanges_file(&self) -> &Path {
        &self.exchanges
    }

    /// Checks every exchange this process had against the OpenAPI description (see
    /// [`check_contract`]).
    pub fn check_contract(&self) -> bool {
        check_contract(&[self.exchanges.as_path()])
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs vmm/api/check_exchanges.py (openapi-core, from the test virtualenv) on `files`; panics
/// with its report when an exchange breaks the contract. Returns false (after [`skip!`]) when
/// the validator is not installed.
pub fn check_contract(files: &[&Path]) -> bool {
    let python = venv_python();
    let installed = Command::new(&python)
        .args(["-c", "import openapi_core, openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        skip!(return false;
            "openapi-core is not installed next to {}; scripts/test.sh installs it \
             (vmm/api/requirements.txt)",
            python.display()
        );
    }
    let api = workspace_root().join("vmm/api");
    // The check must be able to fail: it first proves it catches exchanges that break the
    // contract.
    let self_test = Command::new(&python)
        .arg(api.join("check_exchanges.py"))
        .arg(api.join("openapi.yaml"))
        .arg("--self-test")
        .output()
        .expect("running the OpenAPI check's self-test");
    assert!(
        self_test.status.success(),
        "the OpenAPI check missed a broken exchange:\n{}{}",
        String::from_utf8_lossy(&self_test.stdout),
        String::from_utf8_lossy(&self_test.stderr)
    );
    let output = Command::new(&python)
        .arg(api.join("check_exchanges.py"))
        .arg(api.join("openapi.yaml"))
        .args(files)
        .output()
        .expect("running the OpenAPI check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "OpenAPI contract broken:\n{text}");
    true
}

/// The tick numbers of the counter guest's complete `tick MEM REG` lines (both copies agree).
pub fn ticks(console: &str) -> Vec<u64> {
    let complete = match console.rfind('\n') {
        Some(end) => &console[..end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("tick ")?.split(' ');
            let memory = u64::from_str_radix(parts.next()?, 16).ok()?;
            let register = u64::from_str_radix(parts.next()?, 16).ok()?;
            assert_eq!(memory, register, "{line}");
            Some(memory)
        })
        .collect()
}
