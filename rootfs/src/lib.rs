//! The guest side: the Rust `init` (PID 1), the rootfs/initramfs builder and the guest kernel
//! configuration.
//!
//! Nothing is implemented here yet: the guest side is tracked by its own issue. This crate exists
//! so the workspace has the product's layout from the start; it exports nothing.
