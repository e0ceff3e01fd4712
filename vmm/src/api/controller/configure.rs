//! The pre-boot configuration requests: each piece is checked as it comes, against the others
//! already given, and kept for `InstanceStart`.

use super::{config_error, open_console, refuse, Controller};
use crate::api::types::{LoggerConfig, MachineConfigUpdate, MetricsConfig};
use crate::api::ApiResponse;
use crate::config::{
    BootSource, Drive, Entropy, MachineConfig, NetworkInterface, Serial, VmConfig, Vsock,
};
use std::path::{Path, PathBuf};

impl Controller {
    pub(super) fn set_machine_config(&mut self, config: MachineConfig) -> ApiResponse {
        if let Err(e) = config.validate() {
            return config_error(&e);
        }
        self.config.machine_config = config;
        self.boot_configured = true;
        ApiResponse::no_content()
    }

    pub(super) fn patch_machine_config(&mut self, update: &MachineConfigUpdate) -> ApiResponse {
        let mut config = self.config.machine_config.clone();
        update.apply(&mut config);
        self.set_machine_config(config)
    }

    pub(super) fn set_boot_source(&mut self, boot: BootSource) -> ApiResponse {
        if let Err(e) = boot.validate() {
            return config_error(&e);
        }
        self.config.boot_source = Some(boot);
        self.boot_configured = true;
        ApiResponse::no_content()
    }

    /// Checks the devices as they would be with `change` made, and keeps them if they pass.
    fn change_devices(&mut self, change: impl FnOnce(&mut VmConfig)) -> ApiResponse {
        let mut candidate = self.vm_config(BootSource {
            kernel_image_path: PathBuf::new(),
            initrd_path: None,
            boot_args: None,
        });
        change(&mut candidate);
        if let Err(e) = candidate.validate_devices() {
            return config_error(&e);
        }
        self.config.drives = candidate.drives;
        self.config.vsock = candidate.vsock;
        self.config.entropy = candidate.entropy;
        self.config.network_interfaces = candidate.network_interfaces;
        self.boot_configured = true;
        ApiResponse::no_content()
    }

    /// A `PUT` of an existing ID replaces that device, in its place.
    pub(super) fn set_drive(&mut self, drive: Drive) -> ApiResponse {
        self.change_devices(|config| {
            match config
                .drives
                .iter_mut()
                .find(|d| d.drive_id == drive.drive_id)
            {
                Some(existing) => *existing = drive,
                None => config.drives.push(drive),
            }
        })
    }

    pub(super) fn set_network_interface(&mut self, iface: NetworkInterface) -> ApiResponse {
        self.change_devices(|config| {
            let existing = config
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == iface.iface_id);
            match existing {
                Some(existing) => *existing = iface,
                None => config.network_interfaces.push(iface),
            }
        })
    }

    pub(super) fn set_vsock(&mut self, vsock: Vsock) -> ApiResponse {
        self.change_devices(|config| config.vsock = Some(vsock))
    }

    pub(super) fn set_entropy(&mut self, entropy: Entropy) -> ApiResponse {
        self.change_devices(|config| config.entropy = Some(entropy))
    }

    pub(super) fn set_serial(&mut self, serial: Serial) -> ApiResponse {
        if let Some(path) = &serial.serial_out_path {
            if let Err(e) = open_console(Some(path)) {
                return refuse(format!("serial_out_path {}: {e}", path.display()));
            }
        }
        self.config.serial = Some(serial);
        ApiResponse::no_content()
    }

    pub(super) fn set_logger(&mut self, logger: LoggerConfig) -> ApiResponse {
        if logger.module.is_some() {
            return refuse("logger.module: filtering by module is not supported by this VMM");
        }
        let level = match logger.level.as_deref().map(parse_level).transpose() {
            Ok(level) => level,
            Err(message) => return refuse(message),
        };
        let configured = logging::configure(
            level,
            logger.log_path.as_deref(),
            logger.show_level,
            logger.show_log_origin,
        );
        if let Err(e) = configured {
            let path = logger.log_path.as_deref().unwrap_or(Path::new(""));
            return refuse(format!("logger.log_path {}: {e}", path.display()));
        }
        self.config.logger = Some(logger);
        ApiResponse::no_content()
    }

    pub(super) fn set_metrics(&mut self, metrics: MetricsConfig) -> ApiResponse {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics.metrics_path);
        match opened {
            Ok(file) => {
                self.metrics = Some(file);
                self.config.metrics = Some(metrics);
                ApiResponse::no_content()
            }
            Err(e) => refuse(format!(
                "metrics.metrics_path {}: {e}",
                metrics.metrics_path.display()
            )),
        }
    }
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    match text.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warning" | "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        "off" => Ok(log::LevelFilter::Off),
        _ => Err(format!(
            "logger.level {text:?}: want Error, Warning, Info, Debug, Trace or Off"
        )),
    }
}
