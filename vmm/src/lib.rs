//! The KVM virtual machine monitor and the host-side function service.
//!
//! Nothing is implemented here yet: the VMM is tracked by its own issue. This crate exists so the
//! workspace has the product's layout from the start; it exports nothing.
