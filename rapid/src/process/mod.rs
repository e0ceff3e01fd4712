//! The runtime process: started in its own process group (and, where the caller asks, its own
//! cgroup) with the reserved Lambda environment, its output captured line by line ([`output`]),
//! killed as a group, its memory high-water mark read ([`memory`]) when it has no cgroup to
//! account for it.

pub mod memory;
pub mod oom;
pub mod output;

use crate::cgroup::{Cgroup, CgroupError};
use crate::config::EnvironmentConfig;
use proto::env;
use proto::log::LogSink;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use tokio::process::{Child, Command};

pub use memory::{machine_memory_used_mb, max_memory_used_mb};
pub use output::Output;

/// AWS's `LD_LIBRARY_PATH` on `provided.al2023`; directories that do not exist cost nothing.
const LD_LIBRARY_PATH: &str =
    "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib";

/// Variables the user may set although the platform sets them too, as on Lambda.
const USER_OVERRIDABLE: [&str; 4] = ["PATH", "LD_LIBRARY_PATH", "LANG", "HOME"];

/// Reserved names the platform does not always set but a user may still not set: the runtime
/// sets `_X_AMZN_TRACE_ID` per invocation, and a stale one would be misleading.
const RESERVED_UNSET: [&str; 1] = [env::TRACE_ID];

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start the runtime {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    /// The runtime is not started unconfined when a cgroup was asked for: its limits would be
    /// silently gone.
    #[error("cannot make the sandbox's cgroup: {0}")]
    Cgroup(#[from] CgroupError),
}

/// A started process of the environment (the runtime, or an external extension).
pub struct Runtime {
    pub child: Child,
    /// Also the process group id.
    pub pid: i32,
    /// Its stdout and stderr, forwarded line by line to the log sink.
    pub output: Output,
}

/// The environment a runtime starts with: the reserved Lambda variables, plus the user's, which
/// cannot override a reserved one.
pub fn environment(config: &EnvironmentConfig, runtime_api: SocketAddr) -> Vec<(String, String)> {
    let host_path = std::env::var("PATH").unwrap_or_default();
    let mut path = "/usr/local/bin:/usr/bin:/bin:/opt/bin".to_owned();
    if !host_path.is_empty() {
        path = format!("{path}:{host_path}");
    }
    let mut vars: Vec<(String, String)> = vec![
        (env::FUNCTION_NAME.into(), config.function_name.clone()),
        (
            env::FUNCTION_MEMORY_SIZE.into(),
            config.memory_mb.to_string(),
        ),
        (
            env::FUNCTION_VERSION.into(),
            config.function_version.clone(),
        ),
        (
            env::LOG_GROUP_NAME.into(),
            format!("/aws/lambda/{}", config.function_name),
        ),
        (env::LOG_STREAM_NAME.into(), log_stream_name(config)),
        (
            env::TASK_ROOT.into(),
            config.task_root.display().to_string(),
        ),
        (env::RUNTIME_DIR.into(), runtime_dir(config)),
        (env::HANDLER.into(), config.handler.clone()),
        (env::RUNTIME_API.into(), runtime_api.to_string()),
        (env::REGION.into(), config.region.clone()),
        (env::DEFAULT_REGION.into(), config.region.clone()),
        (
            env::EXECUTION_ENV.into(),
            "AWS_Lambda_provided.al2023".into(),
        ),
        (
            env::INITIALIZATION_TYPE.into(),
            config.init_type.as_str().into(),
        ),
        (env::TZ.into(), ":UTC".into()),
        ("LANG".into(), "en_US.UTF-8".into()),
        ("LD_LIBRARY_PATH".into(), LD_LIBRARY_PATH.into()),
        ("PATH".into(), path),
    ];
    if let Ok(home) = std::env::var("HOME") {
        vars.push(("HOME".into(), home));
    }
    for (key, value) in &config.environment {
        if RESERVED_UNSET.contains(&key.as_str()) {
            continue;
        }
        match vars.iter_mut().find(|(k, _)| k == key) {
            Some((k, v)) if USER_OVERRIDABLE.contains(&k.as_str()) => *v = value.clone(),
            Some(_) => {}
            None => vars.push((key.clone(), value.clone())),
        }
    }
    vars
}

/// `2024/05/01/[$LATEST]<32 hex digits>`, the shape of a Lambda log stream name.
fn log_stream_name(config: &EnvironmentConfig) -> String {
    let now = proto::time::rfc3339_now();
    let date = now.get(..10).unwrap_or_default().replace('-', "/");
    format!(
        "{date}/[{}]{}",
        config.function_version,
        uuid::Uuid::new_v4().simple()
    )
}

fn runtime_dir(config: &EnvironmentConfig) -> String {
    config
        .runtime
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A new cgroup for one environment (its runtime and its extensions), when the configuration
/// asks for one.
#[cfg_attr(not(feature = "cgroups"), allow(unreachable_code))]
pub fn new_cgroup(config: &EnvironmentConfig) -> Result<Option<Cgroup>, SpawnError> {
    match &config.cgroups {
        Some(cgroups) => Ok(Some(cgroups.create(config.memory_mb)?)),
        None => Ok(None),
    }
}

/// Starts `program` with `args` in a new process group with a clean environment (the reserved
/// Lambda variables), its working directory the task root, and its stdout and stderr forwarded
/// to `log`; in `cgroup`, which it joins before it runs any of its own code. The process is
/// killed when the thread that started it exits (`PR_SET_PDEATHSIG`), so call this from the
/// thread that drives the server (a current-thread runtime's, or a long-lived worker).
// Without the `cgroups` feature a cgroup cannot exist, so its branch is unreachable by design.
#[cfg_attr(not(feature = "cgroups"), allow(unreachable_code))]
pub fn spawn(
    config: &EnvironmentConfig,
    program: &Path,
    args: &[String],
    runtime_api: SocketAddr,
    log: Arc<dyn LogSink>,
    cgroup: Option<&Cgroup>,
) -> Result<Runtime, SpawnError> {
    let spawn_error = |source| SpawnError::Spawn {
        path: program.display().to_string(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(environment(config, runtime_api))
        .current_dir(&config.task_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Opened here, written in the child: between fork and exec only system calls are safe.
    // They close on exec.
    let join = match cgroup {
        Some(cgroup) => cgroup.procs_files()?,
        None => Vec::new(),
    };
    let join_fds: Vec<i32> = join.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2),
    // getppid(2) and write(2), all async-signal-safe; it reads only `join_fds`, a copy the
    // child owns, and a static byte, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process; everything it starts from then on is born inside.
            for &fd in &join_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A process must not outlive a server that was killed without a chance to clean
            // up: it would hold the Runtime API port's clients and its memory forever.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("the server exited during spawn"));
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(join);
    let mut child = spawned.map_err(spawn_error)?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let output = Output::capture(child.stdout.take(), child.stderr.take(), log);
    Ok(Runtime { child, pid, output })
}

/// Sends `signal` to every process of a group.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 0 {
        return;
    }
    // SAFETY: killpg(2) takes plain integers; a stale group id at worst fails with ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Kills every process of a group.
pub fn kill_group(pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
}

/// Describes an exit status the way Lambda does: `exit status 3` or `signal: 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal: {signal}"),
        _ => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
        vars.iter().find(|(n, _)| n == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn user_env_cannot_override_reserved_names() {
        let mut config = EnvironmentConfig::new("/bin/true".into());
        config.environment = vec![
            ("AWS_LAMBDA_FUNCTION_NAME".into(), "evil".into()),
            ("_X_AMZN_TRACE_ID".into(), "stale".into()),
            ("PATH".into(), "/custom".into()),
            ("MY_VAR".into(), "1".into()),
        ];
        let vars = environment(&config, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(get(&vars, "AWS_LAMBDA_FUNCTION_NAME"), Some("function"));
        assert_eq!(get(&vars, "_X_AMZN_TRACE_ID"), None);
        assert_eq!(get(&vars, "PATH"), Some("/custom"));
        assert_eq!(get(&vars, "MY_VAR"), Some("1"));
        assert_eq!(get(&vars, "AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
    }

    #[test]
    fn reserved_values_have_lambdas_shape() {
        let config = EnvironmentConfig::new("/opt/fn/bootstrap".into());
        let vars = environment(&config, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            get(&vars, "AWS_LAMBDA_LOG_GROUP_NAME"),
            Some("/aws/lambda/function")
        );
        assert_eq!(get(&vars, "LAMBDA_RUNTIME_DIR"), Some("/opt/fn"));
        assert_eq!(
            get(&vars, "AWS_LAMBDA_INITIALIZATION_TYPE"),
            Some("on-demand")
        );
        assert_eq!(get(&vars, "TZ"), Some(":UTC"));
        let stream = get(&vars, "AWS_LAMBDA_LOG_STREAM_NAME").unwrap_or_default();
        let (date, rest) = stream.split_at(10);
        assert_eq!(date.matches('/').count(), 2, "{stream}");
        assert!(
            rest.starts_with("/[$LATEST]") && rest.len() == 10 + 32,
            "{stream}"
        );
    }

    #[test]
    fn exit_statuses_read_like_lambdas() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal: 9");
    }
}
