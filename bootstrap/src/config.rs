//! The function's static configuration, read once from the reserved environment variables.

use crate::error::ConfigError;
use proto::env;
use std::ffi::OsString;

/// What the platform tells the runtime about the function at start-up. Values the platform did
/// not set are `None`: a runtime outside Lambda (a test, the emulator) may leave some out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub function_name: Option<String>,
    pub memory_mb: Option<u32>,
    pub version: Option<String>,
    pub log_group_name: Option<String>,
    pub log_stream_name: Option<String>,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE`: `on-demand`, `provisioned-concurrency` or `snap-start`.
    pub initialization_type: Option<String>,
}

impl Config {
    /// Reads the configuration from this process's environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::var_os)
    }

    /// Reads the configuration through `get`, so it can be built without touching the process
    /// environment.
    pub fn from_vars(
        get: impl Fn(&'static str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let text = |name: &'static str| -> Result<Option<String>, ConfigError> {
            get(name)
                .map(|v| v.into_string().map_err(|_| ConfigError::NotUnicode(name)))
                .transpose()
        };
        let memory_mb = text(env::FUNCTION_MEMORY_SIZE)?
            .map(|value| {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| ConfigError::Invalid {
                        name: env::FUNCTION_MEMORY_SIZE,
                        value,
                    })
            })
            .transpose()?;
        Ok(Config {
            function_name: text(env::FUNCTION_NAME)?,
            memory_mb,
            version: text(env::FUNCTION_VERSION)?,
            log_group_name: text(env::LOG_GROUP_NAME)?,
            log_stream_name: text(env::LOG_STREAM_NAME)?,
            initialization_type: text(env::INITIALIZATION_TYPE)?,
        })
    }

    /// Whether this environment is initialized for a SnapStart snapshot, so the runtime must run
    /// the before-snapshot hook and wait for `restore/next` before the first invocation.
    pub fn is_snap_start(&self) -> bool {
        self.initialization_type.as_deref() == Some(env::initialization_type::SNAP_START)
    }
}

/// The Runtime API's `host:port`, from `AWS_LAMBDA_RUNTIME_API`.
pub fn runtime_api_from_env() -> Result<String, ConfigError> {
    std::env::var_os(env::RUNTIME_API)
        .ok_or(ConfigError::Missing(env::RUNTIME_API))?
        .into_string()
        .map_err(|_| ConfigError::NotUnicode(env::RUNTIME_API))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStringExt;

    fn config(vars: &[(&'static str, OsString)]) -> Result<Config, ConfigError> {
        let vars: HashMap<&str, OsString> = vars.iter().cloned().collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn reads_every_reserved_variable() {
        let c = config(&[
            (env::FUNCTION_NAME, "fn".into()),
            (env::FUNCTION_MEMORY_SIZE, "256".into()),
            (env::FUNCTION_VERSION, "$LATEST".into()),
            (env::LOG_GROUP_NAME, "/aws/lambda/fn".into()),
            (env::LOG_STREAM_NAME, "stream".into()),
            (env::INITIALIZATION_TYPE, "snap-start".into()),
        ])
        .unwrap();
        assert_eq!(c.function_name.as_deref(), Some("fn"));
        assert_eq!(c.memory_mb, Some(256));
        assert_eq!(c.version.as_deref(), Some("$LATEST"));
        assert_eq!(c.log_group_name.as_deref(), Some("/aws/lambda/fn"));
        assert_eq!(c.log_stream_name.as_deref(), Some("stream"));
        assert!(c.is_snap_start());
    }

    #[test]
    fn absent_variables_are_none() {
        let c = config(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.is_snap_start());
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert_eq!(
            config(&[(env::FUNCTION_MEMORY_SIZE, "lots".into())]),
            Err(ConfigError::Invalid {
                name: env::FUNCTION_MEMORY_SIZE,
                value: "lots".into()
            })
        );
        assert_eq!(
            config(&[(env::FUNCTION_NAME, OsString::from_vec(vec![0xff, 0xfe]))]),
            Err(ConfigError::NotUnicode(env::FUNCTION_NAME))
        );
    }
}
