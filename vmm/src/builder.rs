//! Boot, as one recipe read top to bottom: memory, kernel, initrd, devices, command line, zero
//! page, MP table, vCPUs, event loop, go.

use crate::arch::boot_params::{self, BootParamsError};
use crate::arch::cpuid::{FeatureBit, PVM_TEMPLATE};
use crate::arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, IRQ_BASE, IRQ_MAX, MMIO_DEVICES_START,
    MMIO_DEVICE_SIZE, SERIAL_IRQ,
};
use crate::arch::mptable::{self, MptableError};
use crate::config::{CpuTemplate, VmConfig};
use crate::devices::bus::{Bus, Overlap};
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{self, Serial};
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{MmioTransport, TransportState, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::persist::NetState;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::exit::ExitSignal;
use crate::microvm::{AttachedDevice, DeviceSpec, Microvm, Parts, StartError, Subscriber};
use crate::persist::Persist;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use event_manager::MutEventSubscriber;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{elf::Elf, load_cmdline, KernelLoader};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};

/// The kernel command line when the configuration gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 rodata=off";
/// What the `pvm` CPU template adds to the default command line: the kernel options that keep
/// a guest kernel off the instructions the emulated `kvm_pvm` cannot run, and the boot flags of
/// our kernel patches (rootfs/kernel/README.md).
pub const PVM_BOOT_ARGS: &str = "noxsave nosmap nofsgsbase nopku \
    clearcpuid=cx16,popcnt,rdrand,rdseed,fsgsbase,smap,smep,pku,ospke,invpcid,pcid,rdtscp,\
    3dnowprefetch,clflushopt,clwb,rdpid,avx,avx2 \
    pvm_no_int3_selftest pvm_no_fwait pvm_syscall_fixup";

/// The kernel command line a VM with CPU template `template` gets when none is configured.
/// `template` is resolved for the host ([`CpuTemplate::resolve`]); `Auto` gets the plain
/// defaults, as `None` does.
pub fn default_boot_args(template: CpuTemplate) -> String {
    match template {
        CpuTemplate::Pvm => format!("{DEFAULT_BOOT_ARGS} {PVM_BOOT_ARGS}"),
        CpuTemplate::Auto | CpuTemplate::None => DEFAULT_BOOT_ARGS.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the kernel {path}")]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("loading the initrd {path}")]
    Initrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing the kernel command line to guest memory")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("the kernel command line is not text")]
    CmdlineText(#[from] std::ffi::IntoStringError),
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("too many virtio devices: IRQs {IRQ_BASE}..={IRQ_MAX} are all taken")]
    TooManyDevices,
    #[error("{what}")]
    Device {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Bus(#[from] Overlap),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(
        "machine-config.cpu_template is `Auto`: resolve it for the host \
         (CpuTemplate::resolve with HostCaps::detect) before booting"
    )]
    UnresolvedCpuTemplate,
}

fn device_error<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    let what = what.into();
    move |e| BuildError::Device {
        what,
        source: Box::new(e),
    }
}

/// Boots `config`, the guest's console going to `console`. Its CPU template must be resolved
/// for the host already ([`CpuTemplate::resolve`]): the VMM does not look at the host itself.
pub fn boot(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<Microvm, BuildError> {
    let machine = &config.machine_config;
    let template = machine.cpu_template;
    let masked: &[FeatureBit] = match template {
        CpuTemplate::Pvm => PVM_TEMPLATE,
        CpuTemplate::None => &[],
        CpuTemplate::Auto => return Err(BuildError::UnresolvedCpuTemplate),
    };

    // Memory and kernel.
    let ram_end = u64::from(machine.mem_size_mib) << 20;
    let vm = Vm::new(ram_end)?;
    let kernel_path = &config.boot_source.kernel_image_path;
    let mut kernel = File::open(kernel_path).map_err(|source| BuildError::Open {
        path: kernel_path.clone(),
        source,
    })?;
    let loaded = Elf::load(
        vm.memory(),
        None,
        &mut kernel,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| BuildError::Kernel {
        path: kernel_path.clone(),
        source,
    })?;

    // Initrd, at the top of RAM.
    let initrd = match &config.boot_source.initrd_path {
        Some(path) => Some(load_initrd(&vm, path, ram_end, loaded.kernel_end)?),
        None => None,
    };

    // Command line: the configured or default arguments, the root drive, then one entry per
    // virtio-mmio device as the devices are attached.
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    let boot_args = match &config.boot_source.boot_args {
        Some(args) => args.clone(),
        None => default_boot_args(template),
    };
    cmdline.insert_str(boot_args)?;

    // Legacy devices on the port bus.
    let exit = Arc::new(ExitSignal::default());
    let serial = Serial::new(console).map_err(device_error("creating the serial console"))?;
    let legacy = LegacyDevices::attach(&vm, serial, &exit)?;

    // Virtio devices: drives first (the root drive first of all, so it is /dev/vda), then
    // vsock, entropy and network interfaces (eth0, eth1... in configuration order).
    let mut drives: Vec<_> = config.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    if let Some(root) = drives
        .first()
        .filter(|d| d.is_root_device && initrd.is_none())
    {
        let root_args = if root.is_read_only {
            "root=/dev/vda ro"
        } else {
            "root=/dev/vda rw"
        };
        cmdline.insert_str(root_args)?;
    }
    let mut specs: Vec<DeviceSpec> = drives
        .iter()
        .map(|drive| {
            DeviceSpec::Block(BlockState {
                drive_id: drive.drive_id.clone(),
                path: drive.path_on_host.clone(),
                read_only: drive.is_read_only,
            })
        })
        .collect();
    if let Some(vsock) = &config.vsock {
        specs.push(DeviceSpec::Vsock(VsockState {
            guest_cid: u64::from(vsock.guest_cid),
            uds_path: vsock.uds_path.clone(),
        }));
    }
    if config.entropy.is_some() {
        specs.push(DeviceSpec::Rng);
    }
    specs.extend(config.network_interfaces.iter().map(|iface| {
        DeviceSpec::Net(NetState {
            iface_id: iface.iface_id.clone(),
            host_dev_name: iface.host_dev_name.clone(),
            guest_mac: iface.guest_mac,
        })
    }));
    let mut virtio = VirtioAttacher::new(&vm);
    for spec in specs {
        let (base, irq) = virtio.attach(spec, None)?;
        cmdline.add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(base), irq, None)?;
    }
    let virtio = virtio.finish();

    // Boot protocol: command line, zero page, MP table.
    let cmdline_text = cmdline.as_cstring()?.into_string()?;
    load_cmdline(vm.memory(), GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BuildError::LoadCmdline)?;
    boot_params::write(vm.memory(), ram_end, cmdline_text.len(), initrd)?;
    mptable::write(vm.memory(), machine.vcpu_count)?;

    // vCPUs: all get CPUID, MSRs and LINT pins; the boot vCPU gets the kernel's entry state.
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpu_count));
    for id in 0..machine.vcpu_count {
        vcpus.push(Vcpu::new(&vm, id, machine.vcpu_count, masked)?);
    }
    vcpus[0].setup_boot(vm.memory(), loaded.kernel_load.0)?;

    let parts = parts(vm, exit, legacy, virtio, vcpus, cmdline_text);
    Ok(Microvm::start(parts)?)
}

/// What [`Microvm::start`] takes, from a boot or a restore: the VM, its devices and vCPUs.
pub(crate) fn parts(
    vm: Vm,
    exit: Arc<ExitSignal>,
    legacy: LegacyDevices,
    virtio: VirtioDevices,
    vcpus: Vec<Vcpu>,
    cmdline: String,
) -> Parts {
    let LegacyDevices { pio, serial, i8042 } = legacy;
    let VirtioDevices {
        mmio,
        subscribers,
        devices,
        vsock,
    } = virtio;
    Parts {
        vm,
        exit,
        pio,
        mmio,
        subscribers,
        serial,
        i8042,
        vsock,
        devices,
        vcpus,
        cmdline,
    }
}

fn load_initrd(
    vm: &Vm,
    path: &PathBuf,
    ram_end: u64,
    kernel_end: u64,
) -> Result<boot_params::InitrdPlacement, BuildError> {
    let open_error = |source| BuildError::Open {
        path: path.clone(),
        source,
    };
    let mut file = File::open(path).map_err(open_error)?;
    let size = file.metadata().map_err(open_error)?.len();
    let placement = boot_params::place_initrd(ram_end, kernel_end, size)?;
    let len = usize::try_from(size).map_err(|_| BootParamsError::InitrdDoesNotFit { size })?;
    vm.memory()
        .read_exact_volatile_from(GuestAddress(placement.address), &mut file, len)
        .map_err(|source| BuildError::Initrd {
            path: path.clone(),
            source,
        })?;
    Ok(placement)
}

/// The devices on the port bus, the same at boot and on restore: the serial console, its
/// interrupt an irqfd on [`SERIAL_IRQ`], and the i8042, whose reset ends the VM through `exit`.
pub(crate) struct LegacyDevices {
    pub pio: Bus,
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042>>,
}

impl LegacyDevices {
    /// Wires `serial` (fresh, or as a snapshot left it) and a new i8042 to `vm`.
    pub fn attach(
        vm: &Vm,
        serial: Serial,
        exit: &Arc<ExitSignal>,
    ) -> Result<LegacyDevices, BuildError> {
        let mut pio = Bus::default();
        vm.register_irqfd(serial.irq(), SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(serial::BASE_PORT, serial::PORT_COUNT, serial.clone())?;
        let i8042 = I8042::new(exit.clone()).map_err(device_error("creating the i8042"))?;
        vm.register_irqfd(i8042.irq(), i8042::KEYBOARD_IRQ)?;
        let i8042 = Arc::new(Mutex::new(i8042));
        pio.insert(i8042::BASE_PORT, i8042::PORT_COUNT, i8042.clone())?;
        Ok(LegacyDevices { pio, serial, i8042 })
    }
}

/// Gives each virtio device its MMIO window, IRQ, irqfd and ioeventfds, in order: the n-th
/// device gets window n and IRQ `IRQ_BASE + n`, at boot and again on restore.
pub(crate) struct VirtioAttacher<'a> {
    vm: &'a Vm,
    attached: VirtioDevices,
    next: u32,
}

/// The virtio devices attached, on their MMIO bus.
pub(crate) struct VirtioDevices {
    pub mmio: Bus,
    pub subscribers: Vec<Subscriber>,
    pub devices: Vec<AttachedDevice>,
    /// The vsock device, which the function service talks to.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
}

impl<'a> VirtioAttacher<'a> {
    pub fn new(vm: &'a Vm) -> Self {
        VirtioAttacher {
            vm,
            attached: VirtioDevices {
                mmio: Bus::default(),
                subscribers: Vec::new(),
                devices: Vec::new(),
                vsock: None,
            },
            next: 0,
        }
    }

    /// The devices attached so far.
    pub fn finish(self) -> VirtioDevices {
        self.attached
    }

    /// Makes the device `spec` describes and attaches it, fresh or (with `restore`) in the
    /// state a snapshot recorded. Returns its MMIO base and IRQ.
    pub fn attach(
        &mut self,
        spec: DeviceSpec,
        restore: Option<&TransportState>,
    ) -> Result<(u64, u32), BuildError> {
        match &spec {
            DeviceSpec::Block(state) => {
                let block = Block::restore((), state)
                    .map_err(device_error(format!("drive {}", state.drive_id)))?;
                self.attach_device(Arc::new(Mutex::new(block)), spec, restore)
            }
            DeviceSpec::Vsock(state) => {
                let vsock = Vsock::restore((), state).map_err(device_error(format!(
                    "vsock on {}",
                    state.uds_path.display()
                )))?;
                let vsock = Arc::new(Mutex::new(vsock));
                self.attached.vsock = Some(vsock.clone());
                self.attach_device(vsock, spec, restore)
            }
            DeviceSpec::Rng => {
                let rng = Rng::restore((), &()).map_err(device_error("entropy device"))?;
                self.attach_device(Arc::new(Mutex::new(rng)), spec, restore)
            }
            DeviceSpec::Net(state) => {
                let net = Net::restore((), state).map_err(device_error(format!(
                    "network interface {} on tap {}",
                    state.iface_id, state.host_dev_name
                )))?;
                self.attach_device(Arc::new(Mutex::new(net)), spec, restore)
            }
        }
    }

    fn attach_device<D>(
        &mut self,
        device: Arc<Mutex<D>>,
        spec: DeviceSpec,
        restore: Option<&TransportState>,
    ) -> Result<(u64, u32), BuildError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let irq = IRQ_BASE + self.next;
        if irq > IRQ_MAX {
            return Err(BuildError::TooManyDevices);
        }
        let base = MMIO_DEVICES_START + u64::from(self.next) * MMIO_DEVICE_SIZE;
        {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            self.vm.register_irqfd(dev.interrupt().event(), irq)?;
            for (index, event) in (0u32..).zip(dev.queue_events()) {
                self.vm
                    .register_ioeventfd(event, base + NOTIFY_REG_OFFSET, index)?;
            }
        }
        let memory = self.vm.memory().clone();
        let transport = match restore {
            None => MmioTransport::new(memory, device.clone()),
            Some(state) => MmioTransport::restore((memory, device.clone()), state).map_err(
                device_error(format!("restoring virtio device {}", self.next)),
            )?,
        };
        let transport = Arc::new(Mutex::new(transport));
        self.attached
            .mmio
            .insert(base, MMIO_DEVICE_SIZE, transport.clone())?;
        self.attached
            .devices
            .push(AttachedDevice { spec, transport });
        self.attached.subscribers.push(device);
        self.next += 1;
        Ok((base, irq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSource, MachineConfig};

    #[test]
    fn an_unresolved_cpu_template_is_refused_before_anything_is_made() {
        let config = VmConfig {
            boot_source: BootSource {
                kernel_image_path: "/no/such/vmlinux".into(),
                initrd_path: None,
                boot_args: None,
            },
            machine_config: MachineConfig::default(),
            drives: Vec::new(),
            vsock: None,
            entropy: None,
            serial: None,
            network_interfaces: Vec::new(),
        };
        assert_eq!(config.machine_config.cpu_template, CpuTemplate::Auto);
        let result = boot(&config, Box::new(std::io::sink()));
        assert!(matches!(result, Err(BuildError::UnresolvedCpuTemplate)));
    }

    #[test]
    fn only_the_pvm_template_adds_boot_args() {
        assert!(default_boot_args(CpuTemplate::Pvm).contains("pvm_syscall_fixup"));
        assert_eq!(default_boot_args(CpuTemplate::None), DEFAULT_BOOT_ARGS);
    }
}
