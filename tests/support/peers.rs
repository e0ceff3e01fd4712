//! The runtimes the conformance suite serves, each running the same conformance function
//! (`tests/functions/README.md`).

use crate::{host_binary, require, workspace_root};
use std::path::PathBuf;

/// A runtime under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Our `bootstrap` library (`tests/functions/bootstrap-echo`).
    BootstrapLibrary,
    /// Our static `bootstrap` binary driving the example Python worker.
    BootstrapWorker,
    /// The unmodified third-party `lambda_runtime` crate (`tests/functions/rust-echo`).
    LambdaRuntimeCrate,
    /// The unmodified awslambdaric package from PyPI (`tests/functions/python-ric`).
    AwsLambdaRic,
}

/// How `lambda-local` starts a peer: the runtime executable, its handler, its task root and any
/// extra environment.
#[derive(Debug, Clone)]
pub struct Launch {
    pub runtime: PathBuf,
    pub handler: String,
    pub task_root: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The static `bootstrap` built by scripts/test.sh (`--target x86_64-unknown-linux-gnu`).
pub fn static_bootstrap() -> PathBuf {
    std::env::var_os("BOOTSTRAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::target_dir()
                .join("x86_64-unknown-linux-gnu")
                .join("release")
                .join("bootstrap")
        })
}

/// The Python interpreter of the test virtualenv, which has awslambdaric installed.
pub fn venv_python() -> PathBuf {
    std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv").join("bin").join("python3"))
}

impl Peer {
    pub const ALL: [Peer; 4] = [
        Peer::BootstrapLibrary,
        Peer::BootstrapWorker,
        Peer::LambdaRuntimeCrate,
        Peer::AwsLambdaRic,
    ];

    /// How to launch this peer, or `None` (with the reason printed) when it is not built.
    pub fn launch(self) -> Option<Launch> {
        let functions = workspace_root().join("tests").join("functions");
        match self {
            Peer::BootstrapLibrary => {
                let runtime = require(host_binary("bootstrap-echo"), "bootstrap-echo")?;
                Some(Launch {
                    task_root: functions.join("bootstrap-echo"),
                    runtime,
                    handler: "echo".into(),
                    env: Vec::new(),
                })
            }
            Peer::BootstrapWorker => {
                let runtime = require(static_bootstrap(), "static bootstrap binary")?;
                let task_root = workspace_root()
                    .join("bootstrap")
                    .join("examples")
                    .join("python-worker");
                Some(Launch {
                    runtime,
                    handler: "worker.py".into(),
                    task_root,
                    env: Vec::new(),
                })
            }
            Peer::LambdaRuntimeCrate => {
                let runtime = require(host_binary("rust-echo"), "rust-echo")?;
                Some(Launch {
                    task_root: functions.join("rust-echo"),
                    runtime,
                    handler: "echo".into(),
                    env: Vec::new(),
                })
            }
            Peer::AwsLambdaRic => {
                let python = require(venv_python(), "test virtualenv python with awslambdaric")?;
                let task_root = functions.join("python-ric");
                Some(Launch {
                    runtime: task_root.join("bootstrap"),
                    handler: "echo.handler".into(),
                    task_root,
                    env: vec![("PYTHON".into(), python.display().to_string())],
                })
            }
        }
    }
}
