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

use crate::builder::{BuildError, LegacyDevices, VirtioAttacher};
use crate::config::MAX_VCPUS;
use crate::devices::serial::{Serial, SerialState, SerialStateDef};
use crate::devices::virtio::mmio::TransportState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::VirtioDevice;
use crate::exit::ExitSignal;
use crate::microvm::{DeviceSpec, Microvm, Parts, StartError};
use crate::persist::Persist;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::vm_state::VmState;
use file::StateFileError;
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
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Pauses `microvm` (it stays paused: resume or stop it after) and writes its snapshot to
/// `dir`, replacing what was there. Both files land together or not at all ([`dir`]), synced
/// to disk.
pub fn create(microvm: &mut Microvm, dir: &Path) -> Result<(), SnapshotError> {
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
    let vcpus = microvm
        .paused_vcpus()
        .iter()
        .map(|vcpu| vcpu.save(&msr_list))
        .collect::<Result<Vec<_>, _>>()?;
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

    let staging = dir::stage(dir).map_err(io_error(dir))?;
    let written = write_files(&staging, memory, mem_size_bytes, &state, held);
    if written.is_err() {
        dir::discard(&staging);
    }
    written?;
    dir::publish(&staging, dir).map_err(io_error(dir))?;
    Ok(())
}

/// Writes guest memory and then the state into `staging`, each synced. The device locks in
/// `held` are released once memory is written.
fn write_files<T>(
    staging: &Path,
    memory: &GuestMemoryMmap,
    mem_size_bytes: u64,
    state: &MicrovmState,
    held: T,
) -> Result<(), SnapshotError> {
    let memory_path = staging.join(MEMORY_FILE);
    let mem_len = usize::try_from(mem_size_bytes)
        .map_err(|_| SnapshotError::Invalid(format!("{mem_size_bytes} bytes of memory")))?;
    let written = (|| {
        let mut out = File::create(&memory_path)?;
        memory
            .write_all_volatile_to(GuestAddress(0), &mut out, mem_len)
            .map_err(std::io::Error::other)?;
        out.flush()?;
        out.sync_all()
    })();
    written.map_err(io_error(&memory_path))?;
    drop(held);
    file::save(&staging.join(STATE_FILE), state)?;
    Ok(())
}

/// Builds a VM from the snapshot in `dir` and runs it, its console going to `console`. Every
/// check (format, checksum, sizes, KVM accepting each piece) comes before any vCPU runs.
pub fn restore(
    dir: &Path,
    console: Box<dyn Write + Send>,
    options: &RestoreOptions,
) -> Result<Microvm, SnapshotError> {
    let state: MicrovmState = file::load(&dir.join(STATE_FILE))?;
    if state.vcpus.is_empty() || state.vcpus.len() > usize::from(MAX_VCPUS) {
        let count = state.vcpus.len();
        return Err(SnapshotError::Invalid(format!("{count} vCPUs")));
    }
    let max_bytes = u64::from(crate::config::MAX_MEM_MIB) << 20;
    if state.mem_size_bytes == 0 || state.mem_size_bytes > max_bytes {
        let bytes = state.mem_size_bytes;
        return Err(SnapshotError::Invalid(format!("{bytes} bytes of memory")));
    }
    let memory = map_memory(&dir.join(MEMORY_FILE), state.mem_size_bytes)?;

    let vm = Vm::restore(memory, &state.vm)?;
    let exit = Arc::new(ExitSignal::default());
    let serial = Serial::restore(console, &state.serial).map_err(io_error(dir))?;
    let LegacyDevices { pio, serial } = LegacyDevices::attach(&vm, serial, &exit)?;
    let mut virtio = VirtioAttacher::new(&vm);
    for device in &state.devices {
        let spec = match (&device.spec, &options.vsock_uds) {
            (DeviceSpec::Vsock(state), Some(uds_path)) => DeviceSpec::Vsock(VsockState {
                uds_path: uds_path.clone(),
                ..state.clone()
            }),
            (spec, _) => spec.clone(),
        };
        virtio.attach(spec, Some(&device.transport))?;
    }
    let VirtioAttacher {
        mmio,
        subscribers,
        devices,
        vsock,
        ..
    } = virtio;
    let vcpus = state
        .vcpus
        .iter()
        .map(|s| Vcpu::restore(&vm, s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(vsock) = &vsock {
        // Before the vCPUs run: the guest's first look at its sockets sees them reset.
        let mut vsock = vsock.lock().unwrap_or_else(|e| e.into_inner());
        if vsock.is_activated() {
            vsock
                .send_transport_reset()
                .map_err(SnapshotError::TransportReset)?;
            log::debug!("vsock: transport reset sent to the restored guest");
        }
    }
    let microvm = Microvm::start(Parts {
        vm,
        exit,
        pio,
        mmio,
        subscribers,
        serial,
        vsock,
        devices,
        vcpus,
        cmdline: String::new(),
    })?;
    Ok(microvm)
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
