//! A function as the invoke API sees it: its identity (name, version, region, ARN) and what
//! happens to its asynchronous events.

use proto::function_config::FunctionConfig;
use proto::invoke_api::{ACCOUNT_ID, LATEST};
use std::path::PathBuf;
use std::time::Duration;

/// One function behind the invoke API.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    /// The version every invoke runs (`$LATEST`: versions do not exist yet).
    pub version: String,
    pub region: String,
    pub events: AsyncPolicy,
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
