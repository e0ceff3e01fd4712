//! Lambda extensions: the agents one environment has registered, and the external extensions it
//! starts (every executable in the extensions directory, `/opt/extensions` in a microVM).
//!
//! An external extension is started before the runtime and must register (`POST /register`,
//! named after its file) and then ask for its next event (`GET /event/next`); the runtime starts
//! once every external extension has registered, and init ends once the runtime and every
//! registered extension wait for their next event. An internal extension registers from the
//! runtime's process under a name no external extension has, during init, for `INVOKE` only.
//! Each invocation goes to every extension registered for `INVOKE`; it is over once the runtime
//! has answered and each of them has asked for its next event again. `SHUTDOWN` goes to those
//! registered for it when the environment ends, with a deadline; the others are killed.
//!
//! The state machine lives with the environment's (`sandbox/extension_calls.rs`); this module
//! holds the registry and the HTTP routes ([`api`]).

pub mod api;

use crate::process::Output;
use proto::extensions_api::{Event, EventType};
use std::path::{Path, PathBuf};

/// Where one extension is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// An external extension started, not registered yet.
    Launched,
    /// Registered, not yet asking for an event.
    Registered,
    /// Waiting in `event/next` (or about to: its next event is not yet delivered).
    Ready,
    /// Handling the event it was last given.
    Running,
    /// Reported `init/error` or `exit/error`; it gets no more events.
    Failed,
}

/// The process of an external extension.
pub struct ExternalProcess {
    /// Also its process group.
    pub pid: i32,
    pub output: Output,
    /// Whether it has exited.
    pub exited: bool,
}

/// One extension of the environment.
pub struct Agent {
    /// The `Lambda-Extension-Identifier` it registered with; empty until it registers.
    pub id: String,
    pub name: String,
    /// `None` for an internal extension.
    pub process: Option<ExternalProcess>,
    pub events: Vec<EventType>,
    pub state: AgentState,
    /// The event it gets at its next `event/next`.
    pub pending: Option<Event>,
}

impl Agent {
    /// An external extension just started as `pid`.
    pub fn external(name: String, pid: i32, output: Output) -> Agent {
        Agent {
            id: String::new(),
            name,
            process: Some(ExternalProcess {
                pid,
                output,
                exited: false,
            }),
            events: Vec::new(),
            state: AgentState::Launched,
            pending: None,
        }
    }

    pub fn is_external(&self) -> bool {
        self.process.is_some()
    }

    pub fn subscribed(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }

    /// Whether it has asked for an event and has none waiting: done with the last one.
    pub fn is_idle(&self) -> bool {
        self.state == AgentState::Ready && self.pending.is_none()
    }

    /// Whether its process is still running (an internal extension's is the runtime's).
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.exited)
    }

    /// The event types it registered for, as Lambda names them.
    pub fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match e {
                EventType::Invoke => "INVOKE".to_owned(),
                EventType::Shutdown => "SHUTDOWN".to_owned(),
            })
            .collect()
    }
}

/// The extensions of one environment.
#[derive(Default)]
pub struct Registry {
    pub agents: Vec<Agent>,
    /// Closed once init is over: from then on nothing registers.
    pub closed: bool,
}

impl Registry {
    pub fn by_id(&mut self, id: &str) -> Option<&mut Agent> {
        self.agents
            .iter_mut()
            .find(|a| !a.id.is_empty() && a.id == id)
    }

    /// Whether every external extension has registered (the runtime may start).
    pub fn externals_registered(&self) -> bool {
        self.agents.iter().all(|a| a.state != AgentState::Launched)
    }

    /// Whether every extension waits for its next event with none pending.
    pub fn all_idle(&self) -> bool {
        self.agents
            .iter()
            .all(|a| a.is_idle() || a.state == AgentState::Failed)
    }

    /// Names of the extensions that are not waiting for their next event, with why, for the
    /// message of an init that timed out.
    pub fn laggards(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter_map(|a| match a.state {
                AgentState::Launched => Some(format!("{} did not register", a.name)),
                AgentState::Registered => {
                    Some(format!("{} did not ask for its next event", a.name))
                }
                AgentState::Running => Some(format!("{} did not finish its event", a.name)),
                _ => None,
            })
            .collect()
    }

    /// Whether any external extension registered (Lambda's shutdown then gives the runtime
    /// SIGTERM and the extensions their share of 2 s).
    pub fn has_external(&self) -> bool {
        self.agents
            .iter()
            .any(|a| a.is_external() && a.state != AgentState::Launched)
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// The external extensions in `dir`: its executable regular files, in name order (the order
/// Lambda starts them in). A directory that does not exist holds none.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        // Follows links, as exec does.
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_executable_files_are_extensions_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("b-ext", 0o755);
        write("a-ext", 0o700);
        write("README", 0o644);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let names: Vec<String> = discover(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a-ext", "b-ext"]);
        assert!(discover(&dir.path().join("absent")).unwrap().is_empty());
    }
}
