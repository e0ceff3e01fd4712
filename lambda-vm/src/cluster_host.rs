//! `lambda-vm --cluster`: this host's microVMs as environments of a cluster (the `cluster`
//! crate). Every function deployed to the cluster with an `ext4` or `cpio` image can run here:
//! its image is fetched on first use (its SHA-256 checked against the deploy's record), and a
//! [`FunctionService`] made for it; every function shares the host's `--max-concurrency`. A
//! redeploy (a new image) gets a new service; the old one's environments are stopped.
//!
//! A SnapStart function's snapshot is shared with the other hosts ([`ClusterSnapshots`]): one
//! taken here is published to the cluster, and one published there for this CPU model is
//! fetched and restored instead of booting to take it. Images live at the same path on every
//! host with the same `--state-dir` (`STATE_DIR/images/SHA256.KIND`), as a snapshot's drive
//! names its image by path.

use crate::guest::{Console, Environments, GuestSpec, Rootfs};
use crate::logs::FunctionLog;
use crate::network::Networks;
use crate::pool::HostLimit;
use crate::service::{FunctionService, Scaling};
use crate::snapshots;
use cluster::catalog::{self, Artifact, ArtifactKind, FunctionRecord};
use cluster::registry::FunctionLoad;
use cluster::snapshots::SharedSnapshots;
use cluster::{Load, RunError, RunFuture, Runner};
use front_door::{Invoker, LogTails};
use proto::invoke::{Invocation, InvokeError};
use proto::InitializationType;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm::config::CpuTemplate;

/// What every microVM of this host is made with (from `lambda-vm`'s flags).
#[derive(Clone)]
pub struct VmSettings {
    /// How each `vmm` is started (binary, jail, seccomp).
    pub launcher: Arc<crate::vmm_process::Launcher>,
    /// `--ready-vmms`: how many `vmm` processes a SnapStart function keeps ready (at most; the
    /// host's available memory bounds them).
    pub ready_vmms: usize,
    pub kernel: PathBuf,
    pub boot_args: Option<String>,
    pub cpu_template: CpuTemplate,
    /// Where environments get their networks; `None`: no function has networking here.
    pub networks: Option<Arc<Networks>>,
    /// `--log-dir`: each function's log and each environment's console there.
    pub log_dir: Option<PathBuf>,
    /// `--console`: every console appended to one file (without --log-dir).
    pub console: Option<PathBuf>,
    pub boot_timeout: Duration,
    /// `--init-timeout`: how long a function's init may take in its microVM.
    pub init_timeout: Duration,
    pub idle_timeout: Duration,
    /// Holds each function's environments (the scratch directory).
    pub work_dir: PathBuf,
    /// Holds the fetched images, named by their SHA-256 (`STATE_DIR/images`): the same path
    /// on hosts with the same state directory, so that their snapshots' drives match.
    pub image_dir: PathBuf,
    /// Where SnapStart snapshots go, one subdirectory per function.
    pub snapshot_dir: PathBuf,
    /// `--no-working-set`: restores load guest memory lazily and record no working set.
    pub no_working_set: bool,
    pub on_failure_dir: Option<PathBuf>,
    pub host: HostLimit,
    pub tails: LogTails,
    /// Every environment of the host, for the stop.
    pub environments: Arc<Environments>,
}

/// The microVM environments of one cluster host. Cheap to clone.
#[derive(Clone)]
pub struct VmHost {
    shared: Arc<Shared>,
}

struct Shared {
    settings: VmSettings,
    artifacts: cluster::async_nats::jetstream::object_store::ObjectStore,
    /// The cluster's snapshots, with the runtime their fetches and publishes run on.
    snapshots: Option<(SharedSnapshots, tokio::runtime::Handle)>,
    /// Per function: the image it was made from, and its service.
    services: Mutex<HashMap<String, (String, FunctionService)>>,
    /// One image is fetched at a time.
    preparing: tokio::sync::Mutex<()>,
}

impl VmHost {
    /// `snapshots`: SnapStart snapshots shared with the other hosts (made on a tokio runtime,
    /// which their transfers run on).
    pub fn new(
        settings: VmSettings,
        artifacts: cluster::async_nats::jetstream::object_store::ObjectStore,
        snapshots: Option<SharedSnapshots>,
    ) -> VmHost {
        let snapshots =
            snapshots.and_then(|s| tokio::runtime::Handle::try_current().ok().map(|h| (s, h)));
        VmHost {
            shared: Arc::new(Shared {
                settings,
                artifacts,
                snapshots,
                services: Mutex::new(HashMap::new()),
                preparing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, FunctionService)>> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every service, for the shutdown.
    pub fn services(&self) -> Vec<FunctionService> {
        self.lock().values().map(|(_, s)| s.clone()).collect()
    }

    /// The image this host boots of `function`: its ext4 image (faster), else its initramfs.
    fn image_of(function: &FunctionRecord) -> Option<&Artifact> {
        function
            .artifact(ArtifactKind::Ext4)
            .or_else(|| function.artifact(ArtifactKind::Cpio))
    }

    /// The service of this deploy of `function`, made (its image fetched) if it is new here.
    async fn service(&self, function: &FunctionRecord) -> Result<FunctionService, String> {
        let image = Self::image_of(function)
            .ok_or_else(|| format!("{} has no ext4 or cpio image", function.name()))?;
        if let Some((sha, service)) = self.lock().get(function.name()) {
            if *sha == image.sha256 {
                return Ok(service.clone());
            }
        }
        let _one_at_a_time = self.shared.preparing.lock().await;
        if let Some((sha, service)) = self.lock().get(function.name()) {
            if *sha == image.sha256 {
                return Ok(service.clone());
            }
        }
        let settings = &self.shared.settings;
        let path = settings
            .image_dir
            .join(format!("{}.{}", image.sha256, image.kind.as_str()));
        if !path.is_file() {
            catalog::fetch_artifact(&self.shared.artifacts, image, &path)
                .await
                .map_err(|e| e.to_string())?;
        }
        let config = function.config.clone();
        let name = config.function_name.clone();
        // Short, not named: a socket's path under it must stay short (108 bytes).
        let function_dir = settings.work_dir.join(&image.sha256[..12]);
        std::fs::create_dir_all(&function_dir)
            .map_err(|e| format!("{}: {e}", function_dir.display()))?;
        let spec = GuestSpec {
            launcher: Arc::clone(&settings.launcher),
            kernel: settings.kernel.clone(),
            rootfs: Rootfs::from_path(path),
            boot_args: settings.boot_args.clone(),
            mem_size_mib: config.memory_mb,
            work_dir: function_dir.clone(),
            console: match (&settings.log_dir, &settings.console) {
                (Some(dir), _) => Console::PerEnvironment {
                    dir: dir.clone(),
                    function: name.clone(),
                },
                (None, Some(file)) => Console::Shared(file.clone()),
                (None, None) => Console::Discard,
            },
            boot_timeout: settings.boot_timeout,
            init_timeout: settings.init_timeout,
            cpu_template: settings.cpu_template,
            network: settings.networks.clone().filter(|_| config.networking),
            environments: Arc::clone(&settings.environments),
        };
        let snapshots = (config.initialization_type == InitializationType::SnapStart).then(|| {
            let mut snapshots =
                snapshots::for_function(&spec, &config, settings.snapshot_dir.join(&name));
            if settings.no_working_set {
                snapshots = snapshots.without_working_sets();
            }
            match &self.shared.snapshots {
                Some((shared, runtime)) => snapshots.shared_through(Arc::new(ClusterSnapshots {
                    function: name.clone(),
                    shared: shared.clone(),
                    runtime: runtime.clone(),
                })),
                None => snapshots,
            }
        });
        let scaling = Scaling {
            reserved: config
                .reserved_concurrency
                .and_then(|n| usize::try_from(n).ok()),
            provisioned: usize::try_from(config.provisioned_concurrency).unwrap_or(0),
            idle_timeout: settings.idle_timeout,
            host: settings.host.clone(),
            ready: if config.initialization_type == InitializationType::SnapStart {
                crate::ready::bounded_by_memory(settings.ready_vmms, config.memory_mb)
            } else {
                0
            },
        };
        let mut served = front_door::Function::new(&config);
        served.events.on_failure_dir = settings.on_failure_dir.clone();
        served.code = front_door::Code::of(&spec_image(&spec)).ok();
        let log = FunctionLog::new(&name, settings.tails.clone(), settings.log_dir.as_deref())
            .map_err(|e| format!("the log of {name}: {e}"))?;
        let service = FunctionService::new(served, config, spec, snapshots, scaling, log);
        let replaced = self
            .lock()
            .insert(name, (image.sha256.clone(), service.clone()));
        if let Some((_, old)) = replaced {
            tokio::spawn(async move { old.shutdown().await });
        }
        Ok(service)
    }
}

/// The longest a shared snapshot's fetch may take (the whole memory file; a fetch cut off
/// from NATS must not hold the function's starts for ever): then the host boots instead.
const SNAPSHOT_FETCH_LIMIT: Duration = Duration::from_secs(180);

/// The waits before a failed publish is tried again: a busy cluster (its replicas catching up,
/// a leader being elected) refuses a large object for a while, and a host that gives up at
/// once leaves every other host booting the function from scratch.
const PUBLISH_RETRY_WAITS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(20),
    Duration::from_secs(60),
];

/// One function's snapshots as the cluster shares them (see the module's documentation).
struct ClusterSnapshots {
    function: String,
    shared: SharedSnapshots,
    runtime: tokio::runtime::Handle,
}

impl snapshots::SnapshotShare for ClusterSnapshots {
    fn fetch(&self, key: &str, staging: &std::path::Path) -> Result<bool, String> {
        // Called from a start's own thread, never from the runtime's.
        // The timer is made inside the runtime, where it has its clock.
        let fetched = self.runtime.block_on(async {
            let fetch = self.shared.fetch_into(&self.function, key, staging);
            tokio::time::timeout(SNAPSHOT_FETCH_LIMIT, fetch).await
        });
        match fetched {
            Ok(Ok(record)) => Ok(record.is_some()),
            Ok(Err(e)) => Err(logging::Chain(&e).to_string()),
            Err(_) => Err(format!(
                "the fetch took more than {} s",
                SNAPSHOT_FETCH_LIMIT.as_secs()
            )),
        }
    }

    fn publish(
        &self,
        key: &str,
        dir: &std::path::Path,
        done: Box<dyn FnOnce(Result<String, String>) + Send>,
    ) {
        let (shared, function, key, dir) = (
            self.shared.clone(),
            self.function.clone(),
            key.to_owned(),
            dir.to_owned(),
        );
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let mut attempt = 0;
            let published = loop {
                attempt += 1;
                let published = shared
                    .publish(&function, &key, &dir, &snapshots::SNAPSHOT_FILES)
                    .await;
                match (published, PUBLISH_RETRY_WAITS.get(attempt - 1)) {
                    (Err(_), Some(wait)) if dir.is_dir() => tokio::time::sleep(*wait).await,
                    (published, _) => break published,
                }
            };
            done(match published {
                Ok(record) => Ok(format!(
                    "SnapStart snapshot published to the cluster in {} ms ({} bytes; CPU {} {}; attempt {attempt})",
                    started.elapsed().as_millis(),
                    record.files.iter().map(|f| f.size).sum::<u64>(),
                    record.cpu_id,
                    record.cpu_model
                )),
                Err(e) => Err(format!("{} (attempt {attempt}, given up)", logging::Chain(&e))),
            });
        });
    }
}

/// The image file a spec boots.
fn spec_image(spec: &GuestSpec) -> PathBuf {
    spec.rootfs.path().to_owned()
}

impl Runner for VmHost {
    fn runs(&self) -> Vec<String> {
        [ArtifactKind::Ext4, ArtifactKind::Cpio]
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect()
    }

    fn load(&self) -> Load {
        let host = &self.shared.settings.host;
        let functions: BTreeMap<String, FunctionLoad> = self
            .lock()
            .iter()
            .map(|(name, (_, service))| {
                let counts = service.counts();
                let load = FunctionLoad {
                    environments: counts.starting + counts.busy + counts.idle,
                    idle: counts.idle,
                    snapshot: service.has_snapshot(),
                };
                (name.clone(), load)
            })
            .collect();
        Load {
            max_concurrency: host.max(),
            in_use: host.in_use(),
            functions,
        }
    }

    fn run(
        &self,
        function: Arc<FunctionRecord>,
        invocation: Invocation,
        may_start: bool,
    ) -> RunFuture {
        let host = self.clone();
        Box::pin(async move {
            let service = host
                .service(&function)
                .await
                .map_err(RunError::Unavailable)?;
            if !may_start && service.counts().idle == 0 {
                return Err(RunError::Busy);
            }
            match service.invoke(invocation).await {
                Ok(outcome) => Ok(outcome),
                Err(InvokeError::Throttled { .. }) => Err(RunError::Busy),
                Err(e) => Err(RunError::Invoke(e)),
            }
        })
    }

    fn log(&self, line: &str) {
        self.shared.settings.tails.line(line);
        println!("{line}");
    }
}
