//! A function as the invoke API sees it: its identity (name, version, region, ARN), its
//! configuration (what `GetFunction` describes) and what happens to its asynchronous events.

use proto::function_config::FunctionConfig;
use proto::invoke_api::{ACCOUNT_ID, LATEST};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One function behind the invoke API.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    /// The version every invoke runs (`$LATEST`: versions do not exist yet).
    pub version: String,
    pub region: String,
    pub events: AsyncPolicy,
    /// Its `function.json` (or, in local mode, the flags' equivalent).
    pub config: FunctionConfig,
    /// Its code, where there is one file of it (a microVM image).
    pub code: Option<Code>,
}

/// A function's code as `GetFunction` describes it.
#[derive(Debug, Clone)]
pub struct Code {
    /// Bytes.
    pub size: u64,
    pub last_modified: SystemTime,
}

impl Code {
    /// The code in the file at `path`.
    pub fn of(path: &std::path::Path) -> std::io::Result<Code> {
        let metadata = std::fs::metadata(path)?;
        Ok(Code {
            size: metadata.len(),
            last_modified: metadata.modified()?,
        })
    }
}

/// What happens to a function's asynchronous (`Event`) invokes.
#[derive(Debug, Clone)]
pub struct AsyncPolicy {
    /// Delay before each retry of a failed event (AWS waits minutes).
    pub retry_delay: Duration,
    /// How often a failed event is retried (0 to 2).
    pub maximum_retry_attempts: u32,
    /// How long an event may wait (throttled, retried) before it is given up.
    pub maximum_event_age: Duration,
    /// Where failed events go, as AWS on-failure destination records.
    pub on_failure_dir: Option<PathBuf>,
}

impl Function {
    /// The function `config` describes, with Lambda's defaults for the rest (region
    /// `us-east-1`, a one-second retry delay, no failure destination).
    pub fn new(config: &FunctionConfig) -> Function {
        Function {
            name: config.function_name.clone(),
            version: LATEST.into(),
            region: "us-east-1".into(),
            events: AsyncPolicy {
                retry_delay: Duration::from_secs(1),
                maximum_retry_attempts: config.maximum_retry_attempts,
                maximum_event_age: Duration::from_secs(u64::from(config.maximum_event_age_secs)),
                on_failure_dir: None,
            },
            config: config.clone(),
            code: None,
        }
    }

    /// Its unqualified ARN (the emulator's fixed account id).
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{ACCOUNT_ID}:function:{}",
            self.region, self.name
        )
    }
}
