//! Shared pieces of the image tests: tool checks that skip (or fail under CI), static test
//! binaries built with gcc, a function fixture, and the tree the image must contain.

#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether every tool (with the package that has it) is installed; `Err` names one that is not.
pub fn tools(tools: &[(&str, &str)]) -> Result<(), String> {
    for (tool, package) in tools {
        if find_tool(tool).is_none() {
            return Err(format!("{tool} not found (apt-get install {package})"));
        }
    }
    Ok(())
}

/// Test binaries: a static `true`, a dynamic one and a shared library, built with gcc.
pub struct Binaries {
    _dir: TempDir,
    pub static_exe: PathBuf,
    pub dynamic_exe: PathBuf,
    pub shared_lib: PathBuf,
    /// A shared library that needs nothing: no PT_INTERP, no DT_NEEDED, but no entry point.
    pub lone_lib: PathBuf,
    pub script: PathBuf,
}

/// Builds the binaries; `Err` says why not where gcc or its static libc is missing.
pub fn binaries() -> Result<Binaries, String> {
    tools(&[("gcc", "gcc libc6-dev")])?;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("true.c");
    fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let gcc = |args: &[&str], out: &str| {
        let out = dir.path().join(out);
        let status = Command::new("gcc")
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(&source)
            .output()
            .unwrap();
        (status.status.success(), out, status)
    };
    let (ok, static_exe, output) = gcc(&["-static", "-O2"], "true-static");
    if !ok {
        return Err(format!(
            "gcc -static failed, static libc missing? (apt-get install libc6-dev): {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let (ok, dynamic_exe, output) = gcc(&["-O2"], "true-dynamic");
    assert!(ok, "gcc: {}", String::from_utf8_lossy(&output.stderr));
    let (ok, lone_lib, output) = gcc(&["-shared", "-fPIC", "-nostdlib"], "liblone.so");
    assert!(ok, "gcc: {}", String::from_utf8_lossy(&output.stderr));
    // It must call into libc to get a DT_NEEDED entry (and no PT_INTERP, unlike an executable).
    let library = dir.path().join("lib.c");
    fs::write(
        &library,
        "#include <stdio.h>\nint f(void) { return puts(\"x\"); }\n",
    )
    .unwrap();
    let shared_lib = dir.path().join("libputs.so");
    let output = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shared_lib)
        .arg(&library)
        .output()
        .unwrap();
    let ok = output.status.success();
    assert!(ok, "gcc: {}", String::from_utf8_lossy(&output.stderr));
    let script = dir.path().join("script.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(&script, 0o755);
    Ok(Binaries {
        _dir: dir,
        static_exe,
        dynamic_exe,
        shared_lib,
        lone_lib,
        script,
    })
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    set_mode(path, mode);
}

/// A function directory, two layers and an output directory, under one temporary directory.
pub struct Fixture {
    pub dir: TempDir,
    pub function: PathBuf,
    pub layers: Vec<PathBuf>,
    pub out_dir: PathBuf,
}

pub const CONFIG_JSON: &str = r#"{"handler": "app.handler", "function_name": "echo",
    "memory_mb": 256, "environment": {"Z_LAST": "z", "A_FIRST": "a"}}"#;

/// The function files, written in the given order (tests reverse it to vary readdir order).
pub fn function_files(exe: &Path) -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        (
            "app.py",
            b"def handler(e, c):\n    return e\n".to_vec(),
            0o644,
        ),
        ("run", fs::read(exe).unwrap(), 0o755),
        // Odd host modes are normalized by the exec bit.
        ("bin/tool", b"#!/bin/sh\n".to_vec(), 0o700),
        ("data/blob", vec![0u8, 1, 2, 255], 0o600),
        ("data/empty", Vec::new(), 0o444),
        ("we\"ird name.txt", b"quoted".to_vec(), 0o664),
        ("..dots", b"not a parent".to_vec(), 0o644),
    ]
}

pub fn fixture(exe: &Path) -> Fixture {
    fixture_with_order(exe, false)
}

pub fn fixture_with_order(exe: &Path, reversed: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let function = dir.path().join("function");
    fs::create_dir(&function).unwrap();
    let mut files = function_files(exe);
    if reversed {
        files.reverse();
    }
    for (name, contents, mode) in &files {
        write(&function.join(name), contents, *mode);
    }
    fs::create_dir(function.join("empty-dir")).unwrap();
    symlink("app.py", function.join("link")).unwrap();
    symlink("../app.py", function.join("data/up")).unwrap();
    symlink("/opt/lib/a", function.join("abs")).unwrap();
    symlink("/tmp/cache", function.join("cache")).unwrap();
    fs::write(function.join("function.json"), CONFIG_JSON).unwrap();

    let layer1 = dir.path().join("layer1");
    write(&layer1.join("lib/a"), b"a from layer 1", 0o644);
    write(&layer1.join("lib/b"), b"b from layer 1", 0o755);
    write(&layer1.join("bin/x"), b"x", 0o755);
    let layer2 = dir.path().join("layer2");
    write(&layer2.join("lib/b"), b"b from layer 2", 0o644);
    write(&layer2.join("lib/c"), b"c", 0o644);
    symlink("../bin/x", layer2.join("lib/x")).unwrap();

    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    Fixture {
        dir,
        function,
        layers: vec![layer1, layer2],
        out_dir,
    }
}

/// What one image entry must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    CharDevice(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub path: String,
    pub perm: u32,
    pub kind: Kind,
}

impl Expected {
    /// `ls -l` style mode string, as `cpio -tv` prints it.
    pub fn mode_string(&self) -> String {
        let type_char = match self.kind {
            Kind::Dir => 'd',
            Kind::File(_) => '-',
            Kind::Symlink(_) => 'l',
            Kind::CharDevice(..) => 'c',
        };
        let mut s = String::from(type_char);
        for (i, c) in "rwxrwxrwx".chars().enumerate() {
            let bit = 0o400 >> i;
            s.push(if self.perm & bit != 0 { c } else { '-' });
        }
        if self.perm & 0o1000 != 0 {
            s.pop();
            s.push(if self.perm & 1 != 0 { 't' } else { 'T' });
        }
        s
    }

    pub fn size(&self) -> usize {
        match &self.kind {
            Kind::File(data) => data.len(),
            Kind::Symlink(target) => target.len(),
            Kind::Dir | Kind::CharDevice(..) => 0,
        }
    }
}

/// The whole image for [`fixture`], sorted as the builder sorts (bytewise by path).
pub fn expected_tree(exe: &Path, config: &[u8]) -> Vec<Expected> {
    let dir = |path: &str, perm| Expected {
        path: path.to_owned(),
        perm,
        kind: Kind::Dir,
    };
    let file = |path: &str, perm, data: Vec<u8>| Expected {
        path: path.to_owned(),
        perm,
        kind: Kind::File(data),
    };
    let link = |path: &str, target| Expected {
        path: path.to_owned(),
        perm: 0o777,
        kind: Kind::Symlink(target),
    };
    let binary = fs::read(exe).unwrap();
    let mut tree = vec![
        dir("/dev", 0o755),
        Expected {
            path: "/dev/console".to_owned(),
            perm: 0o600,
            kind: Kind::CharDevice(5, 1),
        },
        dir("/dev/pts", 0o755),
        dir("/etc", 0o755),
        dir("/etc/lambda", 0o755),
        file("/etc/lambda/function.json", 0o644, config.to_vec()),
        file("/init", 0o755, binary.clone()),
        dir("/opt", 0o755),
        dir("/opt/bin", 0o755),
        file("/opt/bin/x", 0o755, b"x".to_vec()),
        dir("/opt/lib", 0o755),
        file("/opt/lib/a", 0o644, b"a from layer 1".to_vec()),
        file("/opt/lib/b", 0o644, b"b from layer 2".to_vec()),
        file("/opt/lib/c", 0o644, b"c".to_vec()),
        link("/opt/lib/x", "../bin/x"),
        dir("/proc", 0o755),
        dir("/run", 0o755),
        dir("/sys", 0o755),
        dir("/tmp", 0o1777),
        dir("/var", 0o755),
        dir("/var/runtime", 0o755),
        file("/var/runtime/bootstrap", 0o755, binary),
        dir("/var/task", 0o755),
        link("/var/task/abs", "/opt/lib/a"),
        link("/var/task/cache", "/tmp/cache"),
        dir("/var/task/data", 0o755),
        link("/var/task/data/up", "../app.py"),
        dir("/var/task/empty-dir", 0o755),
        link("/var/task/link", "app.py"),
    ];
    for (name, contents, mode) in function_files(exe) {
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        tree.push(file(&format!("/var/task/{name}"), perm, contents));
        if let Some((parent, _)) = name.rsplit_once('/') {
            let parent = format!("/var/task/{parent}");
            if !tree.iter().any(|e| e.path == parent) {
                tree.push(dir(&parent, 0o755));
            }
        }
    }
    tree.sort_by(|a, b| a.path.cmp(&b.path));
    tree
}

pub fn build_rootfs() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_build-rootfs"));
    command.env_remove("SOURCE_DATE_EPOCH");
    command
}

/// `build-rootfs` with the fixture's inputs and `--out <out_dir>/<name>`.
pub fn build_command(fixture: &Fixture, exe: &Path, name: &str) -> Command {
    command(
        exe,
        exe,
        &fixture.function,
        &fixture.layers,
        &fixture.out_dir.join(name),
    )
}

/// `build-rootfs` with every input given.
pub fn command(
    init: &Path,
    bootstrap: &Path,
    function: &Path,
    layers: &[PathBuf],
    out: &Path,
) -> Command {
    let mut command = build_rootfs();
    command
        .arg("--init")
        .arg(init)
        .arg("--bootstrap")
        .arg(bootstrap)
        .arg("--function")
        .arg(function)
        .arg("--out")
        .arg(out);
    for layer in layers {
        command.arg("--layer").arg(layer);
    }
    command
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
