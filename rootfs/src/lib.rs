//! The guest side's image builder and the function configuration the guest reads.
//!
//! - [`function_config`]: `function.json`, the per-function settings (handler, memory, timeout,
//!   environment...), read by the builder, the guest init and the host.
//! - [`layout`]: where things live in the image.
//! - [`builder`] (feature `builder`, on by default): turns a static init, a static runtime, a
//!   function directory and layers into a reproducible initramfs (newc cpio) and optionally an
//!   ext4 image; the `build-rootfs` binary is its command line.
//!
//! The guest init depends on this crate with `default-features = false`, which leaves only
//! `function_config` and `layout`.

pub mod function_config;
pub mod layout;

#[cfg(feature = "builder")]
pub mod builder;
#[cfg(feature = "builder")]
pub mod cpio;
#[cfg(feature = "builder")]
pub mod elf;
#[cfg(feature = "builder")]
pub mod ext4;
#[cfg(feature = "builder")]
pub mod initramfs;
#[cfg(feature = "builder")]
pub mod tree;

pub use function_config::{ConfigError, FunctionConfig, InitializationType};

#[cfg(feature = "builder")]
pub use builder::{build, BuildError, BuildOptions, BuildReport, Ext4Output};
