//! What a VM is made of, in Firecracker's configuration format: a `--config-file` JSON with
//! `boot-source`, `machine-config`, `drives`, `vsock`, `entropy`, `serial` and
//! `network-interfaces`, or the same through command-line flags ([`VmFlags`]). Every error
//! names the key it is about.

mod flags;
#[cfg(test)]
mod tests;

pub use flags::VmFlags;

use crate::devices::virtio::net::{tap, MacAddr};
use crate::host_caps::HostCaps;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The most vCPUs a VM may have (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Guest RAM lives below the 32-bit MMIO gap at 3 GiB.
pub const MAX_MEM_MIB: u32 = 3072;
/// Less than this and a Linux guest cannot boot.
pub const MIN_MEM_MIB: u32 = 16;
/// CIDs 0-2 are the hypervisor, the loopback and the host.
pub const MIN_GUEST_CID: u32 = 3;

/// Firecracker keys this VMM knows but does not implement: a configuration that asks for one
/// gets a clear refusal rather than a VM without it.
const UNSUPPORTED_KEYS: &[&str] = &["balloon", "logger", "metrics", "mmds-config", "cpu-config"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("`{key}`: {path}")]
    File {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Which CPUID features the guest is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
pub enum CpuTemplate {
    /// `Pvm` where the host's KVM is the emulated `kvm_pvm`, `None` elsewhere.
    Auto,
    /// What KVM supports, unmasked.
    None,
    /// Masks the features `kvm_pvm` cannot run (arch::cpuid::PVM_TEMPLATE).
    Pvm,
}

impl CpuTemplate {
    /// `Auto` made concrete for a host with `caps`; the others as they are.
    pub fn resolve(self, caps: &HostCaps) -> CpuTemplate {
        match self {
            CpuTemplate::Auto if caps.kvm_pvm => CpuTemplate::Pvm,
            CpuTemplate::Auto => CpuTemplate::None,
            template => template,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// An uncompressed ELF `vmlinux`.
    pub kernel_image_path: PathBuf,
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// `None`: [`crate::builder::default_boot_args`].
    #[serde(default)]
    pub boot_args: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    /// Accepted for Firecracker compatibility; only `false` is supported.
    #[serde(default)]
    pub smt: bool,
    #[serde(default = "auto")]
    pub cpu_template: CpuTemplate,
    /// Accepted for Firecracker compatibility; only `false` is supported (no snapshots yet).
    #[serde(default)]
    pub track_dirty_pages: bool,
}

fn auto() -> CpuTemplate {
    CpuTemplate::Auto
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: CpuTemplate::Auto,
            track_dirty_pages: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    /// Host side of the hybrid vsock: the host connects here; guest connections to port P
    /// go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    #[serde(default)]
    pub vsock_id: Option<String>,
}

/// A virtio-rng device fed from the host's `getrandom`. Without one a guest may wait long
/// for its random pool; with one, `crng init done` comes early in boot.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// Where the guest console goes; `None`: the VMM's stdout.
    #[serde(default)]
    pub serial_out_path: Option<PathBuf>,
}

/// A virtio-net device on a host tap. Rate limiters (Firecracker's `rx_rate_limiter`,
/// `tx_rate_limiter`) are not supported and refused as unknown fields.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's name in the configuration (the guest names its devices eth0, eth1...
    /// in this list's order).
    pub iface_id: String,
    /// The tap, opened by name in the VMM's network namespace (and again on restore).
    pub host_dev_name: String,
    /// The guest's MAC address; `None`: the guest driver picks a random one.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub entropy: Option<Entropy>,
    #[serde(default)]
    pub serial: Option<Serial>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
}

impl VmConfig {
    /// Parses a Firecracker-style configuration file, without validating it.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        VmConfig::from_json(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses, without validating; the error names the key (`drives[1].path_on_host: ...`).
    pub fn from_json(text: &str) -> Result<VmConfig, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(object) = value.as_object() {
            if let Some(key) = UNSUPPORTED_KEYS.iter().find(|k| object.contains_key(**k)) {
                return Err(format!("`{key}`: not supported by this VMM"));
            }
        }
        serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
            path if path == "." => e.inner().to_string(),
            path => format!("`{path}`: {}", e.inner()),
        })
    }

    /// Checks ranges, files and the relations between entries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.boot_source.validate()?;
        self.machine_config.validate()?;
        self.validate_devices()
    }

    /// Checks the drives, vsock and network interfaces, and the relations between them.
    pub fn validate_devices(&self) -> Result<(), ConfigError> {
        self.validate_drives()?;
        self.validate_vsock()?;
        self.validate_network_interfaces()
    }
}

impl BootSource {
    /// The kernel and initrd are files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_file("boot-source.kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            require_file("boot-source.initrd_path", initrd)?;
        }
        Ok(())
    }
}

impl MachineConfig {
    /// Ranges, and no feature this VMM lacks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let machine = self;
        if !(1..=MAX_VCPUS).contains(&machine.vcpu_count) {
            let message = format!("{} is out of range 1..={MAX_VCPUS}", machine.vcpu_count);
            return Err(invalid("machine-config.vcpu_count", message));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&machine.mem_size_mib) {
            let message = format!(
                "{} is out of range {MIN_MEM_MIB}..={MAX_MEM_MIB}",
                machine.mem_size_mib
            );
            return Err(invalid("machine-config.mem_size_mib", message));
        }
        if machine.smt {
            return Err(invalid("machine-config.smt", "true is not supported"));
        }
        if machine.track_dirty_pages {
            return Err(invalid(
                "machine-config.track_dirty_pages",
                "true is not supported",
            ));
        }
        Ok(())
    }
}

impl VmConfig {
    fn validate_drives(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut roots = 0;
        for (index, drive) in self.drives.iter().enumerate() {
            let key = |field: &str| format!("drives[{index}].{field}");
            if drive.drive_id.is_empty() || !ids.insert(drive.drive_id.as_str()) {
                let message = format!("{:?} is empty or not unique", drive.drive_id);
                return Err(invalid(key("drive_id"), message));
            }
            require_file(&key("path_on_host"), &drive.path_on_host)?;
            roots += usize::from(drive.is_root_device);
            if roots > 1 {
                return Err(invalid(key("is_root_device"), "only one drive can be root"));
            }
        }
        Ok(())
    }

    fn validate_vsock(&self) -> Result<(), ConfigError> {
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < MIN_GUEST_CID {
                let message = format!(
                    "{} is reserved; use {MIN_GUEST_CID} or more",
                    vsock.guest_cid
                );
                return Err(invalid("vsock.guest_cid", message));
            }
            let parent = vsock
                .uds_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                return Err(invalid("vsock.uds_path", "its directory does not exist"));
            }
        }
        Ok(())
    }

    fn validate_network_interfaces(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut taps = HashSet::new();
        let mut macs = HashSet::new();
        for (index, iface) in self.network_interfaces.iter().enumerate() {
            let key = |field: &str| format!("network-interfaces[{index}].{field}");
            if iface.iface_id.is_empty() || !ids.insert(iface.iface_id.as_str()) {
                let message = format!("{:?} is empty or not unique", iface.iface_id);
                return Err(invalid(key("iface_id"), message));
            }
            let name = &iface.host_dev_name;
            tap::check_name(name)
                .map_err(|why| invalid(key("host_dev_name"), format!("{name:?}: {why}")))?;
            // A tap carries one interface: a second open of it would fail at boot.
            if !taps.insert(name.as_str()) {
                let message = format!("tap {name:?} is already used by another interface");
                return Err(invalid(key("host_dev_name"), message));
            }
            if let Some(mac) = iface.guest_mac {
                if mac.is_multicast() {
                    let message = format!("{mac} is a multicast address");
                    return Err(invalid(key("guest_mac"), message));
                }
                if !macs.insert(mac) {
                    let message = format!("{mac} is already used by another interface");
                    return Err(invalid(key("guest_mac"), message));
                }
            }
        }
        Ok(())
    }
}

fn require_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(invalid(key, format!("{} is not a file", path.display()))),
        Err(source) => Err(ConfigError::File {
            key: key.to_owned(),
            path: path.to_owned(),
            source,
        }),
    }
}

impl VmConfig {
    /// Makes every host path absolute, relative ones taken from `base` (the directory the
    /// `vmm` was started in, as Firecracker reads them): a path then means the same after the
    /// jail's `pivot_root`, and in a snapshot restored from another directory.
    pub fn make_paths_absolute(&mut self, base: &Path) {
        let absolute = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        absolute(&mut self.boot_source.kernel_image_path);
        if let Some(initrd) = &mut self.boot_source.initrd_path {
            absolute(initrd);
        }
        for drive in &mut self.drives {
            absolute(&mut drive.path_on_host);
        }
        if let Some(vsock) = &mut self.vsock {
            absolute(&mut vsock.uds_path);
        }
        if let Some(out) = self
            .serial
            .as_mut()
            .and_then(|s| s.serial_out_path.as_mut())
        {
            absolute(out);
        }
    }
}

/// The configuration the flags describe: a `--config-file`, with any other flags
/// overriding or adding to it, validated, its CPU template resolved for a host with `caps`.
/// Relative paths, in the file or the flags, are taken from `base` (see
/// [`VmConfig::make_paths_absolute`]).
pub fn load(flags: &VmFlags, caps: &HostCaps, base: &Path) -> Result<VmConfig, ConfigError> {
    let file = flags
        .config_file
        .as_deref()
        .map(|path| VmConfig::from_file(&base.join(path)))
        .transpose()?;
    let mut config = flags.apply(file)?;
    config.make_paths_absolute(base);
    config.validate()?;
    let template = &mut config.machine_config.cpu_template;
    *template = template.resolve(caps);
    Ok(config)
}
