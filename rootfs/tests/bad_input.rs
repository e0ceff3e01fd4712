//! Each kind of bad input fails the build with a clear message and leaves nothing at the output
//! paths (no image, no temporary file).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use common::*;
use integration_tests::{ok_or_skip, skip};

/// Runs `command`, expects failure with every one of `needles` in stderr and an empty `out_dir`.
fn expect_failure(case: &str, mut command: Command, out_dir: &Path, needles: &[&str]) {
    let message = expect_failure_output(case, &mut command, out_dir, needles);
    assert!(
        message.lines().count() == 1,
        "{case}: expected a one-line error:\n{message}"
    );
}

/// Like [`expect_failure`], for clap's usage errors (several lines), and returns stderr.
fn expect_failure_output(
    case: &str,
    command: &mut Command,
    out_dir: &Path,
    needles: &[&str],
) -> String {
    let output = command.output().unwrap();
    let message = stderr(&output);
    assert!(!output.status.success(), "{case}: the build succeeded");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{case}: {needle:?} not in the error:\n{message}"
        );
    }
    let left: Vec<_> = fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{case}: left behind {left:?}");
    assert!(output.stdout.is_empty(), "{case}: printed an output path");
    message
}

/// A fresh fixture per case, changed by `setup`, built with `extra` arguments.
fn case(
    name: &str,
    exe: &Path,
    setup: impl FnOnce(&Fixture),
    extra: impl FnOnce(&Fixture, &mut Command),
    needles: &[&str],
) {
    let fixture = fixture(exe);
    setup(&fixture);
    let mut command = build_command(&fixture, exe, "image.cpio");
    extra(&fixture, &mut command);
    expect_failure(name, command, &fixture.out_dir, needles);
}

fn no_setup(_: &Fixture) {}
fn no_args(_: &Fixture, _: &mut Command) {}

fn set_config(fixture: &Fixture, json: &str) {
    fs::write(fixture.function.join("function.json"), json).unwrap();
}

#[test]
fn bad_function_directories() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    let with_function = |path: &'static str| {
        move |f: &Fixture, c: &mut Command| {
            let out = f.out_dir.join("image.cpio");
            *c = command(exe, exe, &f.dir.path().join(path), &f.layers, &out);
        }
    };
    case(
        "missing function dir",
        exe,
        no_setup,
        with_function("nope"),
        &["function directory", "nope", "No such file"],
    );
    case(
        "function dir is a file",
        exe,
        |f| fs::write(f.dir.path().join("file"), "x").unwrap(),
        with_function("file"),
        &["function directory", "is not a directory"],
    );
    case(
        "missing layer",
        exe,
        no_setup,
        |f, c| {
            c.arg("--layer").arg(f.dir.path().join("no-layer"));
        },
        &["layer", "no-layer", "No such file"],
    );
}

#[test]
fn non_static_binaries() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    let with = |init: &Path, bootstrap: &Path| {
        let (init, bootstrap) = (init.to_owned(), bootstrap.to_owned());
        move |f: &Fixture, c: &mut Command| {
            let out = f.out_dir.join("image.cpio");
            *c = command(&init, &bootstrap, &f.function, &f.layers, &out);
        }
    };
    case(
        "dynamic init",
        exe,
        no_setup,
        with(&bins.dynamic_exe, exe),
        &[
            "init binary",
            "dynamically linked",
            "ld-linux",
            "crt-static",
        ],
    );
    case(
        "shared library as bootstrap",
        exe,
        no_setup,
        with(exe, &bins.shared_lib),
        &["bootstrap binary", "dynamically linked", "libc.so"],
    );
    case(
        "library without dependencies as init",
        exe,
        no_setup,
        with(&bins.lone_lib, exe),
        &["init binary", "shared library (no entry point)"],
    );
    case(
        "script as bootstrap",
        exe,
        no_setup,
        with(exe, &bins.script),
        &["bootstrap binary", "is not an ELF executable"],
    );
    case(
        "missing init",
        exe,
        no_setup,
        with(Path::new("/nonexistent/init"), exe),
        &["init binary", "/nonexistent/init"],
    );
}

#[test]
fn escaping_and_unsupported_entries() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    case(
        "symlink escaping /var/task",
        exe,
        |f| symlink("../../etc/passwd", f.function.join("data/evil")).unwrap(),
        no_args,
        &["data/evil", "escapes /var/task", "/etc/passwd"],
    );
    case(
        "symlink to the task root's parent",
        exe,
        |f| symlink("..", f.function.join("parent")).unwrap(),
        no_args,
        &["parent", "escapes /var/task"],
    );
    case(
        "symlink escaping /opt",
        exe,
        |f| symlink("../var/task/app.py", f.layers[1].join("sneaky")).unwrap(),
        no_args,
        &["layer", "sneaky", "escapes /opt"],
    );
    case(
        "non-UTF-8 name",
        exe,
        |f| fs::write(f.function.join(OsStr::from_bytes(b"bad\xffname")), "x").unwrap(),
        no_args,
        &["not valid UTF-8"],
    );
    case(
        "non-UTF-8 symlink target",
        exe,
        |f| symlink(OsStr::from_bytes(b"t\xff"), f.function.join("lnk")).unwrap(),
        no_args,
        &["lnk", "symlink target is not valid UTF-8"],
    );
    case(
        "newline in a name",
        exe,
        |f| fs::write(f.function.join("two\nlines"), "x").unwrap(),
        no_args,
        &["control character"],
    );
    case(
        "socket",
        exe,
        |f| {
            // The listener's socket file stays after the listener is dropped.
            drop(UnixListener::bind(f.function.join("data/sock")).unwrap());
        },
        no_args,
        &[
            "data/sock",
            "is a socket",
            "only regular files, directories and symlinks",
        ],
    );
    if find_tool("mkfifo").is_some() {
        case(
            "fifo",
            exe,
            |f| {
                let status = Command::new("mkfifo")
                    .arg(f.layers[0].join("pipe"))
                    .status()
                    .unwrap();
                assert!(status.success());
            },
            no_args,
            &["layer", "pipe", "is a FIFO"],
        );
    }
}

#[test]
fn invalid_configs() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "memory out of range",
            r#"{"handler": "h", "memory_mb": 64}"#,
            &["`memory_mb` must be between 128 and 10240, got 64"],
        ),
        (
            "timeout out of range",
            r#"{"handler": "h", "timeout_secs": 901}"#,
            &["`timeout_secs`", "901"],
        ),
        (
            "unknown key",
            r#"{"handler": "h", "memory": 256}"#,
            &["unknown field `memory`"],
        ),
        (
            "missing handler",
            r#"{"memory_mb": 256}"#,
            &["missing field `handler`"],
        ),
        (
            "wrong type",
            r#"{"handler": "h", "tmp_size_mb": "big"}"#,
            &["`tmp_size_mb`", "invalid type"],
        ),
        (
            "reserved variable",
            r#"{"handler": "h", "environment": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}"#,
            &["`environment.AWS_LAMBDA_FUNCTION_NAME` is reserved"],
        ),
        ("not JSON", "handler = h", &["invalid function config"]),
        (
            "runtime not in the image",
            r#"{"handler": "h", "runtime": "/var/task/bootstrap"}"#,
            &["/var/task/bootstrap", "`runtime`", "is not in the image"],
        ),
        (
            "runtime not executable",
            r#"{"handler": "h", "runtime": "/var/task/app.py"}"#,
            &["/var/task/app.py", "is not executable"],
        ),
    ];
    for (name, json, needles) in cases {
        case(name, exe, |f| set_config(f, json), no_args, needles);
    }
    case(
        "missing config",
        exe,
        |f| fs::remove_file(f.function.join("function.json")).unwrap(),
        no_args,
        &[
            "cannot read function config",
            "function.json",
            "No such file",
        ],
    );
    case(
        "missing --config",
        exe,
        no_setup,
        |f, c| {
            c.arg("--config").arg(f.dir.path().join("other.json"));
        },
        &["other.json", "No such file"],
    );
}

/// A worker script whose `#!` interpreter is not in the image would fail every cold start
/// ("No such file or directory"): the build refuses it, naming what is missing. A worker whose
/// interpreter is there builds.
#[test]
fn workers_without_their_interpreter() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    let worker = |name: &'static str, first_line: &'static str| {
        move |f: &Fixture| {
            write(
                &f.function.join(name),
                format!("{first_line}\nrest of the worker\n").as_bytes(),
                0o755,
            );
            set_config(f, &format!(r#"{{"handler": "{name}"}}"#));
        }
    };
    case(
        "env without env",
        exe,
        worker("worker.py", "#!/usr/bin/env python3"),
        no_args,
        &[
            "worker.py needs /usr/bin/env, which the image lacks",
            "`#!/usr/bin/env python3`",
        ],
    );
    case(
        "sh without sh",
        exe,
        worker("worker.sh", "#!/bin/sh -eu"),
        no_args,
        &["worker.sh needs /bin/sh, which the image lacks"],
    );
    // The fixture's static executable as the interpreter: there, so the image builds.
    let fixture = fixture(exe);
    worker("worker.x", "#!/var/task/run --flag")(&fixture);
    let mut command = build_command(&fixture, exe, "image.cpio");
    run_ok(&mut command);
}

#[test]
fn bad_outputs() {
    let bins = ok_or_skip!(binaries());
    let exe = &bins.static_exe;
    case(
        "output inside the function directory",
        exe,
        no_setup,
        |f, c| {
            *c = command(
                exe,
                exe,
                &f.function,
                &f.layers,
                &f.function.join("image.cpio"),
            )
        },
        &["inside the input directory"],
    );
    case(
        "output directory missing",
        exe,
        no_setup,
        |f, c| {
            let out = f.dir.path().join("missing/image.cpio");
            *c = command(exe, exe, &f.function, &f.layers, &out);
        },
        &["cannot write", "missing/image.cpio"],
    );
    if find_tool("mkfs.ext4").is_some() {
        // The cpio is written first; a failing ext4 build must take it back.
        case(
            "ext4 image too small",
            exe,
            no_setup,
            |f, c| {
                c.args(["--ext4-size-mb", "1", "--ext4"])
                    .arg(f.out_dir.join("image.ext4"));
            },
            &["mkfs.ext4 failed", "is 1 MiB big enough?"],
        );
    } else {
        skip!("mkfs.ext4 not found (apt-get install e2fsprogs)");
    }
}

#[test]
fn usage_errors() {
    let out = tempfile::tempdir().unwrap();
    let mut command = build_rootfs();
    command
        .args(["--function", "/x", "--out"])
        .arg(out.path().join("a.cpio"));
    expect_failure_output("missing --init", &mut command, out.path(), &["--init"]);
    let mut command = build_rootfs();
    command
        .args([
            "--init",
            "/a",
            "--bootstrap",
            "/b",
            "--function",
            "/x",
            "--ext4-size-mb",
            "9",
        ])
        .arg("--out")
        .arg(out.path().join("a.cpio"));
    expect_failure_output("size without --ext4", &mut command, out.path(), &["--ext4"]);
}
