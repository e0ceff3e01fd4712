//! The runtime process: started in its own process group with the reserved Lambda environment,
//! its output captured line by line, killed as a group, its memory high-water mark read.

use crate::config::FunctionConfig;
use proto::env;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Longest log line passed on whole; longer lines are split, so a runtime printing without
/// newlines cannot make the server buffer without bound.
const MAX_LOG_LINE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start the runtime {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
}

/// A started runtime process.
pub struct Runtime {
    pub child: Child,
    /// Also the process group id.
    pub pid: i32,
}

/// The environment a runtime starts with: the reserved Lambda variables, plus the user's, which
/// cannot override a reserved one.
pub fn environment(config: &FunctionConfig, runtime_api: SocketAddr) -> Vec<(String, String)> {
    let host_path = std::env::var("PATH").unwrap_or_default();
    let mut vars: Vec<(String, String)> = vec![
        (env::FUNCTION_NAME.into(), config.function_name.clone()),
        (env::FUNCTION_MEMORY_SIZE.into(), config.memory_mb.to_string()),
        (env::FUNCTION_VERSION.into(), config.function_version.clone()),
        (
            env::LOG_GROUP_NAME.into(),
            format!("/aws/lambda/{}", config.function_name),
        ),
        (
            env::LOG_STREAM_NAME.into(),
            format!("$LATEST/{}", uuid::Uuid::new_v4().simple()),
        ),
        (env::TASK_ROOT.into(), config.task_root.display().to_string()),
        (env::RUNTIME_DIR.into(), runtime_dir(config)),
        (env::HANDLER.into(), config.handler.clone()),
        (env::RUNTIME_API.into(), runtime_api.to_string()),
        (env::REGION.into(), config.region.clone()),
        (env::DEFAULT_REGION.into(), config.region.clone()),
        (env::EXECUTION_ENV.into(), "AWS_Lambda_provided.al2023".into()),
        (
            env::INITIALIZATION_TYPE.into(),
            config.init_type.as_env_value().into(),
        ),
        (env::TZ.into(), ":UTC".into()),
        ("LANG".into(), "en_US.UTF-8".into()),
        ("LD_LIBRARY_PATH".into(), "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib".into()),
        ("PATH".into(), format!("/usr/local/bin:/usr/bin:/bin:/opt/bin:{host_path}")),
    ];
    if let Ok(home) = std::env::var("HOME") {
        vars.push(("HOME".into(), home));
    }
    for (key, value) in &config.environment {
        match vars.iter_mut().find(|(k, _)| k == key) {
            // PATH, LD_LIBRARY_PATH, LANG and HOME are the user's to change, as on Lambda.
            Some((k, v)) if is_user_overridable(k) => *v = value.clone(),
            Some(_) => {}
            None => vars.push((key.clone(), value.clone())),
        }
    }
    vars
}

fn is_user_overridable(name: &str) -> bool {
    matches!(name, "PATH" | "LD_LIBRARY_PATH" | "LANG" | "HOME")
}

fn runtime_dir(config: &FunctionConfig) -> String {
    config
        .runtime
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Starts the runtime in a new process group with a clean environment, its working directory
/// the task root, and its stdout and stderr piped to `log`.
pub fn spawn(
    config: &FunctionConfig,
    runtime_api: SocketAddr,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Runtime, SpawnError> {
    let mut command = Command::new(&config.runtime);
    command
        .args(&config.runtime_args)
        .env_clear()
        .envs(environment(config, runtime_api))
        .current_dir(&config.task_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|source| SpawnError::Spawn {
        path: config.runtime.display().to_string(),
        source,
    })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, Arc::clone(&log)));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, log));
    }
    Ok(Runtime { child, pid })
}

async fn forward_lines(mut from: impl AsyncRead + Unpin, log: Arc<dyn Fn(&str) + Send + Sync>) {
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            log(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r'));
        }
        if pending.len() > MAX_LOG_LINE {
            log(&String::from_utf8_lossy(&pending));
            pending.clear();
        }
    }
    if !pending.is_empty() {
        log(&String::from_utf8_lossy(&pending));
    }
}

/// Kills every process of the runtime's group.
pub fn kill_group(pgid: i32) {
    if pgid <= 0 {
        return;
    }
    // SAFETY: killpg(2) takes plain integers; a stale group id at worst fails with ESRCH.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
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

/// The memory high-water mark of a process group in MB: the sum of `VmHWM` over its processes.
pub fn max_memory_used_mb(pgid: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total_kb = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if process_group_of(pid) != Some(pgid) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        total_kb += status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total_kb.div_ceil(1024)
}

fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_env_cannot_override_reserved_names() {
        let mut config = FunctionConfig::new("/bin/true".into());
        config.environment = vec![
            ("AWS_LAMBDA_FUNCTION_NAME".into(), "evil".into()),
            ("PATH".into(), "/custom".into()),
            ("MY_VAR".into(), "1".into()),
        ];
        let vars = environment(&config, "127.0.0.1:9001".parse().unwrap());
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("function"));
        assert_eq!(get("PATH"), Some("/custom"));
        assert_eq!(get("MY_VAR"), Some("1"));
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
    }

    #[test]
    fn own_process_group_is_found() {
        // SAFETY: getpid/getpgrp have no preconditions.
        let (pid, pgid) = unsafe { (libc::getpid(), libc::getpgrp()) };
        assert_eq!(process_group_of(pid), Some(pgid));
        assert!(max_memory_used_mb(pgid) > 0);
    }
}
