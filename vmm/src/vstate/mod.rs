//! KVM state: the VM (memory, irqchip, PIT, irqfds, ioeventfds) and its vCPUs.

pub mod vcpu;
pub mod vm;
