//! One KVM VM: its guest memory, the in-kernel irqchip and PIT, and the eventfds that inject
//! interrupts (irqfd) and catch queue notifications (ioeventfd) without a trip through the VMM.

use crate::arch::layout::KVM_TSS_ADDRESS;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm (is KVM available, and may this user open it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{bytes} bytes of guest memory do not fit this host's address space")]
    TooLarge { bytes: u64 },
    #[error("allocating {mib} MiB of guest memory")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub struct Vm {
    // Dropped before `memory`, so KVM never holds a slot whose mapping is gone.
    fd: VmFd,
    kvm: Kvm,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// A VM with `mem_bytes` of RAM from guest address 0, an irqchip and a PIT.
    pub fn new(mem_bytes: u64) -> Result<Vm, VmError> {
        let len = usize::try_from(mem_bytes).map_err(|_| VmError::TooLarge { bytes: mem_bytes })?;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).map_err(|source| {
            VmError::Memory {
                mib: mem_bytes >> 20,
                source,
            }
        })?;
        Vm::with_memory(memory)
    }

    /// A VM on memory that is already mapped (a snapshot's memory file), an irqchip and a PIT.
    pub fn with_memory(memory: GuestMemoryMmap) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let vm = Vm { fd, kvm, memory };
        vm.register_memory()?;
        vm.fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // A dummy speaker port keeps the guest's PC-speaker probing inside KVM.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        Ok(vm)
    }

    fn register_memory(&self) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(self.memory.iter()) {
            let region_info = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by
            // `self.memory`, which outlives the VM fd (field order makes `fd` drop first).
            unsafe { self.fd.set_user_memory_region(region_info) }
                .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Makes a write to `event` raise `irq` on the irqchip.
    pub fn register_irqfd(&self, event: &EventFd, irq: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(event, irq).map_err(kvm("KVM_IRQFD"))
    }

    /// Makes a guest write of `value` to the MMIO address `addr` signal `event` inside KVM.
    pub fn register_ioeventfd(
        &self,
        event: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), value)
            .map_err(kvm("KVM_IOEVENTFD"))
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    kvm(what)
}
