//! The guest image builder: turns a static init, a static runtime, a function directory and
//! layers into a reproducible initramfs (newc cpio) and optionally an ext4 image; the
//! `build-rootfs` binary is its command line. What the image holds and where
//! (`function.json`, the layout) is defined in `proto`, which the guest init reads too.

pub mod builder;
pub mod cpio;
pub mod elf;
pub mod ext4;
pub mod initramfs;
pub mod layer_zip;
pub mod tree;

pub use builder::{build, BuildError, BuildOptions, BuildReport, Ext4Output};
