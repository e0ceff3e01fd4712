//! Local-mode environments for a cluster host (`lambda-local --cluster`): up to
//! `max_concurrency` local sandboxes, each one function's runtime with a Runtime API of its own,
//! started on demand for whatever function the cluster routes here. A function's package (its
//! `.zip` artifact) is fetched from the cluster on first use, its digest checked, and unpacked
//! into the work directory as the task root; `bootstrap` at its root is the runtime, as on
//! Lambda's `provided` runtimes.
//!
//! An environment runs one invocation at a time and nothing waits here: an invoke that finds no
//! idle environment and no room for a new one is refused at once ([`RunError::Busy`]), so the
//! cluster tries another host. When the pool is full, an idle environment of another function
//! (or of an older deploy) gives its place to a new one.

use cluster::catalog::{self, ArtifactKind, FunctionRecord};
use cluster::registry::FunctionLoad;
use cluster::{Load, RunError, RunFuture, Runner};
use proto::invoke::Invocation;
use proto::layout;
use proto::log::LogSink;
use rapid::cgroup::Cgroups;
use rapid::{EnvironmentConfig, Handle};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The local environments of one cluster host. Cheap to clone.
#[derive(Clone)]
pub struct LocalPool {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    work_dir: PathBuf,
    artifacts: cluster::async_nats::jetstream::object_store::ObjectStore,
    cgroups: Option<Arc<Cgroups>>,
    region: String,
    log: Arc<dyn LogSink>,
    state: Mutex<State>,
    /// One package is fetched and unpacked at a time.
    preparing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    slots: Vec<Slot>,
    shut_down: bool,
}

struct Slot {
    id: u64,
    function: String,
    sha256: String,
    busy: bool,
    /// `None` while it starts.
    env: Option<Env>,
}

struct Env {
    handle: Handle,
    runtime_api: JoinHandle<()>,
}

impl Env {
    fn stop(self) {
        self.handle.shutdown();
        self.runtime_api.abort();
    }
}

/// A slot taken for one invocation; dropping it gives it back (or removes it, when its
/// environment never started or is of an older deploy).
struct Claim {
    pool: LocalPool,
    id: u64,
    started: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        let Some(index) = state.slots.iter().position(|s| s.id == self.id) else {
            return;
        };
        if !self.started || state.shut_down {
            if let Some(env) = state.slots.swap_remove(index).env {
                env.stop();
            }
            return;
        }
        state.slots[index].busy = false;
    }
}

impl LocalPool {
    pub fn new(
        max: usize,
        work_dir: PathBuf,
        artifacts: cluster::async_nats::jetstream::object_store::ObjectStore,
        cgroups: Option<Arc<Cgroups>>,
        region: String,
        log: Arc<dyn LogSink>,
    ) -> LocalPool {
        LocalPool {
            shared: Arc::new(Shared {
                max,
                work_dir,
                artifacts,
                cgroups,
                region,
                log,
                state: Mutex::new(State::default()),
                preparing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an idle environment of this deploy of `function`, or (with `may_start`) a place
    /// for a new one; `None` when neither is free.
    fn claim(
        &self,
        function: &str,
        sha256: &str,
        may_start: bool,
    ) -> Option<(Claim, Option<Handle>)> {
        let mut state = self.lock();
        if state.shut_down {
            return None;
        }
        let idle = state
            .slots
            .iter_mut()
            .find(|s| !s.busy && s.env.is_some() && s.function == function && s.sha256 == sha256);
        if let Some(slot) = idle {
            slot.busy = true;
            let handle = slot.env.as_ref().map(|env| env.handle.clone());
            let claim = Claim {
                pool: self.clone(),
                id: slot.id,
                started: true,
            };
            return Some((claim, handle));
        }
        if !may_start {
            return None;
        }
        if state.slots.len() >= self.shared.max {
            // An idle environment of something else gives its place up.
            let evict = state
                .slots
                .iter()
                .position(|s| !s.busy && s.env.is_some())?;
            if let Some(env) = state.slots.swap_remove(evict).env {
                env.stop();
            }
        }
        state.next_id += 1;
        let id = state.next_id;
        state.slots.push(Slot {
            id,
            function: function.to_owned(),
            sha256: sha256.to_owned(),
            busy: true,
            env: None,
        });
        let claim = Claim {
            pool: self.clone(),
            id,
            started: false,
        };
        Some((claim, None))
    }

    /// Starts a new environment of `function` in the claimed slot.
    async fn start(
        &self,
        function: &FunctionRecord,
        sha256: &str,
        claim: &mut Claim,
    ) -> Result<Handle, String> {
        let task_root = self.package(function, sha256).await?;
        let runtime = runtime_in(&function.config.runtime, &task_root)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("a Runtime API address: {e}"))?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| format!("a Runtime API address: {e}"))?;
        let mut config = EnvironmentConfig::from_function(&function.config, runtime, task_root);
        config.region = self.shared.region.clone();
        config.cgroups = self.shared.cgroups.clone();
        let limits =
            http_server::ConnectionLimits::runtime_api(config.timeout.max(config.init_timeout));
        let handle = Handle::new(config, api_addr, Arc::clone(&self.shared.log), None);
        let api = handle.clone();
        let runtime_api = tokio::spawn(http_server::serve(listener, limits, move |request| {
            rapid::runtime_api::handle(api.clone(), request)
        }));
        let env = Env {
            handle: handle.clone(),
            runtime_api,
        };
        let mut state = self.lock();
        let shut_down = state.shut_down;
        let slot = state.slots.iter_mut().find(|s| s.id == claim.id);
        match slot {
            Some(slot) if !shut_down => {
                slot.env = Some(env);
                claim.started = true;
                drop(state);
                handle.start();
                Ok(handle)
            }
            _ => {
                env.stop();
                Err("this host is shutting down".into())
            }
        }
    }

    /// The task root of `function`'s package with digest `sha256`: unpacked already, or
    /// fetched (digest checked) and unpacked now.
    async fn package(&self, function: &FunctionRecord, sha256: &str) -> Result<PathBuf, String> {
        let root = self.shared.work_dir.join("packages").join(sha256);
        if root.is_dir() {
            return Ok(root);
        }
        let _one_at_a_time = self.shared.preparing.lock().await;
        if root.is_dir() {
            return Ok(root);
        }
        let Some(artifact) = function.artifact(ArtifactKind::Zip) else {
            return Err(format!("{} has no .zip package", function.name()));
        };
        let zip = self
            .shared
            .work_dir
            .join("artifacts")
            .join(format!("{sha256}.zip"));
        catalog::fetch_artifact(&self.shared.artifacts, artifact, &zip)
            .await
            .map_err(|e| e.to_string())?;
        let unpacked = {
            let (zip, root) = (zip.clone(), root.clone());
            tokio::task::spawn_blocking(move || catalog::unpack_package(&zip, &root))
                .await
                .map_err(|e| e.to_string())?
        };
        let _ = tokio::fs::remove_file(&zip).await;
        unpacked.map_err(|e| e.to_string())?;
        self.shared.log.line(&format!(
            "lambda-local: cluster: fetched {} (sha256:{sha256}) into {}",
            function.name(),
            root.display()
        ));
        Ok(root)
    }

    /// Stops every environment; invocations running get `InvokeError::ShutDown`.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shut_down = true;
        for slot in state.slots.drain(..) {
            if let Some(env) = slot.env {
                env.stop();
            }
        }
    }
}

/// The runtime a package runs: `bootstrap` at its root, or the `runtime` of function.json when
/// it names a file under the task root (`/var/task/...`).
fn runtime_in(runtime: &str, task_root: &Path) -> Result<PathBuf, String> {
    let path = match Path::new(runtime).strip_prefix(layout::TASK_ROOT) {
        Ok(relative) => task_root.join(relative),
        Err(_) => task_root.join("bootstrap"),
    };
    let inside = path
        .strip_prefix(task_root)
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
    if !inside || !path.is_file() {
        return Err(format!(
            "the package has no runtime at {} (runtime {runtime:?})",
            path.display()
        ));
    }
    Ok(path)
}

impl Runner for LocalPool {
    fn runs(&self) -> Vec<String> {
        vec![ArtifactKind::Zip.as_str().to_owned()]
    }

    fn load(&self) -> Load {
        let state = self.lock();
        let mut functions: BTreeMap<String, FunctionLoad> = BTreeMap::new();
        for slot in &state.slots {
            let load = functions.entry(slot.function.clone()).or_default();
            load.environments += 1;
            if !slot.busy && slot.env.is_some() {
                load.idle += 1;
            }
        }
        Load {
            max_concurrency: self.shared.max,
            in_use: state.slots.iter().filter(|s| s.busy).count(),
            functions,
        }
    }

    fn run(
        &self,
        function: Arc<FunctionRecord>,
        invocation: Invocation,
        may_start: bool,
    ) -> RunFuture {
        let pool = self.clone();
        Box::pin(async move {
            let Some(sha256) = function
                .artifact(ArtifactKind::Zip)
                .map(|a| a.sha256.clone())
            else {
                return Err(RunError::Unavailable(format!(
                    "{} has no .zip package",
                    function.name()
                )));
            };
            let Some((mut claim, handle)) = pool.claim(function.name(), &sha256, may_start) else {
                return Err(RunError::Busy);
            };
            let handle = match handle {
                Some(handle) => handle,
                None => pool
                    .start(&function, &sha256, &mut claim)
                    .await
                    .map_err(RunError::Unavailable)?,
            };
            let outcome = handle.invoke(invocation).await;
            drop(claim);
            Ok(outcome?)
        })
    }

    fn log(&self, line: &str) {
        self.shared.log.line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_is_bootstrap_or_a_file_under_the_task_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bootstrap"), b"").unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/run"), b"").unwrap();
        assert_eq!(
            runtime_in("/var/runtime/bootstrap", dir.path()).unwrap(),
            dir.path().join("bootstrap")
        );
        assert_eq!(
            runtime_in("/var/task/bin/run", dir.path()).unwrap(),
            dir.path().join("bin/run")
        );
        assert!(runtime_in("/var/task/missing", dir.path()).is_err());
        assert!(runtime_in("/var/task/../../etc/passwd", dir.path()).is_err());
    }
}
