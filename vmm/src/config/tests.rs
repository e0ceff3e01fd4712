use super::*;
use clap::Parser;
use std::io::Write;

/// A kernel-shaped file the validator can find.
fn kernel() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"\x7fELF").unwrap();
    file
}

/// `config::load` on a host without `kvm_pvm`.
fn load(flags: &VmFlags) -> Result<VmConfig, ConfigError> {
    super::load(flags, &HostCaps::default(), Path::new("/"))
}

fn parse_err(json: &str) -> String {
    VmConfig::from_json(json).unwrap_err()
}

fn validate_err(json: &str) -> String {
    VmConfig::from_json(json)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string()
}

#[test]
fn firecracker_config_parses_with_defaults() {
    let kernel = kernel();
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{k}", "boot_args": "console=ttyS0"}},
            "drives": [{{"drive_id": "rootfs", "path_on_host": "{k}", "is_root_device": true,
                         "is_read_only": true}}],
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}},
            "vsock": {{"guest_cid": 3, "uds_path": "/tmp/v.sock"}},
            "entropy": {{}}}}"#,
        k = kernel.path().display()
    );
    let config = VmConfig::from_json(&json).unwrap();
    config.validate().unwrap();
    assert_eq!(config.machine_config.vcpu_count, 2);
    assert_eq!(config.machine_config.cpu_template, CpuTemplate::Auto);
    assert_eq!(config.drives[0].drive_id, "rootfs");
    assert!(config.entropy.is_some());
    assert!(config.serial.is_none());
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let e = parse_err(r#"{"boot-source": {"kernel_image_path": "k", "bogus": 1}}"#);
    assert!(e.starts_with("`boot-source.bogus`: unknown field"), "{e}");
    let e = parse_err(r#"{"boot-source": {"kernel_image_path": "k"}, "nope": {}}"#);
    assert!(e.contains("nope"), "{e}");
    let e = parse_err(
        r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "a", "path_on_host": "p", "is_root_device": false, "x": 1}]}"#,
    );
    assert!(e.starts_with("`drives[0].x`: unknown field"), "{e}");
}

#[test]
fn unsupported_firecracker_sections_are_refused_by_name() {
    let e = parse_err(r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {}}"#);
    assert_eq!(e, "`balloon`: not supported by this VMM");
}

fn with_interfaces(kernel: &tempfile::NamedTempFile, interfaces: &str) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "network-interfaces": [{interfaces}]}}"#,
        k = kernel.path().display()
    )
}

#[test]
fn network_interfaces_parse_as_firecracker_writes_them() {
    let kernel = kernel();
    let json = with_interfaces(
        &kernel,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"},
           {"iface_id": "eth1", "host_dev_name": "tap1"}"#,
    );
    let config = VmConfig::from_json(&json).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.network_interfaces,
        vec![
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])),
            },
            NetworkInterface {
                iface_id: "eth1".into(),
                host_dev_name: "tap1".into(),
                guest_mac: None,
            },
        ]
    );
    // Absent: no interface.
    let plain = with_interfaces(&kernel, "").replace(r#", "network-interfaces": []"#, "");
    assert!(VmConfig::from_json(&plain)
        .unwrap()
        .network_interfaces
        .is_empty());
}

#[test]
fn bad_network_interfaces_name_the_key_and_the_reason() {
    let kernel = kernel();
    let iface = |id: &str, tap: &str, mac: &str| {
        format!(r#"{{"iface_id": "{id}", "host_dev_name": "{tap}", "guest_mac": "{mac}"}}"#)
    };
    let good = iface("eth0", "tap0", "06:00:ac:10:00:02");

    // Caught by the parser, with the path of the bad value.
    let e = parse_err(&with_interfaces(
        &kernel,
        &iface("eth0", "tap0", "06:00:ac:10:00"),
    ));
    assert!(e.starts_with("`network-interfaces[0].guest_mac`"), "{e}");
    assert!(e.contains("not a MAC address"), "{e}");
    let e = parse_err(&with_interfaces(
        &kernel,
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {}}"#,
    ));
    assert!(
        e.starts_with("`network-interfaces[0].rx_rate_limiter`: unknown field"),
        "{e}"
    );
    let e = parse_err(&with_interfaces(&kernel, r#"{"iface_id": "eth0"}"#));
    assert!(e.contains("host_dev_name"), "{e}");

    // Caught by validation.
    let cases = [
        (
            iface("", "tap0", "06:00:ac:10:00:02"),
            "[0].iface_id",
            "empty or not unique",
        ),
        (
            iface("eth0", "", "06:00:ac:10:00:02"),
            "[0].host_dev_name",
            "empty",
        ),
        (
            iface("eth0", "a-sixteen-bytes!", "06:00:ac:10:00:02"),
            "[0].host_dev_name",
            "longer than 15 bytes",
        ),
        (
            iface("eth0", "tap/0", "06:00:ac:10:00:02"),
            "[0].host_dev_name",
            "'/'",
        ),
        (
            iface("eth0", "tap 0", "06:00:ac:10:00:02"),
            "[0].host_dev_name",
            "white space",
        ),
        (
            iface("eth0", "..", "06:00:ac:10:00:02"),
            "[0].host_dev_name",
            "not a usable",
        ),
        (
            iface("eth0", "tap0", "ff:ff:ff:ff:ff:ff"),
            "[0].guest_mac",
            "multicast",
        ),
        (
            format!("{good}, {}", iface("eth0", "tap1", "06:00:ac:10:00:03")),
            "[1].iface_id",
            "empty or not unique",
        ),
        (
            format!("{good}, {}", iface("eth1", "tap0", "06:00:ac:10:00:03")),
            "[1].host_dev_name",
            "already used",
        ),
        (
            format!("{good}, {}", iface("eth1", "tap1", "06:00:ac:10:00:02")),
            "[1].guest_mac",
            "already used",
        ),
    ];
    for (interfaces, key, why) in cases {
        let e = validate_err(&with_interfaces(&kernel, &interfaces));
        assert!(
            e.starts_with(&format!("`network-interfaces{key}`")),
            "{interfaces}: {e}"
        );
        assert!(e.contains(why), "{interfaces}: {e}");
    }
}

#[test]
fn wrong_types_and_bad_json_are_errors() {
    let e = parse_err(
        r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 1}}"#,
    );
    assert!(e.contains("machine-config.vcpu_count"), "{e}");
    let e = parse_err(
        r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 300, "mem_size_mib": 1}}"#,
    );
    assert!(e.contains("machine-config.vcpu_count"), "{e}");
    assert!(parse_err("{").contains("EOF"));
    assert!(parse_err("{}").contains("boot-source"));
    let e = parse_err(
        r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}}"#,
    );
    assert!(e.contains("cpu_template"), "{e}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let kernel = kernel();
    let k = kernel.path().display();
    let machine = |vcpus: u32, mem: u32| {
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": {mem}}}}}"#
        )
    };
    assert!(validate_err(&machine(0, 128)).starts_with("`machine-config.vcpu_count`"));
    assert!(validate_err(&machine(33, 128)).starts_with("`machine-config.vcpu_count`"));
    assert!(validate_err(&machine(1, 8)).starts_with("`machine-config.mem_size_mib`"));
    assert!(validate_err(&machine(1, 4096)).starts_with("`machine-config.mem_size_mib`"));
    let vsock = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "vsock": {{"guest_cid": 2, "uds_path": "/tmp/v"}}}}"#
    );
    assert!(validate_err(&vsock).starts_with("`vsock.guest_cid`"));
    let smt = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "machine-config": {{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}}}}"#
    );
    assert!(validate_err(&smt).starts_with("`machine-config.smt`"));
}

#[test]
fn missing_files_and_bad_drives_name_the_key() {
    let e = validate_err(r#"{"boot-source": {"kernel_image_path": "/no/such/vmlinux"}}"#);
    assert!(e.starts_with("`boot-source.kernel_image_path`"), "{e}");
    let kernel = kernel();
    let k = kernel.path().display();
    let drives = |a: &str, b: &str| {
        format!(r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "drives": [{a}, {b}]}}"#)
    };
    let drive = |id: &str, root: bool| {
        format!(r#"{{"drive_id": "{id}", "path_on_host": "{k}", "is_root_device": {root}}}"#)
    };
    let e = validate_err(&drives(&drive("a", false), &drive("a", false)));
    assert!(e.starts_with("`drives[1].drive_id`"), "{e}");
    let e = validate_err(&drives(&drive("a", true), &drive("b", true)));
    assert!(e.starts_with("`drives[1].is_root_device`"), "{e}");
    let missing = r#"{"drive_id": "m", "path_on_host": "/no/such/disk", "is_root_device": false}"#;
    let e = validate_err(&drives(&drive("a", true), missing));
    assert!(e.starts_with("`drives[1].path_on_host`"), "{e}");
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    vm: VmFlags,
}

fn flags(args: &[&str]) -> VmFlags {
    Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
        .unwrap()
        .vm
}

#[test]
fn flags_build_a_config() {
    let kernel = kernel();
    let k = kernel.path().to_str().unwrap();
    let drive = format!("path={k},id=root,root,ro");
    let config = load(&flags(&[
        "--kernel",
        k,
        "--vcpus",
        "2",
        "--mem-mib",
        "64",
        "--drive",
        &drive,
        "--entropy",
        "--cpu-template",
        "none",
        "--vsock-uds",
        "/tmp/x.sock",
        "--net",
        "tap=tap0,mac=06:00:ac:10:00:02",
        "--net",
        "id=uplink,tap=tap1",
    ]))
    .unwrap();
    assert_eq!(
        config.network_interfaces,
        vec![
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:ac:10:00:02".parse().unwrap()),
            },
            NetworkInterface {
                iface_id: "uplink".into(),
                host_dev_name: "tap1".into(),
                guest_mac: None,
            },
        ]
    );
    assert_eq!(config.machine_config.vcpu_count, 2);
    assert_eq!(config.machine_config.mem_size_mib, 64);
    assert_eq!(config.machine_config.cpu_template, CpuTemplate::None);
    assert_eq!(
        config.drives,
        vec![Drive {
            drive_id: "root".into(),
            path_on_host: k.into(),
            is_root_device: true,
            is_read_only: true
        }]
    );
    assert_eq!(config.vsock.unwrap().guest_cid, 3);
    assert!(config.entropy.is_some());
}

#[test]
fn flags_override_the_file() {
    let kernel = kernel();
    let k = kernel.path().display();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "machine-config": {{"vcpu_count": 4, "mem_size_mib": 512}}}}"#
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    let config = load(&flags(&["--config-file", path, "--mem-mib", "256"])).unwrap();
    assert_eq!(config.machine_config.vcpu_count, 4);
    assert_eq!(config.machine_config.mem_size_mib, 256);
    let e = load(&flags(&["--config-file", path, "--vcpus", "0"])).unwrap_err();
    assert!(
        e.to_string().starts_with("`machine-config.vcpu_count`"),
        "{e}"
    );
}

#[test]
fn bad_flags_are_errors() {
    let e = load(&flags(&[])).unwrap_err().to_string();
    assert!(e.contains("--kernel"), "{e}");
    let kernel = kernel();
    let k = kernel.path().to_str().unwrap();
    for bad in [
        "id=x",
        "path=",
        &format!("path={k},rw"),
        &format!("path={k},id="),
    ] {
        let e = load(&flags(&["--kernel", k, "--drive", bad]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`--drive "), "{bad}: {e}");
    }
    for (bad, why) in [
        ("mac=06:00:ac:10:00:02", "tap=NAME is missing"),
        ("tap=", "unknown or empty part"),
        ("tap=tap0,mac=06:00", "not a MAC address"),
        ("tap=tap0,speed=1", "unknown or empty part"),
        ("tap=this-is-far-too-long", "longer than 15 bytes"),
    ] {
        let e = load(&flags(&["--kernel", k, "--net", bad]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{bad}: {e}");
        assert!(
            e.starts_with("`--net ") || e.starts_with("`network-interfaces[0]"),
            "{bad}: {e}"
        );
    }
    let e = load(&flags(&["--config-file", "/no/such.json"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such.json"), "{e}");
}

#[test]
fn auto_resolves_from_the_host_caps_and_the_others_stay() {
    let pvm = HostCaps { kvm_pvm: true };
    let plain = HostCaps { kvm_pvm: false };
    assert_eq!(CpuTemplate::Auto.resolve(&pvm), CpuTemplate::Pvm);
    assert_eq!(CpuTemplate::Auto.resolve(&plain), CpuTemplate::None);
    assert_eq!(CpuTemplate::None.resolve(&pvm), CpuTemplate::None);
    assert_eq!(CpuTemplate::Pvm.resolve(&plain), CpuTemplate::Pvm);

    let kernel = kernel();
    let k = kernel.path().to_str().unwrap();
    let on_pvm = super::load(&flags(&["--kernel", k]), &pvm, Path::new("/")).unwrap();
    assert_eq!(on_pvm.machine_config.cpu_template, CpuTemplate::Pvm);
    assert_eq!(
        load(&flags(&["--kernel", k]))
            .unwrap()
            .machine_config
            .cpu_template,
        CpuTemplate::None
    );
}

#[test]
fn relative_paths_in_the_file_and_the_flags_are_taken_from_the_base() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vmlinux"), b"\x7fELF").unwrap();
    std::fs::write(dir.path().join("rootfs.ext4"), b"").unwrap();
    let json = r#"{
        "boot-source": {"kernel_image_path": "vmlinux"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true}],
        "vsock": {"guest_cid": 3, "uds_path": "v.sock"}
    }"#;
    std::fs::write(dir.path().join("vm.json"), json).unwrap();
    let flags = flags(&["--config-file", "vm.json", "--serial-out", "console.log"]);
    let config = super::load(&flags, &HostCaps::default(), dir.path()).unwrap();
    let base = dir.path();
    assert_eq!(config.boot_source.kernel_image_path, base.join("vmlinux"));
    assert_eq!(config.drives[0].path_on_host, base.join("rootfs.ext4"));
    assert_eq!(config.vsock.unwrap().uds_path, base.join("v.sock"));
    let serial = config.serial.and_then(|s| s.serial_out_path);
    assert_eq!(serial, Some(base.join("console.log")));
}
