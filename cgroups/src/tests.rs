//! Real cgroups on this host. Where there are none to use, the tests skip with the reason,
//! except under CI, where a test that cannot run fails.

use super::*;
use integration_tests::{ok_or_skip, skip};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// The kind of server the tests' cgroups are named for.
const SERVER: &str = "cgroups-test";

/// Where the tests make their cgroups; `Err` says why there is nowhere.
fn cgroups() -> Result<Cgroups, String> {
    Cgroups::detect(SERVER).map_err(|why| format!("no cgroup to test with: {why}"))
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

use proc_info::is_alive as alive;

#[test]
fn a_setsid_child_dies_with_the_cgroup_and_nothing_is_left() {
    let cgroups = ok_or_skip!(cgroups());
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
    let cgroups = ok_or_skip!(cgroups());
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
    let me = Identity::of_this_process().unwrap();
    assert!(owner_alive(&format!("{me}-1")));
    // Our pid with another start time: a server that had our pid before us.
    assert!(!owner_alive(&format!("{}-1-1", std::process::id())));
    assert!(!owner_alive(&format!("{}-1-1", i32::MAX)));
    assert!(owner_alive("not-ours"));
    assert!(owner_alive(""));
    assert!(owner_alive(&format!("{me}")));
}

/// At start a server removes what a dead server of its kind left, and nothing of a live one's
/// or another kind's.
#[test]
fn a_dead_servers_cgroups_are_cleaned_up_and_no_others() {
    let cgroups = ok_or_skip!(cgroups());
    let ours = cgroups.create(64).unwrap();
    let me = Identity::of_this_process().unwrap();
    let dead = Identity {
        start_ticks: me.start_ticks + 1,
        ..me
    };
    let made = |name: String| {
        let dirs = cgroups.dirs(&name);
        for dir in dirs.all() {
            std::fs::create_dir(dir).unwrap();
        }
        dirs
    };
    let left = made(format!("{SERVER}-{dead}-1"));
    let other_kind = made(format!("{SERVER}x-{dead}-1"));
    assert_eq!(
        cgroups.clean_leftovers(),
        vec![format!("{SERVER}-{dead}-1")]
    );
    assert!(left.all().all(|dir| !dir.exists()));
    assert!(other_kind.all().all(|dir| dir.exists()));
    assert!(ours.dirs().all(Path::exists));
    assert!(other_kind.remove_within(Duration::from_secs(1)));
    assert!(ours.remove_within(Duration::from_secs(10)));
}

/// A process that joins the cgroup's directories is in it, and a CPU quota is set where the
/// host has the controller.
#[test]
fn a_process_joins_and_cpu_is_limited() {
    let cgroups = ok_or_skip!(cgroups());
    let limits = Limits {
        memory_bytes: 64 << 20,
        max_processes: 8,
        cpu: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
    };
    let cgroup = cgroups.create_with(&limits).unwrap();
    let pids = cgroup.dirs.list.last().unwrap();
    assert_eq!(
        std::fs::read_to_string(pids.join("pids.max"))
            .unwrap()
            .trim(),
        "8"
    );
    match (&cgroup.dirs.cpu, cgroups.version()) {
        (Some(cpu), Version::V1) => {
            let read = |f: &str| std::fs::read_to_string(cpu.join(f)).unwrap();
            assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read("cpu.cfs_period_us").trim(), "100000");
        }
        (Some(cpu), Version::V2) => {
            let max = std::fs::read_to_string(cpu.join("cpu.max")).unwrap();
            assert_eq!(max.trim(), "50000 100000");
        }
        (None, _) => assert!(!cgroups.has_cpu()),
    }
    // The child joins by itself, as a `vmm` entering its jail does: the test binary again,
    // running only `join_and_show`.
    let dirs: Vec<String> = cgroup.dirs().map(|d| d.display().to_string()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::join_and_show",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(JOIN_ENV, dirs.join("\n"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{shown}");
    let name = cgroup.path().file_name().unwrap().to_str().unwrap();
    let memberships = shown
        .lines()
        .filter(|l| l.ends_with(&format!("/{name}")))
        .count();
    assert_eq!(memberships, cgroup.dirs().count(), "{shown}");
    assert!(cgroup.remove_within(Duration::from_secs(10)));
}

/// The v2 kill (`cgroup.kill`) and removal, on the v2 hierarchy even where it has no
/// controllers to limit with (as on a host whose memory and pids are v1's).
#[test]
fn a_v2_kill_reaches_a_setsid_child() {
    let mounts = host::mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (Some(mount), Some(path)) = (host::v2_mount(&mounts), host::own_path(&own, None)) else {
        skip!("no cgroup v2 hierarchy here");
    };
    let dir = host::directory(mount, &path).join(format!("{SERVER}-v2-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        skip!("cannot make a v2 cgroup here: {e}");
    }
    let dirs = Dirs {
        version: Version::V2,
        list: vec![dir.clone()],
        freezer: None,
        cpu: None,
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

/// Where `join_and_show` finds the directories to join.
const JOIN_ENV: &str = "CGROUPS_TEST_JOIN";

/// A child process of `a_process_joins_and_cpu_is_limited`: joins the directories it is given
/// and prints its `/proc/self/cgroup`.
#[test]
#[ignore = "run by a_process_joins_and_cpu_is_limited in a process of its own"]
fn join_and_show() {
    let dirs = std::env::var(JOIN_ENV).expect("run by a_process_joins_and_cpu_is_limited");
    for dir in dirs.lines() {
        join(Path::new(dir)).unwrap();
    }
    print!("{}", std::fs::read_to_string("/proc/self/cgroup").unwrap());
}
