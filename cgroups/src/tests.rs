//! Real cgroups on this host. Where there are none to use, the tests say so and pass, except
//! under CI, where a test that cannot run fails.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// A test that cannot run here: under CI (`CI=true` or `1`) that fails it; elsewhere it is
/// skipped with the reason printed.
fn cannot_run(test: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: {why}");
    eprintln!("SKIPPED {test}: {why}");
}

fn cgroups(test: &str) -> Option<Cgroups> {
    match Cgroups::detect() {
        Ok(cgroups) => Some(cgroups),
        Err(why) => {
            cannot_run(test, &format!("no cgroup to test with: {why}"));
            None
        }
    }
}

/// A shell moved into `cgroup`, which runs `script` once it is told (one line on its stdin),
/// so that everything the script starts is born inside.
fn shell_inside(cgroup: &Cgroup, script: &str) -> std::process::Child {
    let mut shell = Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for mut procs in cgroup.procs_files().unwrap() {
        procs.write_all(shell.id().to_string().as_bytes()).unwrap();
    }
    shell.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    shell
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, s)| s.starts_with(" Z"))
    })
}

#[test]
fn a_setsid_child_dies_with_the_cgroup_and_nothing_is_left() {
    let Some(cgroups) = cgroups("setsid") else {
        return;
    };
    let cgroup = cgroups.create(128).unwrap();
    let dirs: Vec<PathBuf> = cgroup.dirs.all().cloned().collect();
    let mut shell = shell_inside(&cgroup, "setsid sleep 120 & echo $!; sleep 120");
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let orphan: u32 = line.trim().parse().unwrap();
    assert!(alive(orphan));
    assert!(cgroup.dirs.processes().len() >= 2, "{line}");

    cgroup.kill();
    let _ = shell.wait();
    assert!(cgroup.remove_within(Duration::from_secs(10)));
    assert!(!alive(orphan), "the setsid child survived");
    for dir in dirs {
        assert!(!dir.exists(), "{}", dir.display());
    }
}

#[test]
fn memory_is_limited_and_accounted() {
    let Some(cgroups) = cgroups("memory") else {
        return;
    };
    let cgroup = cgroups.create(32).unwrap();
    assert_eq!(cgroup.oom_kills(), 0);
    // `tail` keeps a line without end in memory: 100 MB of zeros is one such line.
    let mut shell = shell_inside(&cgroup, "head -c 100000000 /dev/zero | tail; echo $?");
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = shell.wait();
    assert_eq!(line.trim(), "137", "tail was killed (SIGKILL)");
    assert!(cgroup.oom_kills() >= 1);
    let peak = cgroup.peak_bytes().unwrap();
    assert!((24 << 20..=32 << 20).contains(&peak), "{peak}");
    assert_eq!(cgroup.process_limit_hits(), 0);
    assert!(cgroup.remove_within(Duration::from_secs(10)));
}

#[test]
fn leftovers_of_live_servers_are_kept_and_names_we_cannot_read_too() {
    assert!(owner_alive(&format!(
        "{PREFIX}{}-{}-1",
        std::process::id(),
        host::start_time(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap()
    )));
    // Our pid with another start time: a server that had our pid before us.
    assert!(!owner_alive(&format!("{PREFIX}{}-1-1", std::process::id())));
    assert!(!owner_alive(&format!("{PREFIX}{}-1-1", i32::MAX)));
    assert!(owner_alive("rapid-not-ours"));
    assert!(owner_alive("rapid-"));
}

/// The v2 kill (`cgroup.kill`) and removal, on the v2 hierarchy even where it has no
/// controllers to limit with (as on a host whose memory and pids are v1's).
#[test]
fn a_v2_kill_reaches_a_setsid_child() {
    let mounts = host::mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (Some(mount), Some(path)) = (host::v2_mount(&mounts), host::own_path(&own, None)) else {
        cannot_run(
            "a_v2_kill_reaches_a_setsid_child",
            "no cgroup v2 hierarchy here",
        );
        return;
    };
    let dir = host::directory(mount, &path).join(format!("{PREFIX}test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        cannot_run(
            "a_v2_kill_reaches_a_setsid_child",
            &format!("cannot make a v2 cgroup here: {e}"),
        );
        return;
    }
    let dirs = Dirs {
        version: Version::V2,
        list: vec![dir.clone()],
        freezer: None,
    };
    let mut shell = Command::new("sh")
        .args(["-c", "read go; setsid sleep 120 & echo $!; sleep 120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), shell.id().to_string()).unwrap();
    shell.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let orphan: u32 = line.trim().parse().unwrap();
    assert!(alive(orphan));
    assert!(dirs.remove_within(Duration::from_secs(10)));
    let _ = shell.wait();
    assert!(!alive(orphan), "the setsid child survived");
    assert!(!dir.exists());
}
