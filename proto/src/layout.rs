//! Where things live inside the guest image. The builder writes these paths and the guest init
//! reads them, so both take them from here.

/// The init binary; the kernel runs `/init` from an initramfs (an ext4 root needs `init=/init`).
pub const INIT: &str = "/init";
/// The default runtime executable (the `bootstrap` binary); `runtime` in the config may name another.
pub const DEFAULT_RUNTIME: &str = "/var/runtime/bootstrap";
/// The function code (`LAMBDA_TASK_ROOT`).
pub const TASK_ROOT: &str = "/var/task";
/// The runtime's directory (`LAMBDA_RUNTIME_DIR`).
pub const RUNTIME_DIR: &str = "/var/runtime";
/// Where layers are merged, as on Lambda.
pub const OPT: &str = "/opt";
/// The external extensions (every executable file in it), from the layers, as on Lambda.
pub const EXTENSIONS: &str = "/opt/extensions";
/// The validated function configuration, re-serialized canonically.
pub const CONFIG: &str = "/etc/lambda/function.json";
/// The console device node the kernel opens before it runs `/init` from an initramfs.
pub const CONSOLE: &str = "/dev/console";
/// Busybox, when the image has one; its applets link to it from `/bin`.
pub const BUSYBOX: &str = "/bin/busybox";
/// Major and minor number of `/dev/console` (TTYAUX_MAJOR, 1).
pub const CONSOLE_DEVICE: (u32, u32) = (5, 1);
