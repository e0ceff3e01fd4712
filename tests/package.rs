//! Lambda deployment packages from `scripts/package-lambda.sh`: each example's zip is unpacked
//! into a fresh task root as Lambda lays a function out (the zip's files in the task root,
//! `bootstrap` started from there, `_HANDLER` from the package's Handler setting) and served by
//! the real `lambda-local`. The zips must be byte-identical across builds and within Lambda's
//! size limits.

use integration_tests::peers::Launch;
use integration_tests::server::LocalServer;
use integration_tests::{ok_or_skip, target_dir, workspace_root};
use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

const SHELL_WORKER: &str = "bootstrap/examples/shell-worker";
const PYTHON_WORKER: &str = "bootstrap/examples/python-worker";
const RUST_HANDLER: &str = "bootstrap/examples/rust-handler";

/// Lambda's limit for a zip uploaded directly, as the script enforces it by default.
const MAX_ZIPPED: u64 = 50 * 1024 * 1024;

/// Whether the tools the packager and these tests use are installed; `Err` names one that is
/// not.
fn tools() -> Result<(), String> {
    for tool in ["python3", "unzip", "strip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is not installed (scripts/test.sh installs it)"
            ));
        }
    }
    Ok(())
}

fn example(relative: &str) -> PathBuf {
    workspace_root().join(relative)
}

fn run_packager(function_dir: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new("bash")
        .arg(workspace_root().join("scripts").join("package-lambda.sh"))
        .arg(function_dir)
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run scripts/package-lambda.sh")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Packages `function_dir` into `out` and checks that the script succeeded and printed the path.
fn package(function_dir: &Path, out: &Path) -> PathBuf {
    let output = run_packager(function_dir, out, &[]);
    assert!(
        output.status.success(),
        "packaging {} failed: {}",
        function_dir.display(),
        stderr(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some(out.to_str().unwrap()),
        "{stdout}"
    );
    out.to_owned()
}

/// An unpacked package: its task root and its `function.json`.
struct Unpacked {
    task_root: TempDir,
    config: Value,
}

impl Unpacked {
    fn new(zip: &Path) -> Unpacked {
        let task_root = TempDir::new().unwrap();
        let status = Command::new("unzip")
            .arg("-q")
            .arg(zip)
            .arg("-d")
            .arg(task_root.path())
            .status()
            .expect("run unzip");
        assert!(status.success(), "unzip {}", zip.display());
        let config = fs::read(task_root.path().join("function.json")).expect("function.json");
        let config: Value = serde_json::from_slice(&config).expect("function.json is JSON");
        Unpacked { task_root, config }
    }

    fn handler(&self) -> &str {
        self.config["handler"]
            .as_str()
            .expect("function.json names the handler")
    }

    /// `lambda-local` running the package's own `bootstrap` in the task root, configured from
    /// the package's `function.json` as Lambda would be from the function's settings.
    fn serve(&self) -> Option<LocalServer> {
        let launch = Launch {
            runtime: self.task_root.path().join("bootstrap"),
            handler: self.handler().to_owned(),
            task_root: self.task_root.path().to_owned(),
            env: Vec::new(),
        };
        let name = self.config["function_name"].as_str().unwrap_or("function");
        let memory = self.config["memory_mb"].as_u64().unwrap_or(128).to_string();
        LocalServer::start(&launch, &["--function-name", name, "--memory", &memory])
    }
}

/// Checks the context a function returned for `{"action":"context"}`-style events.
fn assert_context(context: &Value, reply_id: Option<&str>, function_name: &str) {
    assert_eq!(context["request_id"].as_str(), reply_id, "{context}");
    let arn = context["function_arn"].as_str().unwrap_or_default();
    assert!(
        arn.starts_with("arn:aws:lambda:") && arn.ends_with(&format!(":function:{function_name}")),
        "{context}"
    );
    assert_eq!(context["function_name"], function_name, "{context}");
    let deadline = context["deadline_ms"].as_u64().unwrap_or_default();
    assert!(
        deadline > integration_tests::epoch_ms(),
        "the deadline is in the future: {context}"
    );
}

fn worker_package_serves(example_dir: &str, error_type: &str) {
    ok_or_skip!(tools());
    let out = TempDir::new().unwrap();
    let zip = package(&example(example_dir), &out.path().join("function.zip"));
    let unpacked = Unpacked::new(&zip);
    let Some(mut server) = unpacked.serve() else {
        return;
    };
    let name = unpacked.config["function_name"]
        .as_str()
        .unwrap()
        .to_owned();

    server.assert_echo(&json!({"hello": "world", "n": [1, 2, 3]}));

    let reply = server.invoke(&json!({"action": "error", "message": "kaboom-16"}));
    let error = reply.unhandled_error();
    assert_eq!(error["errorType"], error_type, "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("kaboom-16"),
        "{error}"
    );

    let reply = server.invoke(&json!({"action": "context"}));
    assert_eq!(reply.function_error, None, "{}", reply.text());
    let context = reply.json();
    assert_context(&context, reply.request_id.as_deref(), &name);
    assert_eq!(context["memory_mb"], 128, "{context}");
    server.assert_alive();
}

#[test]
fn shell_worker_package_runs_as_on_lambda() {
    worker_package_serves(SHELL_WORKER, "ShellError");
}

#[test]
fn shell_worker_sees_the_task_root_and_handler_of_the_package() {
    ok_or_skip!(tools());
    let out = TempDir::new().unwrap();
    let zip = package(&example(SHELL_WORKER), &out.path().join("shell.zip"));
    let unpacked = Unpacked::new(&zip);
    assert_eq!(unpacked.handler(), "worker.sh");
    assert_eq!(unpacked.config["runtime"], "/var/task/bootstrap");
    let Some(server) = unpacked.serve() else {
        return;
    };
    let context = server.invoke(&json!({"action": "context"})).json();
    let task_root = unpacked.task_root.path().to_str().unwrap();
    assert_eq!(context["task_root"], task_root, "{context}");
    assert_eq!(context["handler"], "worker.sh", "{context}");
}

#[test]
fn python_worker_package_runs_as_on_lambda() {
    worker_package_serves(PYTHON_WORKER, "RuntimeError");
}

#[test]
fn rust_handler_package_serves_typed_events() {
    ok_or_skip!(tools());
    let out = TempDir::new().unwrap();
    let zip = package(&example(RUST_HANDLER), &out.path().join("rust.zip"));
    let unpacked = Unpacked::new(&zip);
    assert_eq!(unpacked.handler(), "greet");
    let Some(mut server) = unpacked.serve() else {
        return;
    };

    // A good event: the typed reply, with the invocation's context in it.
    let reply = server.invoke(&json!({"name": "Ada", "shout": true}));
    assert_eq!(reply.function_error, None, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["message"], "HELLO, ADA!", "{body}");
    assert_context(&body, reply.request_id.as_deref(), "rust-handler");

    // A malformed event fails before the handler runs, naming the type it did not fit. (Events
    // that are not JSON at all never reach a function: the invoke endpoint refuses them.)
    for event in [json!({"nom": "Ada"}), json!({"name": 7}), json!([1, 2])] {
        let error = server.invoke(&event).unhandled_error();
        assert_eq!(error["errorType"], "Runtime.UnmarshalError", "{error}");
        let message = error["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains("rust_handler::Request"), "{error}");
    }

    // The handler's own error type comes back by name.
    let error = server.invoke(&json!({"name": "  "})).unhandled_error();
    assert_eq!(error["errorType"], "GreetError", "{error}");
    assert_eq!(
        error["errorMessage"],
        "the name is empty: there is nobody to greet"
    );

    // None of that cost the environment: the same process serves on.
    let reply = server.invoke(&json!({"name": "Grace"}));
    assert_eq!(reply.json()["message"], "Hello, Grace!");
    server.assert_alive();
}

/// Copies a worker directory file by file in reverse order, so the copy differs from the
/// original in everything a careless zip would record: times, inode order, directory order.
fn copy_reversed(from: &Path, to: &Path) {
    let mut names: Vec<_> = fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names.iter().rev() {
        let target = to.join(name);
        fs::copy(from.join(name), &target).unwrap();
    }
}

fn zip_listing(zip: &Path) -> String {
    let output = Command::new("unzip").arg("-Z").arg(zip).output().unwrap();
    assert!(output.status.success(), "unzip -Z {}", zip.display());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn packages_are_byte_identical_across_builds() {
    ok_or_skip!(tools());
    let out = TempDir::new().unwrap();
    for dir in [SHELL_WORKER, PYTHON_WORKER, RUST_HANDLER] {
        let source = example(dir);
        let first = package(&source, &out.path().join("first.zip"));
        let copy = TempDir::new().unwrap();
        let second_source = if dir == RUST_HANDLER {
            // A crate is built in place; its second build must reproduce the same bytes too.
            source.clone()
        } else {
            copy_reversed(&source, copy.path());
            copy.path().to_owned()
        };
        let second = package(&second_source, &out.path().join("second.zip"));
        let (a, b) = (fs::read(&first).unwrap(), fs::read(&second).unwrap());
        assert!(
            a == b,
            "{dir}: two builds differ ({} and {} bytes)",
            a.len(),
            b.len()
        );

        let listing = zip_listing(&first);
        let entries: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
        let names: Vec<&str> = entries
            .iter()
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{dir}: entries are sorted\n{listing}");
        assert!(names.contains(&"bootstrap") && names.contains(&"function.json"));
        for line in &entries {
            assert!(
                line.contains("80-Jan-01 00:00"),
                "{dir}: fixed time\n{line}"
            );
            let executable =
                line.ends_with(" bootstrap") || line.ends_with(".sh") || line.ends_with(".py");
            let mode = if executable {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            assert!(line.starts_with(mode), "{dir}: mode {mode}\n{line}");
        }
    }
}

/// What an output directory holds: after a refused build, nothing (no partial zip, no temporary).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn an_oversized_package_is_refused_and_leaves_no_zip() {
    ok_or_skip!(tools());
    let out = TempDir::new().unwrap();
    let zip = out.path().join("function.zip");
    let ok = package(&example(SHELL_WORKER), &zip);
    let zipped = fs::metadata(&ok).unwrap().len();

    for (flag, limit, words) in [
        ("--max-unzipped", "100000", "unzipped package is"),
        ("--max-zipped", &(zipped - 1).to_string(), "the zip is"),
    ] {
        // An earlier, good package at the same path must not survive a refused build.
        fs::write(&zip, b"an older package").unwrap();
        let output = run_packager(&example(SHELL_WORKER), &zip, &[flag, limit]);
        let message = stderr(&output);
        assert!(!output.status.success(), "{flag} {limit}: {message}");
        assert!(message.contains(words), "{message}");
        assert!(
            message.contains(&format!("limit of {limit} bytes")),
            "{message}"
        );
        assert!(message.contains("no package written"), "{message}");
        assert_eq!(leftovers(out.path()), Vec::<String>::new(), "{message}");
    }

    // At the limit exactly, it fits.
    let output = run_packager(
        &example(SHELL_WORKER),
        &zip,
        &["--max-zipped", &zipped.to_string()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_package_over_lambdas_50_mb_is_refused() {
    ok_or_skip!(tools());
    let function = TempDir::new().unwrap();
    copy_reversed(&example(SHELL_WORKER), function.path());
    // Random bytes do not compress, so the zip is as large as the file.
    let mut random = fs::File::open("/dev/urandom")
        .unwrap()
        .take(MAX_ZIPPED + 1024 * 1024);
    let mut data = fs::File::create(function.path().join("data.bin")).unwrap();
    std::io::copy(&mut random, &mut data).unwrap();
    drop(data);

    let out = TempDir::new().unwrap();
    let output = run_packager(function.path(), &out.path().join("big.zip"), &[]);
    let message = stderr(&output);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains(&format!("limit of {MAX_ZIPPED} bytes")),
        "{message}"
    );
    assert_eq!(leftovers(out.path()), Vec::<String>::new(), "{message}");
}

#[test]
fn a_worker_package_needs_its_handler_as_an_executable() {
    ok_or_skip!(tools());
    let function = TempDir::new().unwrap();
    copy_reversed(&example(SHELL_WORKER), function.path());
    let out = TempDir::new().unwrap();
    let zip = out.path().join("function.zip");

    let output = run_packager(function.path(), &zip, &["--handler", "missing.sh"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing.sh is not a file of the function directory"),
        "{}",
        stderr(&output)
    );

    let worker = function.path().join("worker.sh");
    fs::set_permissions(&worker, fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_packager(function.path(), &zip, &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("worker.sh is not executable"),
        "{}",
        stderr(&output)
    );

    fs::remove_file(function.path().join("function.json")).unwrap();
    let output = run_packager(function.path(), &zip, &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("pass --handler NAME"),
        "{}",
        stderr(&output)
    );
    assert_eq!(leftovers(out.path()), Vec::<String>::new());
}

#[test]
fn a_dynamically_linked_bootstrap_is_refused() {
    ok_or_skip!(tools());
    // The test profile's `bootstrap` links glibc dynamically: it would not start on an image
    // with another glibc, so it must never reach a package.
    let Some(dynamic) = integration_tests::require(
        integration_tests::host_binary("bootstrap"),
        "bootstrap (host build)",
    ) else {
        return;
    };
    let out = TempDir::new().unwrap();
    let output = Command::new("bash")
        .arg(workspace_root().join("scripts").join("package-lambda.sh"))
        .arg(example(SHELL_WORKER))
        .arg("-o")
        .arg(out.path().join("function.zip"))
        .env("CARGO_TARGET_DIR", target_dir())
        .env("BOOTSTRAP_BIN", &dynamic)
        .output()
        .expect("run scripts/package-lambda.sh");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is dynamically linked"),
        "{}",
        stderr(&output)
    );
    assert_eq!(leftovers(out.path()), Vec::<String>::new());
}
