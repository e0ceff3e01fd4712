//! What init is told: its options (command line, then environment, then defaults) and the
//! function's configuration (`function.json`), turned into the Runtime API server's.
//!
//! As PID 1 the kernel passes init the command-line words it does not know, so unknown arguments
//! are only warned about there; as an ordinary process they are an error.

use crate::host_link::LinkAddr;
use proto::function_config::{ConfigError, FunctionConfig};
use proto::host_link::{HOST_CID, PORT};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the Runtime API is served, as on Lambda.
pub const RUNTIME_API: &str = "127.0.0.1:9001";

pub const USAGE: &str = "\
usage: init [--config PATH] [--host-link unix:PATH|vsock:CID:PORT] [--runtime-api ADDR]
            [--task-root DIR] [--extensions-dir DIR] [--no-setup] [--reconnect]
  --config      function.json (env INIT_CONFIG; default /etc/lambda/function.json)
  --host-link   the host link (env INIT_HOST_LINK; default vsock:2:9999 as PID 1, required otherwise)
  --runtime-api where to serve the Runtime API (env INIT_RUNTIME_API; default 127.0.0.1:9001)
  --task-root   LAMBDA_TASK_ROOT and the runtime's directory (env INIT_TASK_ROOT; default /var/task)
  --extensions-dir  the external extensions, started before the runtime (env INIT_EXTENSIONS_DIR;
                default /opt/extensions as PID 1, none otherwise)
  --no-setup    as PID 1, change nothing machine-wide: no mounts, loopback, hostname, RNG reseed,
                clock or reboot (env INIT_NO_SETUP=1; for tests in a PID namespace)
  --reconnect   reconnect when the host link drops (env INIT_RECONNECT=1; always on as PID 1)
The environment variable INIT_INITIALIZATION_TYPE (on-demand, provisioned-concurrency or
snap-start) overrides function.json's initialization_type; INIT_TIMING=1 sends the host the
guest's timing of every invoke (an invoke_timing frame before each answer); INIT_INIT_TIMEOUT_MS
sets how long the function's init may take (default 10000).";

/// init's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Whether this process is PID 1.
    pub pid1: bool,
    pub config: PathBuf,
    pub host_link: LinkAddr,
    pub runtime_api: SocketAddr,
    pub task_root: PathBuf,
    /// Where the external extensions are (`/opt/extensions` in the guest).
    pub extensions_dir: Option<PathBuf>,
    /// Whether to change the machine: mounts, loopback, hostname, RNG, clock, reboot. Only ever
    /// true as PID 1.
    pub system: bool,
    /// Whether to reconnect when the host link drops (else init shuts down).
    pub reconnect: bool,
    /// Arguments that were not understood (PID 1 only; otherwise they are an error).
    pub ignored: Vec<String>,
    /// `INIT_INITIALIZATION_TYPE`: how the host started this environment, over the image's
    /// `initialization_type` (a provisioned environment of an on-demand function inits at once,
    /// as on Lambda).
    pub init_type: Option<proto::InitializationType>,
    /// `INIT_TIMING=1`: time each invocation for the host (see `timing.rs`).
    pub timing: bool,
    /// `INIT_INIT_TIMEOUT_MS`: how long the function's init may take, over Lambda's 10 s (the
    /// host sets it when told to).
    pub init_timeout: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{flag} {value:?}: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("not PID 1, so there is no vsock default: give --host-link unix:PATH")]
    NoHostLink,
    #[error("help requested")]
    Help,
}

impl Options {
    /// Parses `args` (without the program name); `env` looks up environment variables.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
        pid1: bool,
    ) -> Result<Options, OptionsError> {
        let mut given: Vec<(&'static str, String)> = Vec::new();
        let (mut no_setup, mut reconnect, mut ignored) = (false, false, Vec::new());
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let flag = match arg.as_str() {
                "--no-setup" => {
                    no_setup = true;
                    continue;
                }
                "--reconnect" => {
                    reconnect = true;
                    continue;
                }
                "-h" | "--help" if !pid1 => return Err(OptionsError::Help),
                "--config" => "--config",
                "--host-link" => "--host-link",
                "--runtime-api" => "--runtime-api",
                "--task-root" => "--task-root",
                "--extensions-dir" => "--extensions-dir",
                _ if pid1 => {
                    ignored.push(arg);
                    continue;
                }
                _ => return Err(OptionsError::Unknown(arg)),
            };
            let value = args.next().ok_or(OptionsError::MissingValue(arg))?;
            given.push((flag, value));
        }
        let value = |flag: &str, var: &str| {
            given
                .iter()
                .rev()
                .find(|(f, _)| *f == flag)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
        };
        let flag_on = |var: &str| env(var).is_some_and(|v| v == "1" || v == "true");
        let host_link = match value("--host-link", "INIT_HOST_LINK") {
            Some(v) => v.parse().map_err(|reason| OptionsError::BadValue {
                flag: "--host-link",
                value: v,
                reason,
            })?,
            None if pid1 => LinkAddr::Vsock {
                cid: HOST_CID,
                port: PORT,
            },
            None => return Err(OptionsError::NoHostLink),
        };
        let api = value("--runtime-api", "INIT_RUNTIME_API").unwrap_or(RUNTIME_API.into());
        let runtime_api =
            api.parse()
                .map_err(|e: std::net::AddrParseError| OptionsError::BadValue {
                    flag: "--runtime-api",
                    value: api.clone(),
                    reason: e.to_string(),
                })?;
        let init_type = match env(proto::guest::cmdline::INITIALIZATION_TYPE) {
            Some(v) => Some(v.parse().map_err(|reason| OptionsError::BadValue {
                flag: "INIT_INITIALIZATION_TYPE",
                value: v,
                reason,
            })?),
            None => None,
        };
        Ok(Options {
            init_type,
            pid1,
            config: value("--config", "INIT_CONFIG")
                .unwrap_or(proto::layout::CONFIG.into())
                .into(),
            host_link,
            runtime_api,
            task_root: value("--task-root", "INIT_TASK_ROOT")
                .unwrap_or(proto::layout::TASK_ROOT.into())
                .into(),
            extensions_dir: value("--extensions-dir", "INIT_EXTENSIONS_DIR")
                .or_else(|| pid1.then(|| proto::layout::EXTENSIONS.into()))
                .map(PathBuf::from),
            system: pid1 && !no_setup && !flag_on("INIT_NO_SETUP"),
            reconnect: pid1 || reconnect || flag_on("INIT_RECONNECT"),
            timing: flag_on(proto::guest::cmdline::TIMING),
            init_timeout: match env(proto::guest::cmdline::INIT_TIMEOUT_MS) {
                Some(v) => Some(
                    v.parse()
                        .ok()
                        .filter(|&ms: &u64| ms > 0)
                        .map(std::time::Duration::from_millis)
                        .ok_or_else(|| OptionsError::BadValue {
                            flag: "INIT_INIT_TIMEOUT_MS",
                            value: v,
                            reason: "not a positive number of milliseconds".into(),
                        })?,
                ),
                None => None,
            },
            ignored,
        })
    }
}

/// The function, as init runs it.
pub struct Function {
    /// The Runtime API server's configuration.
    pub rapid: rapid::EnvironmentConfig,
    /// Size of the `/tmp` tmpfs in MB.
    pub tmp_size_mb: u32,
    /// Whether the function has networking (`eth0` set up when the host gave the device).
    pub networking: bool,
}

/// Reads and validates `function.json` and maps it onto the Runtime API server's configuration.
pub fn load_function(options: &Options) -> Result<Function, ConfigError> {
    Ok(to_rapid(FunctionConfig::load(&options.config)?, options))
}

fn to_rapid(function: FunctionConfig, options: &Options) -> Function {
    let runtime = PathBuf::from(&function.runtime);
    let mut config =
        rapid::EnvironmentConfig::from_function(&function, runtime, options.task_root.clone());
    if let Some(init_type) = options.init_type {
        config.init_type = init_type;
    }
    if options.system {
        // The VM is the sandbox: its memory in use is the function's.
        config.memory_source = rapid::config::MemorySource::Machine;
    }
    config.extensions_dir = options.extensions_dir.clone();
    if let Some(init_timeout) = options.init_timeout {
        config.init_timeout = init_timeout;
    }
    Function {
        rapid: config,
        tmp_size_mb: function.tmp_size_mb,
        networking: function.networking,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)], pid1: bool) -> Result<Options, OptionsError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Options::parse(
            args.iter().map(|s| s.to_string()),
            move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            pid1,
        )
    }

    #[test]
    fn pid1_defaults_to_vsock_and_tolerates_kernel_arguments() {
        let options = parse(&["quiet", "--bogus"], &[], true).unwrap();
        assert_eq!(options.host_link, LinkAddr::Vsock { cid: 2, port: 9999 });
        assert_eq!(options.config, PathBuf::from("/etc/lambda/function.json"));
        assert_eq!(options.runtime_api.to_string(), "127.0.0.1:9001");
        assert!(options.system && options.reconnect);
        assert_eq!(options.ignored, vec!["quiet", "--bogus"]);
        assert!(!parse(&["--no-setup"], &[], true).unwrap().system);
        assert!(!parse(&[], &[("INIT_NO_SETUP", "1")], true).unwrap().system);
        assert!(!options.timing);
        assert!(parse(&[], &[("INIT_TIMING", "1")], true).unwrap().timing);
    }

    #[test]
    fn an_ordinary_process_needs_a_host_link_and_never_touches_the_system() {
        assert_eq!(parse(&[], &[], false), Err(OptionsError::NoHostLink));
        let options = parse(
            &[
                "--host-link",
                "unix:/tmp/x_9999",
                "--runtime-api",
                "127.0.0.1:0",
            ],
            &[("INIT_CONFIG", "/c.json")],
            false,
        )
        .unwrap();
        assert_eq!(options.host_link, LinkAddr::Unix("/tmp/x_9999".into()));
        assert_eq!(options.config, PathBuf::from("/c.json"));
        assert!(!options.system && !options.reconnect);
        assert!(
            parse(&["--host-link", "unix:/x", "--reconnect"], &[], false)
                .unwrap()
                .reconnect
        );
    }

    #[test]
    fn flags_win_over_the_environment_and_bad_values_are_named() {
        let options = parse(
            &["--host-link", "vsock:3:5"],
            &[("INIT_HOST_LINK", "unix:/env")],
            false,
        )
        .unwrap();
        assert_eq!(options.host_link, LinkAddr::Vsock { cid: 3, port: 5 });
        assert!(matches!(
            parse(&["--host-link", "tcp:1"], &[], false),
            Err(OptionsError::BadValue {
                flag: "--host-link",
                ..
            })
        ));
        assert!(matches!(
            parse(
                &["--host-link", "unix:/x", "--runtime-api", "nope"],
                &[],
                true
            ),
            Err(OptionsError::BadValue {
                flag: "--runtime-api",
                ..
            })
        ));
        assert_eq!(
            parse(&["--config"], &[], false),
            Err(OptionsError::MissingValue("--config".into()))
        );
        assert_eq!(
            parse(&["--host-link", "unix:/x", "extra"], &[], false),
            Err(OptionsError::Unknown("extra".into()))
        );
    }

    #[test]
    fn function_json_maps_onto_the_server_config() {
        let function = FunctionConfig::from_json(
            br#"{"handler": "h", "function_name": "f", "runtime": "/bin/rt", "memory_mb": 256,
                 "timeout_secs": 7, "tmp_size_mb": 64, "initialization_type": "snap-start",
                 "environment": {"A": "1"}}"#,
        )
        .unwrap();
        let options = parse(&["--task-root", "/task"], &[], true).unwrap();
        let mapped = to_rapid(function, &options);
        let c = &mapped.rapid;
        assert_eq!(mapped.tmp_size_mb, 64);
        assert_eq!(c.runtime, PathBuf::from("/bin/rt"));
        assert_eq!(c.task_root, PathBuf::from("/task"));
        assert_eq!((c.function_name.as_str(), c.handler.as_str()), ("f", "h"));
        assert_eq!(c.memory_mb, 256);
        assert_eq!(c.timeout, std::time::Duration::from_secs(7));
        assert_eq!(c.init_type, proto::InitializationType::SnapStart);
        assert_eq!(c.environment, vec![("A".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn extensions_and_the_init_timeout_come_from_the_image_and_the_host() {
        let pid1 = parse(&[], &[], true).unwrap();
        assert_eq!(pid1.extensions_dir, Some(PathBuf::from("/opt/extensions")));
        assert_eq!(pid1.init_timeout, None);
        let process = parse(&["--host-link", "unix:/l"], &[], false).unwrap();
        assert_eq!(process.extensions_dir, None);
        let given = parse(
            &["--host-link", "unix:/l", "--extensions-dir", "/x"],
            &[("INIT_INIT_TIMEOUT_MS", "30000")],
            false,
        )
        .unwrap();
        assert_eq!(given.extensions_dir, Some(PathBuf::from("/x")));
        assert_eq!(given.init_timeout, Some(std::time::Duration::from_secs(30)));
        let bad = parse(&[], &[("INIT_INIT_TIMEOUT_MS", "soon")], true).unwrap_err();
        assert!(matches!(
            bad,
            OptionsError::BadValue {
                flag: "INIT_INIT_TIMEOUT_MS",
                ..
            }
        ));
    }

    #[test]
    fn the_host_can_override_the_initialization_type() {
        let function = FunctionConfig::from_json(br#"{"handler": "h"}"#).unwrap();
        let env = [("INIT_INITIALIZATION_TYPE", "provisioned-concurrency")];
        let options = parse(&[], &env, true).unwrap();
        let mapped = to_rapid(function, &options);
        assert_eq!(
            mapped.rapid.init_type,
            proto::InitializationType::ProvisionedConcurrency
        );
        let bad = [("INIT_INITIALIZATION_TYPE", "eventually")];
        assert!(matches!(
            parse(&[], &bad, true),
            Err(OptionsError::BadValue { .. })
        ));
    }
}
