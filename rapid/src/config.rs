//! The configuration of one function environment: the function (from `function.json`, see
//! [`proto::function_config`]) plus what the server adds (its runtime, task root, region and
//! the init timeout).

use crate::cgroup::Cgroups;
use proto::function_config::{self, InitializationType};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The account id in the ARNs the environment hands out (the emulator's).
pub const ACCOUNT_ID: &str = "012345678912";

/// Lambda's limit on a function's init phase.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Delay before each retry of a failed asynchronous invoke (AWS waits minutes).
    pub async_retry_delay: Duration,
    /// How often a failed asynchronous invoke is retried (0 to 2).
    pub maximum_retry_attempts: u32,
    /// How long an asynchronous invoke may wait (throttled, retried) before it is given up.
    pub maximum_event_age: Duration,
    /// Where failed asynchronous invokes go, as AWS on-failure destination records.
    pub on_failure_dir: Option<PathBuf>,
    /// Where each runtime gets a cgroup of its own (memory and process limits, a kill that
    /// reaches every descendant). `None` runs it unconfined: inside a microVM, where the VM is
    /// the sandbox.
    pub cgroups: Option<Arc<Cgroups>>,
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
            async_retry_delay: Duration::from_secs(1),
            maximum_retry_attempts: function.maximum_retry_attempts,
            maximum_event_age: Duration::from_secs(u64::from(function.maximum_event_age_secs)),
            on_failure_dir: None,
            cgroups: None,
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
