//! Snapshots: a paused VM written to a directory as `state` (the KVM, vCPU and device state,
//! see [`file`]) and `memory` (guest RAM, byte for byte), and restored in a fresh process with
//! the memory file mapped private, so pages load lazily and the guest's writes stay its own.
//! Each part's state is its [`Persist`] state: saved with `save`, built again with `restore`.
//!
//! Virtio devices are saved as what they were made from (a drive's path, the vsock CID) and
//! their transport and queue state; on restore they are made again and activated on the saved
//! queues. Vsock connections do not survive: the restored device sends the guest a transport
//! reset, and the guest reconnects (Firecracker does the same).

pub mod dir;
pub mod file;
pub mod manifest;
pub mod working_set;

use crate::builder::{self, BuildError, LegacyDevices, VirtioAttacher};
use crate::config::MAX_VCPUS;
use crate::devices::serial::{Serial, SerialState, SerialStateDef};
use crate::devices::virtio::mmio::TransportState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::VirtioDevice;
use crate::exit::ExitSignal;
use crate::microvm::{DeviceSpec, Microvm, StartError};
use crate::persist::Persist;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::vm_state::VmState;
use file::StateFileError;
use manifest::{manifest_path, ManifestError, SnapshotManifest};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {found} bytes, the state says guest memory is {expected} bytes")]
    MemorySize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: the guest memory's CRC-32 is {found:#010x}, its manifest says {expected:#010x}: the memory file is damaged")]
    MemoryDigest {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("mapping guest memory from {path}")]
    Map {
        path: PathBuf,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("mapping guest memory from {path}")]
    Memory {
        path: PathBuf,
        source: vm_memory::GuestRegionCollectionError,
    },
    #[error("the state describes an impossible VM: {0}")]
    Invalid(String),
    #[error("sending the restored guest a vsock transport reset")]
    TransportReset(#[source] crate::devices::virtio::vsock::VsockError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("network_overrides: the snapshot has no network interface {0:?}")]
    UnknownInterface(String),
    #[error("vsock_override: the snapshot has no vsock device")]
    NoVsock,
}

/// Everything but the memory.
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// The VMM that wrote it, for the curious; compatibility is the file format's version.
    pub vmm_version: String,
    pub mem_size_bytes: u64,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    #[serde(with = "SerialStateDef")]
    pub serial: SerialState,
    /// In attach order, which gives each its MMIO window and IRQ.
    pub devices: Vec<DeviceState>,
}

#[derive(Serialize, Deserialize)]
pub struct DeviceState {
    pub spec: DeviceSpec,
    pub transport: TransportState,
}

/// What a restore may change.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// A new host socket for the vsock device, so that several restores of one snapshot can
    /// run at once. `None`: the path in the snapshot.
    pub vsock_uds: Option<PathBuf>,
    /// New taps for network interfaces, by interface id: `(iface_id, host_dev_name)`.
    pub net_overrides: Vec<(String, String)>,
    /// Leave the vCPUs paused (the API's `resume_vm: false`); they run at once otherwise.
    pub paused: bool,
    /// A working-set file ([`working_set`]) whose pages are loaded before the vCPUs run. One
    /// that cannot be used (missing, corrupt, another snapshot's) is logged and ignored: guest
    /// memory then loads lazily, as without one.
    pub working_set: Option<PathBuf>,
}

/// A restored VM, and what its restore did besides.
pub struct Restored {
    pub microvm: Microvm,
    /// The CRC-32 of the state it came from (its manifest's `state_crc32`), which a working
    /// set recorded from this VM names.
    pub state_crc32: u32,
    /// What became of [`RestoreOptions::working_set`]; `None` when none was given.
    pub working_set: Option<WorkingSetUse>,
}

/// What a restore did with the working set it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkingSetUse {
    /// Its pages were loaded before the vCPUs ran.
    Loaded(working_set::Loaded),
    /// It could not be used, and why: guest memory loads lazily.
    Ignored(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Pauses `microvm` (it stays paused: resume or stop it after) and writes its snapshot to
/// `dir`, replacing what was there: `state`, `memory` and the manifest `state.manifest.json`.
/// All land together or not at all ([`dir`]), synced to disk.
pub fn create(microvm: &mut Microvm, dir: &Path) -> Result<SnapshotManifest, SnapshotError> {
    let staging = dir::stage(dir).map_err(io_error(dir))?;
    let paths = SnapshotPaths::in_dir(&staging);
    let named = SnapshotPaths::in_dir(dir);
    let written = write_snapshot(microvm, &paths, &named);
    if written.is_err() {
        dir::discard(&staging);
    }
    let manifest = written.and_then(|manifest| {
        manifest.write(&manifest_path(&paths.state))?;
        Ok(manifest)
    });
    if manifest.is_err() {
        dir::discard(&staging);
    }
    let manifest = manifest?;
    dir::publish(&staging, dir).map_err(io_error(dir))?;
    Ok(manifest)
}

/// Where a snapshot's two files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The state file (the API's `snapshot_path`).
    pub state: PathBuf,
    /// Guest memory (the API's `mem_file_path`).
    pub memory: PathBuf,
}

impl SnapshotPaths {
    /// The files of a snapshot directory.
    pub fn in_dir(dir: &Path) -> SnapshotPaths {
        SnapshotPaths {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
        }
    }
}

/// Writes the snapshot of the paused `microvm` to the two files of `paths`, as Firecracker's
/// `PUT /snapshot/create` does, and then its manifest beside the state file. Each file is
/// written under a temporary name and renamed over its final one once synced, so a file at
/// either path is always whole; the manifest comes last and names the state it describes.
pub fn create_files(
    microvm: &mut Microvm,
    paths: &SnapshotPaths,
) -> Result<SnapshotManifest, SnapshotError> {
    let temporary = SnapshotPaths {
        state: temporary_name(&paths.state),
        memory: temporary_name(&paths.memory),
    };
    let manifest_temporary = temporary_name(&manifest_path(&paths.state));
    let discard = || {
        for path in [&temporary.state, &temporary.memory, &manifest_temporary] {
            let _ = std::fs::remove_file(path);
        }
    };
    let written = write_snapshot(microvm, &temporary, paths).and_then(|manifest| {
        manifest.write(&manifest_temporary)?;
        Ok(manifest)
    });
    let manifest = match written {
        Ok(manifest) => manifest,
        Err(e) => {
            discard();
            return Err(e);
        }
    };
    let renamed = (|| {
        std::fs::rename(&temporary.memory, &paths.memory).map_err(io_error(&paths.memory))?;
        std::fs::rename(&temporary.state, &paths.state).map_err(io_error(&paths.state))?;
        let final_manifest = manifest_path(&paths.state);
        std::fs::rename(&manifest_temporary, &final_manifest).map_err(io_error(&final_manifest))
    })();
    if renamed.is_err() {
        discard();
    }
    renamed?;
    Ok(manifest)
}

/// `DIR/.NAME.tmp-PID`, beside `path`.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Pauses `microvm`, reads its state and writes memory and state to `paths`, each synced;
/// returns the manifest (for the caller to write last), which records `named`, where the files
/// will be once the caller moves them into place.
fn write_snapshot(
    microvm: &mut Microvm,
    paths: &SnapshotPaths,
    named: &SnapshotPaths,
) -> Result<SnapshotManifest, SnapshotError> {
    microvm.pause();
    let msr_list = microvm
        .vm()
        .kvm()
        .get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(|source| VmError::Kvm {
            what: "KVM_GET_MSR_INDEX_LIST",
            source,
        })?;
    // Hold every virtio device until the memory is written: the device thread then cannot
    // use a queue between the moment its state is read and the moment memory is saved.
    let transports: Vec<_> = microvm
        .devices()
        .iter()
        .map(|d| (d.spec.clone(), d.transport.clone()))
        .collect();
    let transports: Vec<_> = transports
        .iter()
        .map(|(spec, t)| (spec, t.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let held: Vec<_> = transports.iter().map(|(_, t)| t.device().clone()).collect();
    let held: Vec<_> = held
        .iter()
        .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let devices = transports
        .iter()
        .zip(&held)
        .map(|((spec, transport), device)| {
            let Ok(transport) = transport.save(&**device);
            DeviceState {
                spec: (*spec).clone(),
                transport,
            }
        })
        .collect();
    let vcpus = microvm.vcpu_states(&msr_list)?;
    let Ok(serial) = microvm
        .serial()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .save(());
    let memory = microvm.vm().memory();
    let mem_size_bytes: u64 = vm_memory::GuestMemoryBackend::iter(memory)
        .map(vm_memory::GuestMemoryRegion::len)
        .sum();
    let state = MicrovmState {
        vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
        mem_size_bytes,
        vm: microvm.vm().save(())?,
        vcpus,
        serial,
        devices,
    };
    let (state_crc32, mem_crc32) = write_files(paths, memory, mem_size_bytes, &state, held)?;
    Ok(SnapshotManifest::describe(
        &state,
        &named.state,
        &named.memory,
        state_crc32,
        mem_crc32,
    ))
}

/// Writes guest memory and then the state to `paths`, each synced; returns the state's
/// checksum and the memory file's CRC-32 (read back from the file once the device locks in
/// `held` are released: the VM stays paused, so memory does not change meanwhile).
fn write_files<T>(
    paths: &SnapshotPaths,
    memory: &GuestMemoryMmap,
    mem_size_bytes: u64,
    state: &MicrovmState,
    held: T,
) -> Result<(u32, u32), SnapshotError> {
    let memory_path = &paths.memory;
    let mem_len = usize::try_from(mem_size_bytes)
        .map_err(|_| SnapshotError::Invalid(format!("{mem_size_bytes} bytes of memory")))?;
    let written = (|| {
        let mut out = File::create(memory_path)?;
        memory
            .write_all_volatile_to(GuestAddress(0), &mut out, mem_len)
            .map_err(std::io::Error::other)?;
        out.flush()?;
        out.sync_all()
    })();
    written.map_err(io_error(memory_path))?;
    drop(held);
    let mem_crc32 = memory_crc32(memory_path)?;
    Ok((file::save(&paths.state, state)?, mem_crc32))
}

/// The CRC-32 of a guest memory file, read once from start to end.
pub fn memory_crc32(path: &Path) -> Result<u32, SnapshotError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer).map_err(io_error(path))?;
        if read == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
    }
}

/// Checks the guest memory file at `memory` against `manifest`'s CRC-32 (one sequential read
/// of the whole file). A manifest written before it recorded one has nothing to check.
pub fn verify_memory(manifest: &SnapshotManifest, memory: &Path) -> Result<(), SnapshotError> {
    let Some(expected) = manifest.mem_crc32 else {
        return Ok(());
    };
    let found = memory_crc32(memory)?;
    if found != expected {
        return Err(SnapshotError::MemoryDigest {
            path: memory.to_owned(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Builds a VM from the snapshot in `dir` and runs it, its console going to `console`. Every
/// check (format, checksums, the memory file's CRC-32 when the manifest has one, sizes, KVM
/// accepting each piece) comes before any vCPU runs.
pub fn restore(
    dir: &Path,
    console: Box<dyn Write + Send>,
    options: &RestoreOptions,
) -> Result<Microvm, SnapshotError> {
    restore_dir(dir, console, options).map(|r| r.microvm)
}

/// [`restore`], with what the restore did besides ([`Restored`]).
pub fn restore_dir(
    dir: &Path,
    console: Box<dyn Write + Send>,
    options: &RestoreOptions,
) -> Result<Restored, SnapshotError> {
    let paths = SnapshotPaths::in_dir(dir);
    let manifest_file = manifest_path(&paths.state);
    if manifest_file.exists() {
        verify_memory(&SnapshotManifest::read(&manifest_file)?, &paths.memory)?;
    }
    restore_files(&paths, console, options)
}

/// [`restore`] from a state file and a memory file (Firecracker's `PUT /snapshot/load`).
pub fn restore_files(
    paths: &SnapshotPaths,
    console: Box<dyn Write + Send>,
    options: &RestoreOptions,
) -> Result<Restored, SnapshotError> {
    let (state, state_crc32): (MicrovmState, u32) = file::load_with_checksum(&paths.state)?;
    if state.vcpus.is_empty() || state.vcpus.len() > usize::from(MAX_VCPUS) {
        let count = state.vcpus.len();
        return Err(SnapshotError::Invalid(format!("{count} vCPUs")));
    }
    let max_bytes = u64::from(crate::config::MAX_MEM_MIB) << 20;
    if state.mem_size_bytes == 0 || state.mem_size_bytes > max_bytes {
        let bytes = state.mem_size_bytes;
        return Err(SnapshotError::Invalid(format!("{bytes} bytes of memory")));
    }
    let specs = overridden_specs(&state, options)?;
    let memory = map_memory(&paths.memory, state.mem_size_bytes)?;
    let working_set = options
        .working_set
        .as_deref()
        .map(|path| load_working_set(path, &memory, state_crc32, state.mem_size_bytes));

    let vm = Vm::restore(memory, &state.vm)?;
    let exit = Arc::new(ExitSignal::default());
    let serial = Serial::restore(console, &state.serial).map_err(io_error(&paths.state))?;
    let legacy = LegacyDevices::attach(&vm, serial, &exit)?;
    let mut virtio = VirtioAttacher::new(&vm);
    for (device, spec) in state.devices.iter().zip(specs) {
        virtio.attach(spec, Some(&device.transport))?;
    }
    let virtio = virtio.finish();
    let vcpus = state
        .vcpus
        .iter()
        .map(|s| Vcpu::restore(&vm, s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(vsock) = &virtio.vsock {
        // Before the vCPUs run: the guest's first look at its sockets sees them reset.
        let mut vsock = vsock.lock().unwrap_or_else(|e| e.into_inner());
        if vsock.is_activated() {
            vsock
                .send_transport_reset()
                .map_err(SnapshotError::TransportReset)?;
            log::debug!("vsock: transport reset sent to the restored guest");
        }
    }
    let parts = builder::parts(vm, exit, legacy, virtio, vcpus, String::new());
    let microvm = if options.paused {
        Microvm::start_paused(parts)?
    } else {
        Microvm::start(parts)?
    };
    Ok(Restored {
        microvm,
        state_crc32,
        working_set,
    })
}

/// Loads the working set at `path` into `memory` if it is this snapshot's; logs why not
/// otherwise (one line), and the restore goes on with lazily loaded memory.
fn load_working_set(
    path: &Path,
    memory: &GuestMemoryMmap,
    state_crc32: u32,
    mem_size_bytes: u64,
) -> WorkingSetUse {
    let loaded = working_set::WorkingSet::read(path).and_then(|set| {
        set.check(state_crc32, mem_size_bytes)?;
        working_set::load(memory, &set)
    });
    match loaded {
        Ok(loaded) => {
            log::info!(
                "working set {}: {} pages loaded in {:.2} ms",
                path.display(),
                loaded.pages,
                loaded.ms
            );
            WorkingSetUse::Loaded(loaded)
        }
        Err(e) => {
            let why = logging::Chain(&e).to_string();
            log::warn!(
                "working set {}: not used ({why}); guest memory loads lazily",
                path.display()
            );
            WorkingSetUse::Ignored(why)
        }
    }
}

/// The snapshot's devices with `options`' new vsock socket and taps; an override for a device
/// the snapshot does not have is refused.
fn overridden_specs(
    state: &MicrovmState,
    options: &RestoreOptions,
) -> Result<Vec<DeviceSpec>, SnapshotError> {
    let mut specs: Vec<DeviceSpec> = state.devices.iter().map(|d| d.spec.clone()).collect();
    if let Some(uds_path) = &options.vsock_uds {
        let vsock = specs.iter_mut().find_map(|spec| match spec {
            DeviceSpec::Vsock(vsock) => Some(vsock),
            _ => None,
        });
        match vsock {
            Some(vsock) => {
                *vsock = VsockState {
                    uds_path: uds_path.clone(),
                    ..vsock.clone()
                }
            }
            None => return Err(SnapshotError::NoVsock),
        }
    }
    for (iface_id, host_dev_name) in &options.net_overrides {
        let net = specs.iter_mut().find_map(|spec| match spec {
            DeviceSpec::Net(net) if &net.iface_id == iface_id => Some(net),
            _ => None,
        });
        match net {
            Some(net) => net.host_dev_name = host_dev_name.clone(),
            None => return Err(SnapshotError::UnknownInterface(iface_id.clone())),
        }
    }
    Ok(specs)
}

/// Maps the memory file private and writable: reads fault pages in from the file on first
/// touch, writes go to anonymous copies, and the file is never changed.
fn map_memory(path: &Path, size: u64) -> Result<GuestMemoryMmap, SnapshotError> {
    // A FIFO would block the open: only a regular file is guest memory.
    if !std::fs::metadata(path).map_err(io_error(path))?.is_file() {
        let not_a_file =
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_error(path)(not_a_file));
    }
    let file = File::open(path).map_err(io_error(path))?;
    let found = file.metadata().map_err(io_error(path))?.len();
    if found != size {
        return Err(SnapshotError::MemorySize {
            path: path.to_owned(),
            expected: size,
            found,
        });
    }
    let len = usize::try_from(size)
        .map_err(|_| SnapshotError::Invalid(format!("{size} bytes of memory")))?;
    let region = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|source| SnapshotError::Map {
            path: path.to_owned(),
            source,
        })?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| {
        SnapshotError::Invalid(format!("{size} bytes of memory do not fit the guest"))
    })?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|source| SnapshotError::Memory {
        path: path.to_owned(),
        source,
    })
}
