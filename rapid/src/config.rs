//! The configuration of one function environment: the function (from `function.json`, see
//! [`proto::function_config`]) plus what the server adds (its runtime, task root, region and
//! the init timeout).

use crate::cgroup::Cgroups;
use proto::function_config::{self, InitializationType};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use proto::function_config::INIT_TIMEOUT;
pub use proto::invoke_api::ACCOUNT_ID;

#[derive(Debug, Clone)]
pub struct EnvironmentConfig {
    pub function_name: String,
    pub function_version: String,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub region: String,
    pub handler: String,
    pub task_root: PathBuf,
    /// The runtime executable and its arguments.
    pub runtime: PathBuf,
    pub runtime_args: Vec<String>,
    /// User environment; reserved names are set by the server and cannot be overridden.
    pub environment: Vec<(String, String)>,
    pub init_type: InitializationType,
    /// Where each runtime gets a cgroup of its own (memory and process limits, a kill that
    /// reaches every descendant). `None` runs it unconfined: inside a microVM, where the VM is
    /// the sandbox.
    pub cgroups: Option<Arc<Cgroups>>,
    /// Where `Max Memory Used` comes from without a cgroup.
    pub memory_source: MemorySource,
    /// Where the external extensions are (`/opt/extensions` on Lambda): every executable file
    /// in it is started before the runtime. `None`: no external extensions.
    pub extensions_dir: Option<PathBuf>,
    /// Where OOM kills are counted when there is no cgroup: the kernel's log, for an
    /// environment that is the whole machine (inside a microVM).
    pub oom_log: Option<Arc<crate::process::oom::KernelOomLog>>,
}

/// Where a runtime's `Max Memory Used` comes from when it has no cgroup of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemorySource {
    /// The largest peak resident set among the runtime's processes (`/proc`): a sandbox that
    /// shares its machine.
    #[default]
    Processes,
    /// The machine's memory in use (`sysinfo(2)`, one system call): the machine is the sandbox,
    /// as a microVM is, and all of its memory is the function's.
    Machine,
}

impl EnvironmentConfig {
    /// A configuration with `function.json`'s defaults for everything but the runtime, whose
    /// directory is the task root.
    pub fn new(runtime: PathBuf) -> Self {
        let task_root = runtime
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_function(
            &function_config::FunctionConfig::with_handler("handler"),
            runtime,
            task_root,
        )
    }

    /// The server's view of a function's `function.json`, its runtime at `runtime` and its code
    /// in `task_root`.
    pub fn from_function(
        function: &function_config::FunctionConfig,
        runtime: PathBuf,
        task_root: PathBuf,
    ) -> Self {
        EnvironmentConfig {
            function_name: function.function_name.clone(),
            function_version: "$LATEST".into(),
            memory_mb: function.memory_mb,
            timeout: Duration::from_secs(u64::from(function.timeout_secs)),
            init_timeout: INIT_TIMEOUT,
            region: "us-east-1".into(),
            handler: function.handler.clone(),
            task_root,
            runtime,
            runtime_args: Vec::new(),
            environment: function.environment.clone().into_iter().collect(),
            init_type: function.initialization_type,
            cgroups: None,
            memory_source: MemorySource::Processes,
            extensions_dir: None,
            oom_log: None,
        }
    }

    /// The ARN the runtime sees as the invoked function (the emulator's fixed account id).
    pub fn function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{ACCOUNT_ID}:function:{}",
            self.region, self.function_name
        )
    }
}
