//! Builds real images with the `build-rootfs` binary and checks them with independent tools:
//! GNU cpio (list and extract), our cpio reader, and e2fsprogs for ext4.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use integration_tests::ok_or_skip;
use integration_tests::wait_until;
use proto::FunctionConfig;
use rootfs::cpio::{self, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

fn canonical_config() -> Vec<u8> {
    FunctionConfig::from_json(CONFIG_JSON.as_bytes())
        .unwrap()
        .to_canonical_json()
}

#[test]
fn cpio_lists_and_extracts_as_expected() {
    let bins = ok_or_skip!(binaries());
    ok_or_skip!(tools(&[("cpio", "cpio")]));
    let fixture = fixture(&bins.static_exe);
    let output = run_ok(&mut build_command(&fixture, &bins.static_exe, "echo.cpio"));
    let image = fixture.out_dir.join("echo.cpio");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        image.to_str().unwrap()
    );
    let expected = expected_tree(&bins.static_exe, &canonical_config());
    let bytes = fs::read(&image).unwrap();
    assert_eq!(&bytes[..6], b"070701");
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(
        fs::metadata(&image).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // Our reader: every header field.
    let entries = cpio::read_archive(&bytes).unwrap();
    let names: Vec<String> = entries.iter().map(|e| format!("/{}", e.name)).collect();
    let expected_names: Vec<&str> = expected.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, expected_names);
    for (i, (entry, want)) in entries.iter().zip(&expected).enumerate() {
        let context = &want.path;
        assert_eq!(
            entry.ino as usize,
            i + 1,
            "{context}: sequential inode numbers"
        );
        assert_eq!((entry.uid, entry.gid), (0, 0), "{context}");
        assert_eq!(entry.mtime, 0, "{context}: mtime without SOURCE_DATE_EPOCH");
        assert_eq!(entry.dev, (0, 0), "{context}");
        assert_eq!(entry.perm(), want.perm, "{context}");
        match &want.kind {
            Kind::Dir => {
                assert_eq!(entry.file_type(), S_IFDIR, "{context}");
                assert_eq!(entry.nlink, 2, "{context}");
                assert!(entry.data.is_empty(), "{context}");
            }
            Kind::File(data) => {
                assert_eq!(entry.file_type(), S_IFREG, "{context}");
                assert_eq!(entry.nlink, 1, "{context}");
                assert!(&entry.data == data, "{context}: contents differ");
            }
            Kind::Symlink(target) => {
                assert_eq!(entry.file_type(), S_IFLNK, "{context}");
                assert_eq!(entry.data, target.as_bytes(), "{context}");
            }
            Kind::CharDevice(major, minor) => {
                assert_eq!(entry.file_type(), S_IFCHR, "{context}");
                assert_eq!(entry.rdev, (*major, *minor), "{context}");
            }
        }
    }

    // GNU cpio's listing: mode string, owner, size (or major, minor), name and link target.
    let listing = Command::new("cpio")
        .args(["-itvn", "--quiet"])
        .stdin(fs::File::open(&image).unwrap())
        .output()
        .unwrap();
    assert!(listing.status.success(), "cpio -t: {}", stderr(&listing));
    let lines: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(&expected) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], want.mode_string(), "{line}");
        assert_eq!((fields[2], fields[3]), ("0", "0"), "{line}");
        let (date, rest) = match want.kind {
            Kind::CharDevice(major, minor) => {
                assert_eq!(fields[4], format!("{major},"), "{line}");
                assert_eq!(fields[5], minor.to_string(), "{line}");
                (&fields[6..9], &fields[9..])
            }
            _ => {
                assert_eq!(fields[4], want.size().to_string(), "{line}");
                (&fields[5..8], &fields[8..])
            }
        };
        assert_eq!(date.join(" "), "Jan 1 1970", "{line}");
        let shown = rest.join(" ");
        let name = want.path.trim_start_matches('/');
        let expected_shown = match want.kind {
            Kind::Symlink(target) => format!("{name} -> {target}"),
            _ => name.to_owned(),
        };
        assert_eq!(shown, expected_shown, "{line}");
    }

    // GNU cpio's extraction: contents byte for byte, symlink targets, directories. The device
    // node is left out: creating it needs root.
    let extracted = tempfile::tempdir().unwrap();
    let status = Command::new("cpio")
        .args([
            "-idm",
            "--quiet",
            "--no-absolute-filenames",
            "-f",
            "dev/console",
        ])
        .current_dir(extracted.path())
        .stdin(fs::File::open(&image).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    for want in &expected {
        let path = extracted.path().join(want.path.trim_start_matches('/'));
        match &want.kind {
            Kind::Dir => assert!(path.is_dir(), "{}", want.path),
            Kind::File(data) => {
                assert!(&fs::read(&path).unwrap() == data, "{}: contents", want.path);
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o111 != 0, want.perm & 0o111 != 0, "{}", want.path);
            }
            Kind::Symlink(target) => {
                assert_eq!(
                    fs::read_link(&path).unwrap(),
                    Path::new(target),
                    "{}",
                    want.path
                )
            }
            Kind::CharDevice(..) => assert!(!path.exists()),
        }
    }
    // The config in the function directory is not function code.
    assert!(!extracted.path().join("var/task/function.json").exists());
}

/// Waits until a file written now gets a later mtime, in whole seconds (what the archives keep),
/// than `fixture`'s files: so a second fixture differs from it in time too.
fn wait_for_a_later_mtime(fixture: &Fixture) {
    let seconds = |path: &Path| {
        let modified = fs::metadata(path).and_then(|m| m.modified()).unwrap();
        modified.duration_since(UNIX_EPOCH).unwrap().as_secs()
    };
    let written = seconds(&fixture.function.join("function.json"));
    let probe = fixture.dir.path().join("clock-probe");
    let later = wait_until(Duration::from_secs(5), || {
        // A new file each time: its mtime is the file clock's now.
        let _ = fs::remove_file(&probe);
        fs::write(&probe, b"").unwrap();
        seconds(&probe) > written
    });
    assert!(later, "the file clock did not move on within 5 s");
    fs::remove_file(&probe).unwrap();
}

#[test]
fn builds_are_byte_identical() {
    let bins = ok_or_skip!(binaries());
    let first = fixture_with_order(&bins.static_exe, false);
    // Same inputs written in the opposite order, later, in another directory: other inode
    // numbers, readdir order and times.
    wait_for_a_later_mtime(&first);
    let second = fixture_with_order(&bins.static_exe, true);
    run_ok(&mut build_command(&first, &bins.static_exe, "a.cpio"));
    run_ok(&mut build_command(&second, &bins.static_exe, "b.cpio"));
    let a = fs::read(first.out_dir.join("a.cpio")).unwrap();
    let b = fs::read(second.out_dir.join("b.cpio")).unwrap();
    assert!(a == b, "two builds of the same inputs differ");

    // SOURCE_DATE_EPOCH sets every mtime and nothing else.
    run_ok(
        build_command(&first, &bins.static_exe, "c.cpio").env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    let c = fs::read(first.out_dir.join("c.cpio")).unwrap();
    assert_eq!(c.len(), a.len());
    let entries = cpio::read_archive(&c).unwrap();
    assert!(entries.iter().all(|e| e.mtime == 1_700_000_000));
    let bad = build_command(&first, &bins.static_exe, "d.cpio")
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("SECONDS"), "{}", stderr(&bad));
}

#[test]
fn library_entry_point_reports_what_it_built() {
    let bins = ok_or_skip!(binaries());
    let fixture = fixture(&bins.static_exe);
    let out = fixture.out_dir.join("lib.cpio");
    let report = rootfs::build(&rootfs::BuildOptions {
        init: bins.static_exe.clone(),
        bootstrap: bins.static_exe.clone(),
        function_dir: fixture.function.clone(),
        config: None,
        layers: fixture.layers.clone(),
        busybox: None,
        out: out.clone(),
        ext4: None,
        mtime: 0,
    })
    .unwrap();
    assert_eq!(report.config.function_name, "echo");
    assert_eq!(report.config.memory_mb, 256);
    assert_eq!(report.entries, expected_tree(&bins.static_exe, b"").len());
    assert_eq!(report.cpio_bytes, fs::metadata(&out).unwrap().len());
    // Only the output: no temporary files left beside it.
    assert_eq!(fs::read_dir(&fixture.out_dir).unwrap().count(), 1);
}

#[test]
fn print_config_shows_the_canonical_form() {
    let bins = ok_or_skip!(binaries());
    let fixture = fixture(&bins.static_exe);
    let output = run_ok(
        build_rootfs()
            .arg("--print-config")
            .arg("--function")
            .arg(&fixture.function),
    );
    assert_eq!(output.stdout, canonical_config());
}

/// `debugfs -R <request> <image>`, stdout.
fn debugfs(image: &Path, request: &str) -> String {
    let output = Command::new(find_tool("debugfs").unwrap())
        .args(["-R", request])
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "debugfs -R {request}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn ext4_image_matches_the_tree_and_is_reproducible() {
    let bins = ok_or_skip!(binaries());
    ok_or_skip!(tools(&[
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("fsck.ext4", "e2fsprogs"),
    ]));
    let first = fixture_with_order(&bins.static_exe, false);
    wait_for_a_later_mtime(&first);
    let second = fixture_with_order(&bins.static_exe, true);
    let image = first.out_dir.join("a.ext4");
    run_ok(
        build_command(&first, &bins.static_exe, "a.cpio")
            .arg("--ext4")
            .arg(&image),
    );
    run_ok(
        build_command(&second, &bins.static_exe, "b.cpio")
            .arg("--ext4")
            .arg(second.out_dir.join("b.ext4")),
    );
    let a = fs::read(&image).unwrap();
    let b = fs::read(second.out_dir.join("b.ext4")).unwrap();
    assert!(a == b, "two ext4 builds of the same inputs differ");

    let fsck = Command::new(find_tool("fsck.ext4").unwrap())
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.ext4 -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        stderr(&fsck)
    );

    // `ls -l` of /var/task: modes, owners, sizes, times.
    let expected = expected_tree(&bins.static_exe, &canonical_config());
    let listing = debugfs(&image, "ls -l /var/task");
    let mut seen = BTreeMap::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        // inode, mode (octal), (links), uid, gid, size, date, time, name
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields[8..].join(" ");
        if name == "." || name == ".." {
            continue;
        }
        let mode = u32::from_str_radix(fields[1], 8).unwrap();
        assert_eq!((fields[3], fields[4]), ("0", "0"), "{line}");
        assert_eq!(fields[6], "1-Jan-1970", "{line}");
        seen.insert(
            format!("/var/task/{name}"),
            (mode, fields[5].parse::<usize>().unwrap()),
        );
    }
    let expected_task: BTreeMap<String, (u32, usize)> = expected
        .iter()
        .filter(|e| e.path.starts_with("/var/task/") && e.path[10..].find('/').is_none())
        .map(|e| {
            let type_bits = match e.kind {
                Kind::Dir => 0o040000,
                Kind::File(_) => 0o100000,
                Kind::Symlink(_) => 0o120000,
                Kind::CharDevice(..) => 0o020000,
            };
            let size = if e.kind == Kind::Dir { 4096 } else { e.size() };
            (e.path.clone(), (type_bits | e.perm, size))
        })
        .collect();
    assert_eq!(seen, expected_task);

    // The whole tree, dumped back out: contents, targets and modes.
    let dump = tempfile::tempdir().unwrap();
    debugfs(&image, &format!("rdump / {}", dump.path().display()));
    let root = dump.path();
    for want in &expected {
        let path = root.join(want.path.trim_start_matches('/'));
        let context = &want.path;
        match &want.kind {
            // rdump drops the sticky bit; /tmp's is checked with stat below.
            Kind::Dir => {
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, want.perm & 0o777, "{context}");
            }
            Kind::File(data) => {
                assert!(&fs::read(&path).unwrap() == data, "{context}: contents");
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o7777, want.perm, "{context}");
            }
            Kind::Symlink(target) => {
                assert_eq!(
                    fs::read_link(&path).unwrap(),
                    Path::new(target),
                    "{context}"
                )
            }
            // devtmpfs provides /dev/console on an ext4 root.
            Kind::CharDevice(..) => assert!(fs::symlink_metadata(&path).is_err(), "{context}"),
        }
    }
    let tmp = debugfs(&image, "stat /tmp");
    assert!(tmp.contains("Type: directory    Mode:  01777"), "{tmp}");
    let stat = debugfs(&image, "stat /etc/lambda/function.json");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    for field in ["ctime", "atime", "mtime", "crtime"] {
        assert!(
            stat.contains(&format!("{field}: 0x00000000:00000000")),
            "{field} in {stat}"
        );
    }
}

#[test]
fn busybox_gives_the_image_a_shell_and_core_tools() {
    let bins = ok_or_skip!(binaries());
    ok_or_skip!(tools(&[("busybox", "busybox-static")]));
    let busybox = find_tool("busybox").unwrap();
    let fixture = fixture(&bins.static_exe);
    let out = fixture.out_dir.join("shell.cpio");
    let options = |busybox: PathBuf| rootfs::BuildOptions {
        init: bins.static_exe.clone(),
        bootstrap: bins.static_exe.clone(),
        function_dir: fixture.function.clone(),
        config: None,
        layers: Vec::new(),
        busybox: Some(busybox),
        out: out.clone(),
        ext4: None,
        mtime: 0,
    };
    rootfs::build(&options(busybox.clone())).unwrap();
    let entries = cpio::read_archive(&fs::read(&out).unwrap()).unwrap();
    let entry = |name: &str| entries.iter().find(|e| e.name == name);
    let binary = entry("bin/busybox").expect("bin/busybox in the image");
    assert_eq!(binary.file_type(), S_IFREG);
    assert_eq!(binary.data, fs::read(&busybox).unwrap());
    for applet in ["bin/sh", "bin/cat", "bin/sed", "bin/mktemp", "bin/head"] {
        let link = entry(applet).unwrap_or_else(|| panic!("{applet} missing"));
        assert_eq!(link.file_type(), S_IFLNK, "{applet}");
        assert_eq!(link.data, b"/bin/busybox", "{applet}");
    }

    // A dynamic "busybox" is refused like a dynamic init, and nothing is written.
    fs::remove_file(&out).unwrap();
    let err = rootfs::build(&options(bins.dynamic_exe.clone())).unwrap_err();
    assert!(format!("{err:#}").contains("busybox"), "{err:#}");
    assert!(!out.exists());
}
