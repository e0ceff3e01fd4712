//! Snapshot and restore on real `/dev/kvm`, with a tiny guest that counts: a snapshot taken
//! while it runs, restored in a fresh `vmm` process, goes on with the next number; corrupt,
//! truncated and foreign snapshots are refused before anything runs.

mod common;

use common::{guest, vmm, vmm_command};
use integration_tests::require_kvm;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `vmm` whose console lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = vmm_command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vmm");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Lines as they come; a partial last line (the VM stopped mid-line) comes at EOF.
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if sender.send(std::mem::take(&mut line)).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until `count` complete lines have been printed.
    fn wait_lines(&mut self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.iter().filter(|l| l.ends_with('\n')).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("only {:?} after 60 s", self.seen),
            }
        }
    }

    /// Waits for the process to end; returns its exit code, all its stdout and its stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status.code(), self.seen.concat(), stderr)
    }

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0);
    }
}

/// The counter values of `text`'s complete `tick MEM REG` lines; both copies must agree.
fn ticks(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.starts_with("tick "))
        .map(|l| {
            let fields: Vec<u64> = l["tick ".len()..]
                .split_whitespace()
                .map(|f| u64::from_str_radix(f, 16).unwrap())
                .collect();
            assert_eq!(fields.len(), 2, "{l:?}");
            assert_eq!(
                fields[0], fields[1],
                "memory and register counters differ: {l:?}"
            );
            fields[0]
        })
        .collect()
}

/// Boots the counter guest with a drive and an entropy device (made again on restore), lets it
/// count to 3 or more, and snapshots it into a new directory.
fn counted_snapshot(name: &str) -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let disk = dir.with_extension("disk");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let kernel = guest("counter");
    let drive = format!("path={},ro", disk.display());
    let mut vm = Running::start(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--boot-args",
        "x",
        "--entropy",
        "--drive",
        &drive,
        "--snapshot-dir",
        dir.to_str().unwrap(),
    ]);
    vm.wait_lines(3);
    vm.signal(libc::SIGUSR1);
    let (code, output, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("snapshot written to"), "{stderr}");
    (dir, output)
}

#[test]
fn a_restored_guest_goes_on_counting_in_a_new_process() {
    require_kvm!();
    let (dir, before) = counted_snapshot("snapshot-counter");
    assert_eq!(
        std::fs::metadata(dir.join("memory")).unwrap().len(),
        128 << 20
    );

    // Twice from the same snapshot: the memory file is mapped private, so the first restore's
    // writes do not leak into the second.
    for _ in 0..2 {
        let mut vm = Running::start(&["--restore-from", dir.to_str().unwrap()]);
        vm.wait_lines(3);
        vm.signal(libc::SIGKILL);
        let (_, after, stderr) = vm.finish();
        // The console, before and after, reads as one run: the line the snapshot cut is
        // finished by the restored guest, and no number is skipped or repeated.
        let all = ticks(&format!("{before}{after}"));
        assert!(all.len() >= 6, "{before:?} + {after:?} ({stderr})");
        let expected: Vec<u64> = (1..=all.len() as u64).collect();
        assert_eq!(all, expected, "{before:?} + {after:?}");
    }
}

#[test]
fn corrupt_truncated_and_foreign_snapshots_are_refused() {
    require_kvm!();
    let (dir, _) = counted_snapshot("snapshot-bad");
    let state = std::fs::read(dir.join("state")).unwrap();
    let variant = |name: &str, state: &[u8], memory_len: Option<u64>| {
        let bad = dir.with_file_name(format!("snapshot-bad-{name}"));
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("state"), state).unwrap();
        std::fs::copy(dir.join("memory"), bad.join("memory")).unwrap();
        if let Some(len) = memory_len {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(bad.join("memory"))
                .unwrap();
            file.set_len(len).unwrap();
        }
        let output = vmm(&["--restore-from", bad.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name}: the guest ran");
        stderr
    };
    let mut flipped = state.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    assert!(variant("flipped", &flipped, None).contains("checksum mismatch"));
    assert!(variant("truncated", &state[..state.len() - 100], None).contains("truncated"));
    assert!(variant("empty", &[], None).contains("not a snapshot state file"));
    let mut version = state.clone();
    version[8..12].copy_from_slice(&99u32.to_le_bytes());
    assert!(variant("version", &version, None).contains("format version 99"));
    let short_memory = variant("memory", &state, Some(4096));
    assert!(
        short_memory.contains("the state says guest memory is"),
        "{short_memory}"
    );
    let missing = vmm(&["--restore-from", "/no/such/snapshot"]);
    assert_eq!(missing.status.code(), Some(1));
    // The whole cause chain: what was done, on which file, and the system's reason.
    let missing = String::from_utf8_lossy(&missing.stderr);
    assert!(
        missing.contains("restoring /no/such/snapshot: /no/such/snapshot/state: No such file"),
        "{missing}"
    );
    // One bit flipped in the memory file: the manifest's CRC-32 tells, before anything runs.
    let damaged = dir.with_file_name("snapshot-bad-damaged-memory");
    let _ = std::fs::remove_dir_all(&damaged);
    std::fs::create_dir_all(&damaged).unwrap();
    for file in ["state", "state.manifest.json", "memory"] {
        std::fs::copy(dir.join(file), damaged.join(file)).unwrap();
    }
    let mut memory = std::fs::read(damaged.join("memory")).unwrap();
    let middle = memory.len() / 2;
    memory[middle] ^= 0x10;
    std::fs::write(damaged.join("memory"), &memory).unwrap();
    let output = vmm(&["--restore-from", damaged.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "the guest ran");
    assert!(stderr.contains("the memory file is damaged"), "{stderr}");
    // The devices are made again from what they were made of: a drive that is gone is an error.
    std::fs::remove_file(dir.with_extension("disk")).unwrap();
    let no_drive = variant("no-drive", &state, None);
    assert!(no_drive.contains("drive drive0"), "{no_drive}");
}

/// The u64 at guest address `addr` in a snapshot's memory file.
fn guest_u64(snapshot: &Path, addr: u64) -> u64 {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(snapshot.join("memory")).unwrap();
    file.seek(SeekFrom::Start(addr)).unwrap();
    let mut bytes = [0u8; 8];
    file.read_exact(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// Runs `vmm args` until its console has `lines` complete lines, then snapshots it into `dir`
/// (SIGUSR1).
fn snapshot_after(args: &[&str], dir: &Path, lines: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--snapshot-dir", dir.to_str().unwrap()]);
    let mut vm = Running::start(&all);
    vm.wait_lines(lines);
    vm.signal(libc::SIGUSR1);
    let (code, _, stderr) = vm.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn user_mode_and_its_exceptions_go_on_after_a_restore() {
    require_kvm!();
    let kernel = guest("user_mode");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (first, second) = (tmp.join("snapshot-user-1"), tmp.join("snapshot-user-2"));
    let boot = ["--kernel", kernel.to_str().unwrap(), "--boot-args", "x"];
    // The banner, then two lines from the exception handler: user mode and its exceptions ran.
    snapshot_after(&boot, &first, 3);
    let (user, exceptions) = (guest_u64(&first, 0x30_0000), guest_u64(&first, 0x30_0100));
    assert!(
        user > 0 && exceptions > 0,
        "user {user}, exceptions {exceptions}"
    );
    // Restored in a fresh process and snapshotted again: both counters moved on.
    // Two lines printed by the restored guest: at least 1024 more exceptions, each after a
    // round in user mode.
    let restore = ["--restore-from", first.to_str().unwrap()];
    snapshot_after(&restore, &second, 2);
    let (user_after, exceptions_after) =
        (guest_u64(&second, 0x30_0000), guest_u64(&second, 0x30_0100));
    assert!(
        user_after > user,
        "user mode stopped: {user} then {user_after}"
    );
    assert!(
        exceptions_after > exceptions,
        "exceptions stopped: {exceptions} then {exceptions_after}"
    );
}
