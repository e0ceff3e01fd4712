//! The VM-wide KVM state a snapshot stores: the two PICs, the IOAPIC, the PIT and kvm-clock.

use super::vm::{Vm, VmError};
use crate::persist::Persist;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn irqchip(vm: &Vm, chip_id: u32) -> Result<kvm_irqchip, VmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.fd()
        .get_irqchip(&mut chip)
        .map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

impl Persist<'_> for Vm {
    type State = VmState;
    type SaveArgs = ();
    /// The guest memory, mapped already (a snapshot's memory file).
    type RestoreArgs = GuestMemoryMmap;
    type SaveError = VmError;
    type RestoreError = VmError;

    fn save(&self, (): ()) -> Result<VmState, VmError> {
        Ok(VmState {
            pic_master: irqchip(self, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(self, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(self, KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd().get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: self.fd().get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// A VM on `memory` ([`Vm::with_memory`]: its irqchip and PIT made), then `state` put in.
    fn restore(memory: GuestMemoryMmap, state: &VmState) -> Result<Vm, VmError> {
        let vm = Vm::with_memory(memory)?;
        let fd = vm.fd();
        fd.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
        // The flags say what KVM_GET_CLOCK filled in; KVM_SET_CLOCK takes none of them (only
        // KVM_CLOCK_REALTIME, which we do not use).
        let clock = kvm_clock_data {
            flags: 0,
            ..state.clock
        };
        fd.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            fd.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(vm)
    }
}
