//! What this host's KVM can do, found out once at the top of a program (the `vmm` binary's
//! `main`, the function service) and handed down, so that nothing below looks at the host on
//! its own and tests can state the host they mean.

use std::path::Path;

/// The facts about the host that change how a VM is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCaps {
    /// `/dev/kvm` is the nested, emulated `kvm_pvm`: a guest must be
    /// kept off the instructions its emulator cannot run (the `pvm` CPU template).
    pub kvm_pvm: bool,
}

impl HostCaps {
    /// Looks at this host.
    pub fn detect() -> HostCaps {
        HostCaps {
            kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
        }
    }
}
