//! The per-function configuration file, `function.json`: written into the image at
//! [`crate::layout::CONFIG`] by the image builder, read there by the guest init, and read by the
//! host's function service. Its defaults and ranges are defined here and nowhere else.
//!
//! Parsing validates everything, so a `FunctionConfig` in hand is always within range.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::env;
use serde::{Deserialize, Serialize};

/// Lambda's limit on a function's init phase.
pub const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Allowed `memory_mb`, as on Lambda.
pub const MEMORY_MB: RangeInclusive<u32> = 128..=10240;
/// Allowed `timeout_secs`, as on Lambda.
pub const TIMEOUT_SECS: RangeInclusive<u32> = 1..=900;
/// Allowed `reserved_concurrency` and `provisioned_concurrency` (Lambda's default account limit
/// is 1000 concurrent executions).
pub const CONCURRENCY: RangeInclusive<u32> = 0..=1000;
/// Allowed `maximum_retry_attempts` of asynchronous invokes, as on Lambda.
pub const MAXIMUM_RETRY_ATTEMPTS: RangeInclusive<u32> = 0..=2;
/// Allowed `maximum_event_age_secs` of asynchronous invokes: 60 s to 6 h, as on Lambda.
pub const MAXIMUM_EVENT_AGE_SECS: RangeInclusive<u32> = 60..=21_600;
/// Allowed `tmp_size_mb` (Lambda's ephemeral storage goes from 512 MB to 10 GB; smaller is useful
/// in a microVM where /tmp is RAM).
pub const TMP_SIZE_MB: RangeInclusive<u32> = 1..=10240;

/// Lambda's limit on a handler string.
const HANDLER_MAX_LEN: usize = 128;
/// Lambda's limit on a function name; the name also becomes a file name (`<name>.cpio`).
const FUNCTION_NAME_MAX_LEN: usize = 64;
/// Longest path the kernel accepts (PATH_MAX less the NUL).
const PATH_MAX_LEN: usize = 4095;

/// Variables the execution environment sets itself: a function may not override them.
const RESERVED_VARIABLES: &[&str] = &[
    env::HANDLER,
    env::TRACE_ID,
    env::DEFAULT_REGION,
    env::REGION,
    env::EXECUTION_ENV,
    env::FUNCTION_NAME,
    env::FUNCTION_MEMORY_SIZE,
    env::FUNCTION_VERSION,
    env::INITIALIZATION_TYPE,
    env::LOG_GROUP_NAME,
    env::LOG_STREAM_NAME,
    env::RUNTIME_API,
    env::TASK_ROOT,
    env::RUNTIME_DIR,
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];
/// The environment's own namespace: reserved as a whole so that variables init adds later cannot
/// be shadowed, except for the ones Lambda documents as user-settable.
const RESERVED_PREFIX: &str = "AWS_LAMBDA_";
const USER_SETTABLE_WITH_RESERVED_PREFIX: &[&str] =
    &["AWS_LAMBDA_EXEC_WRAPPER", "AWS_LAMBDA_DOTNET_PREJIT"];

/// How the execution environment was initialized (`AWS_LAMBDA_INITIALIZATION_TYPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitializationType {
    #[default]
    OnDemand,
    ProvisionedConcurrency,
    SnapStart,
}

impl InitializationType {
    /// The value of `AWS_LAMBDA_INITIALIZATION_TYPE`.
    pub fn as_str(self) -> &'static str {
        use env::initialization_type as t;
        match self {
            Self::OnDemand => t::ON_DEMAND,
            Self::ProvisionedConcurrency => t::PROVISIONED_CONCURRENCY,
            Self::SnapStart => t::SNAP_START,
        }
    }

    /// Whether init runs before the first invoke (at once, rather than when one arrives).
    pub fn is_eager(self) -> bool {
        self != Self::OnDemand
    }
}

impl std::str::FromStr for InitializationType {
    type Err = String;

    /// Parses the `AWS_LAMBDA_INITIALIZATION_TYPE` value.
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::OnDemand,
            Self::ProvisionedConcurrency,
            Self::SnapStart,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| {
            format!("expected on-demand, provisioned-concurrency or snap-start, got `{s}`")
        })
    }
}

impl fmt::Display for InitializationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of `function.json`. Construct it with [`FunctionConfig::from_json`] or
/// [`FunctionConfig::load`]; both validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// `AWS_LAMBDA_FUNCTION_NAME`: 1 to 64 letters, digits, `-` or `_`.
    #[serde(default = "default_function_name")]
    pub function_name: String,
    /// `_HANDLER`: passed to the runtime as is.
    pub handler: String,
    /// Absolute path in the image of the runtime executable init starts.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Invocation deadline, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u32,
    /// Size of the /tmp tmpfs, in MB.
    #[serde(default = "default_tmp_size_mb")]
    pub tmp_size_mb: u32,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE`.
    #[serde(default)]
    pub initialization_type: InitializationType,
    /// The function's own environment variables. A `BTreeMap` so the serialized form is sorted.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The host's cap on this function's concurrent environments (Lambda's reserved
    /// concurrency); absent: only the host-wide cap applies. The host reads it; the guest
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
    /// Environments the host initializes at start and keeps (Lambda's provisioned
    /// concurrency). The host reads it; the guest ignores it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub provisioned_concurrency: u32,
    /// How often a failed asynchronous invoke is retried.
    #[serde(default = "default_maximum_retry_attempts")]
    pub maximum_retry_attempts: u32,
    /// How long an asynchronous invoke may wait before it is given up, in seconds.
    #[serde(default = "default_maximum_event_age_secs")]
    pub maximum_event_age_secs: u32,
    /// Whether the function's environments have outbound networking (a network device, and a
    /// network of their own on the host). On by default, as on Lambda; written out only when
    /// off, so images made before the switch keep their bytes.
    #[serde(default = "default_networking", skip_serializing_if = "is_true")]
    pub networking: bool,
    /// Lambda layers, merged into `/opt` in order (a later layer's files win): zip files or
    /// directories, relative to the directory of `function.json`. The image builder reads it;
    /// an extension comes as a layer holding `extensions/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
}

fn default_maximum_retry_attempts() -> u32 {
    2
}
fn default_maximum_event_age_secs() -> u32 {
    21_600
}

fn default_networking() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_function_name() -> String {
    "function".to_owned()
}
fn default_runtime() -> String {
    crate::layout::DEFAULT_RUNTIME.to_owned()
}
fn default_memory_mb() -> u32 {
    128
}
fn default_timeout_secs() -> u32 {
    3
}
fn default_tmp_size_mb() -> u32 {
    512
}

/// Why a function config was rejected. Each variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read function config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error in the file at `path`; the source says which.
    #[error("invalid function config {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
    /// Malformed JSON, a wrong type, a missing or unknown key. `key` is the JSON path of the
    /// error ("." for the top level, where serde's message names the key).
    #[error("{}{message}", key_prefix(key))]
    Parse { key: String, message: String },
    #[error("`{key}` must be between {} and {}, got {value}", range.start(), range.end())]
    OutOfRange {
        key: &'static str,
        value: u32,
        range: RangeInclusive<u32>,
    },
    #[error("`{key}` {reason}")]
    Invalid { key: String, reason: String },
    #[error(
        "`environment.{name}` is reserved by the Lambda execution environment and cannot be set"
    )]
    ReservedVariable { name: String },
}

fn key_prefix(key: &str) -> String {
    if key == "." || key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

impl FunctionConfig {
    /// A config with every optional key at its default.
    pub fn with_handler(handler: impl Into<String>) -> Self {
        Self {
            function_name: default_function_name(),
            handler: handler.into(),
            runtime: default_runtime(),
            memory_mb: default_memory_mb(),
            timeout_secs: default_timeout_secs(),
            tmp_size_mb: default_tmp_size_mb(),
            initialization_type: InitializationType::default(),
            environment: BTreeMap::new(),
            reserved_concurrency: None,
            provisioned_concurrency: 0,
            maximum_retry_attempts: default_maximum_retry_attempts(),
            maximum_event_age_secs: default_maximum_event_age_secs(),
            networking: default_networking(),
            layers: Vec::new(),
        }
    }

    /// Parses and validates a config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        de.end().map_err(|e| ConfigError::Parse {
            key: ".".to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&bytes).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// The form written into the image: pretty JSON with every key, in a fixed order, and a
    /// trailing newline, so equal configs give equal bytes.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self)
            .expect("a struct of strings, integers and a string map always serializes");
        out.push(b'\n');
        out
    }

    /// Checks every value. [`FunctionConfig::from_json`] calls it; call it again after changing
    /// fields by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("memory_mb", self.memory_mb, MEMORY_MB)?;
        check_range("timeout_secs", self.timeout_secs, TIMEOUT_SECS)?;
        check_range("tmp_size_mb", self.tmp_size_mb, TMP_SIZE_MB)?;
        if let Some(reserved) = self.reserved_concurrency {
            check_range("reserved_concurrency", reserved, CONCURRENCY)?;
        }
        check_range(
            "maximum_retry_attempts",
            self.maximum_retry_attempts,
            MAXIMUM_RETRY_ATTEMPTS,
        )?;
        check_range(
            "maximum_event_age_secs",
            self.maximum_event_age_secs,
            MAXIMUM_EVENT_AGE_SECS,
        )?;
        check_range(
            "provisioned_concurrency",
            self.provisioned_concurrency,
            CONCURRENCY,
        )?;
        if let Some(reserved) = self.reserved_concurrency {
            if self.provisioned_concurrency > reserved {
                return Err(invalid(
                    "provisioned_concurrency",
                    format!("must not exceed reserved_concurrency ({reserved})"),
                ));
            }
        }
        check_function_name(&self.function_name)?;
        check_handler(&self.handler)?;
        check_runtime(&self.runtime)?;
        for (name, value) in &self.environment {
            check_variable(name, value)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.is_empty() || layer.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("layers[{i}]"),
                    "must be a path (a zip file or a directory)",
                ));
            }
        }
        Ok(())
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn check_range(
    key: &'static str,
    value: u32,
    range: RangeInclusive<u32>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { key, value, range })
    }
}

fn check_function_name(name: &str) -> Result<(), ConfigError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > FUNCTION_NAME_MAX_LEN || !valid_chars {
        return Err(invalid(
            "function_name",
            format!(
                "must be 1 to {FUNCTION_NAME_MAX_LEN} letters, digits, `-` or `_`, got {name:?}"
            ),
        ));
    }
    Ok(())
}

fn check_handler(handler: &str) -> Result<(), ConfigError> {
    if handler.is_empty() || handler.len() > HANDLER_MAX_LEN {
        return Err(invalid(
            "handler",
            format!("must be 1 to {HANDLER_MAX_LEN} characters long"),
        ));
    }
    if handler.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "handler",
            format!("must not contain whitespace or control characters, got {handler:?}"),
        ));
    }
    Ok(())
}

fn check_runtime(runtime: &str) -> Result<(), ConfigError> {
    // A normalized absolute path, so the builder can look it up in the image and init can exec it
    // without resolving `..` against a root it does not control.
    let normalized = runtime.starts_with('/')
        && runtime.len() > 1
        && runtime.len() <= PATH_MAX_LEN
        && runtime[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !runtime.chars().any(char::is_control);
    if !normalized {
        return Err(invalid(
            "runtime",
            format!(
                "must be a normalized absolute path (no `.`, `..`, `//` or trailing `/`), got \
                 {runtime:?}"
            ),
        ));
    }
    Ok(())
}

fn check_variable(name: &str, value: &str) -> Result<(), ConfigError> {
    let mut bytes = name.bytes();
    let valid_name = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_name {
        return Err(invalid(
            &format!("environment.{name}"),
            "is not a valid variable name (letters, digits and `_`, not starting with a digit)",
        ));
    }
    let reserved = RESERVED_VARIABLES.contains(&name)
        || (name.starts_with(RESERVED_PREFIX)
            && !USER_SETTABLE_WITH_RESERVED_PREFIX.contains(&name));
    if reserved {
        return Err(ConfigError::ReservedVariable {
            name: name.to_owned(),
        });
    }
    // execve takes NUL-terminated strings: a NUL would silently truncate the value.
    if value.contains('\0') {
        return Err(invalid(
            &format!("environment.{name}"),
            "must not contain a NUL character",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FunctionConfig, ConfigError> {
        FunctionConfig::from_json(json.as_bytes())
    }

    fn error(json: &str) -> String {
        match parse(json) {
            Ok(config) => panic!("{json} was accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn only_handler_gives_defaults() {
        let config = parse(r#"{"handler": "main.handler"}"#).unwrap();
        assert_eq!(config, FunctionConfig::with_handler("main.handler"));
        assert_eq!(config.function_name, "function");
        assert_eq!(config.runtime, "/var/runtime/bootstrap");
        assert_eq!(config.memory_mb, 128);
        assert_eq!(config.timeout_secs, 3);
        assert_eq!(config.tmp_size_mb, 512);
        assert_eq!(config.initialization_type, InitializationType::OnDemand);
        assert!(config.environment.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"{"handler": "h", "function_name": "my-fn_1", "runtime": "/var/task/bootstrap",
                "memory_mb": 10240, "timeout_secs": 900, "tmp_size_mb": 1,
                "initialization_type": "snap-start",
                "environment": {"B": "2", "A": "1", "AWS_LAMBDA_EXEC_WRAPPER": "/opt/w", "TZ": ":UTC"}}"#,
        )
        .unwrap();
        assert_eq!(config.function_name, "my-fn_1");
        assert_eq!(config.runtime, "/var/task/bootstrap");
        assert_eq!(
            (config.memory_mb, config.timeout_secs, config.tmp_size_mb),
            (10240, 900, 1)
        );
        assert_eq!(config.initialization_type, InitializationType::SnapStart);
        assert_eq!(config.initialization_type.as_str(), "snap-start");
        assert_eq!(config.environment.len(), 4);
    }

    #[test]
    fn initialization_types_use_the_lambda_spelling() {
        for (json, expected) in [
            ("on-demand", InitializationType::OnDemand),
            (
                "provisioned-concurrency",
                InitializationType::ProvisionedConcurrency,
            ),
            ("snap-start", InitializationType::SnapStart),
        ] {
            let config = parse(&format!(
                r#"{{"handler": "h", "initialization_type": "{json}"}}"#
            ))
            .unwrap();
            assert_eq!(config.initialization_type, expected);
            assert_eq!(expected.to_string(), json);
        }
        let message = error(r#"{"handler": "h", "initialization_type": "OnDemand"}"#);
        assert!(message.contains("`initialization_type`"), "{message}");
    }

    #[test]
    fn canonical_json_round_trips_and_is_sorted() {
        let config =
            parse(r#"{"environment": {"Z": "z", "A": "a"}, "memory_mb": 256, "handler": "h"}"#)
                .unwrap();
        let bytes = config.to_canonical_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.find("\"A\"").unwrap() < text.find("\"Z\"").unwrap());
        assert!(text.starts_with("{\n  \"function_name\": \"function\",\n"));
        let again = FunctionConfig::from_json(&bytes).unwrap();
        assert_eq!(again, config);
        assert_eq!(again.to_canonical_json(), bytes);
    }

    #[test]
    fn concurrency_settings_are_optional_and_provisioned_fits_in_reserved() {
        let config = FunctionConfig::from_json(
            br#"{"handler": "h", "reserved_concurrency": 3, "provisioned_concurrency": 2}"#,
        )
        .unwrap();
        assert_eq!(
            (config.reserved_concurrency, config.provisioned_concurrency),
            (Some(3), 2)
        );
        let plain = FunctionConfig::from_json(br#"{"handler": "h"}"#).unwrap();
        assert_eq!(
            (plain.reserved_concurrency, plain.provisioned_concurrency),
            (None, 0)
        );
        // Absent settings stay absent in the image's canonical form.
        let canonical = String::from_utf8(plain.to_canonical_json()).unwrap();
        assert!(!canonical.contains("concurrency"), "{canonical}");
        let message =
            error(r#"{"handler": "h", "reserved_concurrency": 1, "provisioned_concurrency": 2}"#);
        assert!(message.contains("`provisioned_concurrency`"), "{message}");
    }

    #[test]
    fn networking_is_on_unless_switched_off() {
        let plain = parse(r#"{"handler": "h"}"#).unwrap();
        assert!(plain.networking);
        let canonical = String::from_utf8(plain.to_canonical_json()).unwrap();
        assert!(!canonical.contains("networking"), "{canonical}");
        let off = parse(r#"{"handler": "h", "networking": false}"#).unwrap();
        assert!(!off.networking);
        let again = FunctionConfig::from_json(&off.to_canonical_json()).unwrap();
        assert_eq!(again, off);
        let message = error(r#"{"handler": "h", "networking": "yes"}"#);
        assert!(message.contains("`networking`"), "{message}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (key, bad) in [
            ("memory_mb", "127"),
            ("memory_mb", "10241"),
            ("timeout_secs", "0"),
            ("timeout_secs", "901"),
            ("tmp_size_mb", "0"),
            ("tmp_size_mb", "10241"),
            ("reserved_concurrency", "1001"),
            ("provisioned_concurrency", "1001"),
        ] {
            let message = error(&format!(r#"{{"handler": "h", "{key}": {bad}}}"#));
            assert!(message.contains(&format!("`{key}`")), "{message}");
            assert!(message.contains(bad), "{message}");
            assert!(message.contains("must be between"), "{message}");
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (key, bad) in [
            ("memory_mb", "-1"),
            ("memory_mb", "\"128\""),
            ("timeout_secs", "1.5"),
            ("tmp_size_mb", "99999999999"),
            ("handler", "3"),
            ("environment", "[]"),
        ] {
            let json = if key == "handler" {
                format!(r#"{{"handler": {bad}}}"#)
            } else {
                format!(r#"{{"handler": "h", "{key}": {bad}}}"#)
            };
            let message = error(&json);
            assert!(message.contains(&format!("`{key}`")), "{message}");
        }
        let message = error(r#"{"handler": "h", "environment": {"A": 1}}"#);
        assert!(message.contains("`environment.A`"), "{message}");
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        let message = error(r#"{"handler": "h", "memory": 256}"#);
        assert!(message.contains("unknown field `memory`"), "{message}");
        let message = error(r#"{"memory_mb": 256}"#);
        assert!(message.contains("missing field `handler`"), "{message}");
        let message = error(r#"{"handler": "h", "handler": "g"}"#);
        assert!(message.contains("duplicate field `handler`"), "{message}");
    }

    #[test]
    fn malformed_json_is_rejected() {
        for json in ["", "{", "[]", r#"{"handler": "h"} trailing"#, "null"] {
            assert!(
                matches!(parse(json), Err(ConfigError::Parse { .. })),
                "{json}"
            );
        }
    }

    #[test]
    fn reserved_variables_are_rejected() {
        for name in [
            "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_RUNTIME_API",
            "AWS_LAMBDA_SOMETHING_NEW",
            "_HANDLER",
            "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_EXECUTION_ENV",
            "_X_AMZN_TRACE_ID",
            "AWS_SESSION_TOKEN",
        ] {
            let message = error(&format!(
                r#"{{"handler": "h", "environment": {{"{name}": "x"}}}}"#
            ));
            assert!(
                message.contains(&format!("`environment.{name}` is reserved")),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_variable_names_and_values_are_rejected() {
        for name in ["", "1A", "A-B", "A=B", "A B", "É"] {
            let message = error(&format!(
                r#"{{"handler": "h", "environment": {{"{name}": "x"}}}}"#
            ));
            assert!(
                message.contains("is not a valid variable name"),
                "{name}: {message}"
            );
        }
        let message = error(r#"{"handler": "h", "environment": {"A": "a\u0000b"}}"#);
        assert!(message.contains("NUL"), "{message}");
    }

    #[test]
    fn bad_strings_are_rejected() {
        for (json, key) in [
            (r#"{"handler": ""}"#, "handler"),
            (r#"{"handler": "a b"}"#, "handler"),
            (r#"{"handler": "h", "function_name": ""}"#, "function_name"),
            (
                r#"{"handler": "h", "function_name": "a/b"}"#,
                "function_name",
            ),
            (
                r#"{"handler": "h", "function_name": "../x"}"#,
                "function_name",
            ),
            (r#"{"handler": "h", "runtime": "bootstrap"}"#, "runtime"),
            (r#"{"handler": "h", "runtime": "/"}"#, "runtime"),
            (r#"{"handler": "h", "runtime": "/var/../etc/x"}"#, "runtime"),
            (r#"{"handler": "h", "runtime": "/var//x"}"#, "runtime"),
            (r#"{"handler": "h", "runtime": "/var/x/"}"#, "runtime"),
        ] {
            let message = error(json);
            assert!(message.contains(&format!("`{key}`")), "{json}: {message}");
        }
        let long = "x".repeat(65);
        let message = error(&format!(r#"{{"handler": "h", "function_name": "{long}"}}"#));
        assert!(message.contains("`function_name`"), "{message}");
    }

    #[test]
    fn load_names_the_file_and_keeps_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("function.json");
        std::fs::write(&path, r#"{"handler": "h", "memory_mb": 1}"#).unwrap();
        let err = FunctionConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("function.json"), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.starts_with("`memory_mb` must be between"), "{cause}");
        std::fs::write(&path, r#"{"handler": "h", "memory_mb": 256}"#).unwrap();
        assert_eq!(FunctionConfig::load(&path).unwrap().memory_mb, 256);
    }

    #[test]
    fn load_reports_the_path() {
        let message = FunctionConfig::load(Path::new("/nonexistent/function.json"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/function.json"), "{message}");
    }
}
