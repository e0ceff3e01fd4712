//! The configuration of one function environment.

use std::path::PathBuf;
use std::time::Duration;

/// How the environment is initialized; the value of `AWS_LAMBDA_INITIALIZATION_TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitType {
    /// Init runs when the first invoke arrives.
    OnDemand,
    /// Init runs at once, before any invoke.
    ProvisionedConcurrency,
    /// Init runs at once, then the runtime waits in `restore/next` for a snapshot and a restore.
    SnapStart,
}

impl InitType {
    pub fn as_env_value(self) -> &'static str {
        use proto::env::initialization_type as t;
        match self {
            InitType::OnDemand => t::ON_DEMAND,
            InitType::ProvisionedConcurrency => t::PROVISIONED_CONCURRENCY,
            InitType::SnapStart => t::SNAP_START,
        }
    }

    /// Whether init starts before the first invoke.
    pub fn is_eager(self) -> bool {
        self != InitType::OnDemand
    }
}

#[derive(Debug, Clone)]
pub struct FunctionConfig {
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
    pub init_type: InitType,
    /// Delay before each retry of a failed asynchronous invoke (AWS waits minutes).
    pub async_retry_delay: Duration,
    /// Where failed asynchronous invokes go, as AWS on-failure destination records.
    pub on_failure_dir: Option<PathBuf>,
}

impl FunctionConfig {
    /// A configuration with AWS's defaults for everything but the runtime.
    pub fn new(runtime: PathBuf) -> Self {
        let task_root = runtime
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        FunctionConfig {
            function_name: "function".into(),
            function_version: "$LATEST".into(),
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            init_timeout: Duration::from_secs(10),
            region: "us-east-1".into(),
            handler: "handler".into(),
            task_root,
            runtime,
            runtime_args: Vec::new(),
            environment: Vec::new(),
            init_type: InitType::OnDemand,
            async_retry_delay: Duration::from_secs(1),
            on_failure_dir: None,
        }
    }

    /// The ARN the runtime sees as the invoked function (the emulator's fixed account id).
    pub fn function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:012345678912:function:{}",
            self.region, self.function_name
        )
    }
}
