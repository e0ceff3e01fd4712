//! KVM state: the VM (memory, irqchip, PIT, irqfds, ioeventfds) and its vCPUs.

pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
