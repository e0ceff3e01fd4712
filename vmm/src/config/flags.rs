//! The command-line form of a VM configuration.

use super::{
    invalid, BootSource, ConfigError, CpuTemplate, Drive, Entropy, NetworkInterface, Serial,
    VmConfig, Vsock,
};
use std::path::PathBuf;

/// VM flags. With `--config-file`, the others override or add to the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmFlags {
    /// A Firecracker-style JSON configuration: boot-source, machine-config, drives, vsock,
    /// entropy, serial, network-interfaces.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// The guest kernel, an uncompressed ELF vmlinux (boot-source.kernel_image_path).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// An initramfs (boot-source.initrd_path).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (boot-source.boot_args) [default: one for the CPU template].
    #[arg(long)]
    pub boot_args: Option<String>,
    /// vCPUs, 1-32 (machine-config.vcpu_count) [default: 1].
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest RAM in MiB, 16-3072 (machine-config.mem_size_mib) [default: 128].
    #[arg(long)]
    pub mem_mib: Option<u32>,
    /// CPUID features shown to the guest (machine-config.cpu_template) [default: auto].
    #[arg(long, value_enum)]
    pub cpu_template: Option<CpuTemplate>,
    /// A drive: `path=FILE[,id=NAME][,root][,ro]`. Repeatable; ids default to drive0, drive1...
    #[arg(long = "drive", value_name = "SPEC")]
    pub drives: Vec<String>,
    /// Host socket of a hybrid vsock device (vsock.uds_path).
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID, 3 or more (vsock.guest_cid).
    #[arg(long, default_value_t = 3)]
    pub vsock_cid: u32,
    /// Attach a virtio-rng device (entropy).
    #[arg(long)]
    pub entropy: bool,
    /// Write the guest console to this file instead of stdout (serial.serial_out_path).
    #[arg(long)]
    pub serial_out: Option<PathBuf>,
    /// A network interface on a host tap: `tap=NAME[,mac=MAC][,id=NAME]`. Repeatable; ids
    /// default to eth0, eth1... (network-interfaces).
    #[arg(long = "net", value_name = "SPEC")]
    pub nets: Vec<String>,
}

impl VmFlags {
    /// `file` with the flags applied; without a file, `--kernel` is required.
    pub fn apply(&self, file: Option<VmConfig>) -> Result<VmConfig, ConfigError> {
        let mut config = match file {
            Some(config) => config,
            None => {
                let kernel = self.kernel.clone().ok_or_else(|| {
                    invalid(
                        "boot-source.kernel_image_path",
                        "give --kernel or --config-file",
                    )
                })?;
                VmConfig {
                    boot_source: BootSource {
                        kernel_image_path: kernel,
                        initrd_path: None,
                        boot_args: None,
                    },
                    machine_config: Default::default(),
                    drives: Vec::new(),
                    vsock: None,
                    entropy: None,
                    serial: None,
                    network_interfaces: Vec::new(),
                }
            }
        };
        let boot = &mut config.boot_source;
        if let Some(kernel) = &self.kernel {
            boot.kernel_image_path = kernel.clone();
        }
        if let Some(initrd) = &self.initrd {
            boot.initrd_path = Some(initrd.clone());
        }
        if let Some(args) = &self.boot_args {
            boot.boot_args = Some(args.clone());
        }
        let machine = &mut config.machine_config;
        if let Some(vcpus) = self.vcpus {
            machine.vcpu_count = vcpus;
        }
        if let Some(mem) = self.mem_mib {
            machine.mem_size_mib = mem;
        }
        if let Some(template) = self.cpu_template {
            machine.cpu_template = template;
        }
        for spec in &self.drives {
            let index = config.drives.len();
            config.drives.push(parse_drive(spec, index)?);
        }
        if let Some(uds_path) = &self.vsock_uds {
            config.vsock = Some(Vsock {
                guest_cid: self.vsock_cid,
                uds_path: uds_path.clone(),
                vsock_id: None,
            });
        }
        if self.entropy {
            config.entropy = Some(Entropy {});
        }
        if let Some(path) = &self.serial_out {
            config.serial = Some(Serial {
                serial_out_path: Some(path.clone()),
            });
        }
        for spec in &self.nets {
            let index = config.network_interfaces.len();
            config.network_interfaces.push(parse_net(spec, index)?);
        }
        Ok(config)
    }
}

/// `path=FILE[,id=NAME][,root][,ro]`.
fn parse_drive(spec: &str, index: usize) -> Result<Drive, ConfigError> {
    let key = format!("--drive {spec}");
    let mut drive = Drive {
        drive_id: format!("drive{index}"),
        path_on_host: PathBuf::new(),
        is_root_device: false,
        is_read_only: false,
    };
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("path", path)) if !path.is_empty() => drive.path_on_host = path.into(),
            Some(("id", id)) if !id.is_empty() => drive.drive_id = id.into(),
            None if part == "root" => drive.is_root_device = true,
            None if part == "ro" => drive.is_read_only = true,
            _ => {
                let message =
                    format!("unknown or empty part {part:?}; want path=FILE[,id=NAME][,root][,ro]");
                return Err(invalid(key, message));
            }
        }
    }
    if drive.path_on_host.as_os_str().is_empty() {
        return Err(invalid(key, "path=FILE is missing"));
    }
    Ok(drive)
}

/// `tap=NAME[,mac=MAC][,id=NAME]`.
fn parse_net(spec: &str, index: usize) -> Result<NetworkInterface, ConfigError> {
    let key = format!("--net {spec}");
    let mut iface = NetworkInterface {
        iface_id: format!("eth{index}"),
        host_dev_name: String::new(),
        guest_mac: None,
    };
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => iface.host_dev_name = name.into(),
            Some(("id", id)) if !id.is_empty() => iface.iface_id = id.into(),
            Some(("mac", mac)) => {
                let mac = mac
                    .parse()
                    .map_err(|e| invalid(key.clone(), format!("{e}")))?;
                iface.guest_mac = Some(mac);
            }
            _ => {
                let message =
                    format!("unknown or empty part {part:?}; want tap=NAME[,mac=MAC][,id=NAME]");
                return Err(invalid(key, message));
            }
        }
    }
    if iface.host_dev_name.is_empty() {
        return Err(invalid(key, "tap=NAME is missing"));
    }
    Ok(iface)
}
