//! Reserved environment variables of the Lambda execution environment.
//!
//! Names follow the AWS documentation ("Defined runtime environment variables").

pub const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
pub const HANDLER: &str = "_HANDLER";
pub const TASK_ROOT: &str = "LAMBDA_TASK_ROOT";
pub const RUNTIME_DIR: &str = "LAMBDA_RUNTIME_DIR";
pub const FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";
pub const FUNCTION_MEMORY_SIZE: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
pub const FUNCTION_VERSION: &str = "AWS_LAMBDA_FUNCTION_VERSION";
pub const LOG_GROUP_NAME: &str = "AWS_LAMBDA_LOG_GROUP_NAME";
pub const LOG_STREAM_NAME: &str = "AWS_LAMBDA_LOG_STREAM_NAME";
pub const INITIALIZATION_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";
pub const REGION: &str = "AWS_REGION";
pub const DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
pub const EXECUTION_ENV: &str = "AWS_EXECUTION_ENV";
pub const TRACE_ID: &str = "_X_AMZN_TRACE_ID";
pub const TZ: &str = "TZ";

/// Values of `AWS_LAMBDA_INITIALIZATION_TYPE`.
pub mod initialization_type {
    pub const ON_DEMAND: &str = "on-demand";
    pub const PROVISIONED_CONCURRENCY: &str = "provisioned-concurrency";
    pub const SNAP_START: &str = "snap-start";
}
