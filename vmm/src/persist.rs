//! What goes into a snapshot, in one spelling. Each part of a VM a snapshot holds (the VM's KVM
//! state, each vCPU, the serial console, each virtio device and its MMIO transport) implements
//! [`Persist`]: `save` returns its state, which [`crate::snapshot`] writes to the state file, and
//! `restore` builds the part again from that state.

/// A part of a VM that a snapshot holds.
pub trait Persist<'a>: Sized {
    /// What the snapshot stores.
    type State;
    /// What `save` needs besides the part itself: `()` for most parts.
    type SaveArgs;
    /// What a restore needs besides the state: the VM, guest memory, an output, `()` for a part
    /// its state describes whole.
    type RestoreArgs;
    /// Why `save` failed: [`std::convert::Infallible`] for a part whose state is at hand.
    type SaveError;
    /// Why `restore` failed.
    type RestoreError;

    /// The part's state. The VM must be paused, so that no vCPU changes it meanwhile.
    fn save(&self, args: Self::SaveArgs) -> Result<Self::State, Self::SaveError>;

    /// The part again, in the state `state` records.
    fn restore(args: Self::RestoreArgs, state: &Self::State) -> Result<Self, Self::RestoreError>;
}
