//! The event store on bad days, through the real `lambda-local`: a full disk (a small tmpfs the
//! test mounts), damaged store files, bodies that are not UTF-8, and a thousand 1 MiB events
//! waiting at a restart. Nothing acknowledged is lost or run twice, nothing panics, memory stays
//! bounded.

use integration_tests::peers::Peer;
use integration_tests::server::LocalServer;
use integration_tests::{host_binary, resident_kib, skip, wait_until, workspace_root};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EVENT: (&str, &str) = ("X-Amz-Invocation-Type", "Event");

fn start(store: &Path, extra: &[&str]) -> Option<LocalServer> {
    let mut args = vec!["--event-store", store.to_str().unwrap()];
    args.extend_from_slice(extra);
    LocalServer::start_quiet(&Peer::BootstrapLibrary.launch()?, &args)
}

fn finished(logs: &[String], id: &str) -> bool {
    logs.iter()
        .any(|l| l.starts_with(&format!("REPORT RequestId: {id}")))
}

fn started(logs: &[String], id: &str) -> usize {
    logs.iter()
        .filter(|l| l.starts_with(&format!("START RequestId: {id} ")))
        .count()
}

/// A tmpfs of `size` mounted on a fresh directory for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip!(return None; "{test}: mounting a small tmpfs to fill needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs: {status}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A full disk refuses new events with a 5xx before any 202, while events accepted before it
/// run and are marked done all the same; once space returns the store works again without a
/// restart, and a restart runs none of the events that already ran.
#[test]
fn a_full_disk_refuses_events_until_space_returns_and_nothing_runs_twice() {
    let Some(tmpfs) = Tmpfs::mount("a full disk", "4m") else {
        return;
    };
    let store = tmpfs.path().join("events");
    let Some(mut server) = start(&store, &[]) else {
        return;
    };
    let mut accepted = Vec::new();
    let send = |server: &LocalServer, body: &str| server.invoke_raw(body.as_bytes(), &[EVENT]);
    // These run while the disk is full.
    for _ in 0..3 {
        let reply = send(&server, r#"{"action":"sleep","ms":300}"#);
        assert_eq!(reply.status, 202, "{}", reply.text());
        accepted.push(reply.id());
    }
    let filler = tmpfs.fill();
    // Larger than what is left of the last page the store's file has.
    let pad = "r".repeat(64 * 1024);
    for n in 0..5 {
        let reply = send(&server, &format!(r#"{{"refused":{n},"pad":"{pad}"}}"#));
        assert_eq!(reply.status, 500, "{}", reply.text());
        assert_eq!(reply.json()["Type"], "Service", "{}", reply.text());
        assert!(reply.text().contains("No space left"), "{}", reply.text());
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let logs = server.logs();
            accepted.iter().all(|id| finished(&logs, id))
        }),
        "the events accepted before the disk filled did not all run"
    );
    std::fs::remove_file(filler).unwrap();
    for n in 0..5 {
        let reply = send(&server, &format!(r#"{{"after":{n}}}"#));
        assert_eq!(reply.status, 202, "{}", reply.text());
        accepted.push(reply.id());
    }
    assert!(wait_until(Duration::from_secs(30), || {
        let logs = server.logs();
        accepted.iter().all(|id| finished(&logs, id))
    }));
    server.assert_echo(&json!({"still": "serving"}));
    let first = server.logs();
    server.terminate(Duration::from_secs(10)).expect("stopped");

    let Some(second) = start(&store, &[]) else {
        return;
    };
    second.assert_echo(&json!({"restarted": true}));
    let logs = second.logs();
    assert!(
        !logs.iter().any(|l| l.starts_with("rapid: resuming")),
        "events were resumed: {logs:#?}"
    );
    for id in &accepted {
        assert_eq!(started(&first, id), 1, "{id}");
        assert_eq!(started(&logs, id), 0, "{id} ran again after the restart");
    }
}

/// Accepts `count` events while the function is busy, kills the server with SIGKILL before any
/// of them ran, and returns their ids.
fn accept_then_kill(store: &Path, count: usize, event: &str) -> Option<Vec<String>> {
    let mut server = start(store, &["--timeout", "900"])?;
    // A long one first keeps the rest waiting (at the restart it times out at 3 s).
    let busy = server.invoke_raw(br#"{"action":"sleep","ms":600000}"#, &[EVENT]);
    assert_eq!(busy.status, 202, "{}", busy.text());
    server.wait_for_log(Duration::from_secs(10), |l| l.starts_with("START"));
    let ids = (0..count)
        .map(|_| {
            let reply = server.invoke_raw(event.as_bytes(), &[EVENT]);
            assert_eq!(reply.status, 202, "{}", reply.text());
            reply.id()
        })
        .collect();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    server.terminate(Duration::from_secs(10));
    assert_eq!(server.count_logs("START"), 1, "only the busy one ran");
    Some(ids)
}

/// `lambda-local` on `store`, expected to refuse to start: its stderr.
fn refused_start(store: &Path) -> Option<String> {
    let launch = Peer::BootstrapLibrary.launch()?;
    let output = Command::new(host_binary("lambda-local"))
        .arg("--runtime")
        .arg(&launch.runtime)
        .arg("--event-store")
        .arg(store)
        .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Some(stderr)
}

fn segment(store: &Path) -> PathBuf {
    store.join("events-1.log")
}

/// A store file cut to nothing is not a new store: the start is refused, naming the file and
/// what to do.
#[test]
fn a_zero_length_store_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let Some(_) = accept_then_kill(&store, 5, r#"{"n":1}"#) else {
        return;
    };
    std::fs::write(segment(&store), b"").unwrap();
    let Some(stderr) = refused_start(&store) else {
        return;
    };
    assert!(
        stderr.contains(&segment(&store).display().to_string())
            && stderr.contains("empty (0 bytes)")
            && stderr.contains("Move it out of"),
        "{stderr}"
    );
}

/// A store cut short in its last record keeps every whole event, runs them, and says what it
/// removed; a byte damaged inside a record costs that record only, and the start says so.
#[test]
fn a_truncated_or_damaged_store_runs_what_is_intact_and_says_what_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let Some(ids) = accept_then_kill(&store, 20, r#"{"action":"sleep","ms":1}"#) else {
        return;
    };
    let path = segment(&store);
    let mut bytes = std::fs::read(&path).unwrap();
    // Cut in the middle of the last record, and damage one byte of the body of the tenth.
    bytes.truncate(bytes.len() - 5);
    // (The first record is the busy event's.)
    let tenth = nth_record(&bytes, 11);
    bytes[tenth + 40] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();

    let Some(server) = start(&store, &[]) else {
        return;
    };
    let resumed = server.wait_for_log(Duration::from_secs(10), |l| {
        l.starts_with("rapid: resuming")
    });
    // The busy one, and the 20 less the cut and the damaged ones.
    assert!(resumed.contains("resuming 19 "), "{resumed}");
    let all_but = |logs: &[String]| {
        ids[..ids.len() - 1]
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != 9)
            .all(|(_, id)| finished(logs, id))
    };
    assert!(wait_until(Duration::from_secs(60), || all_but(
        &server.logs()
    )));
    drop(server);
    // The damage was said on stderr, which the quiet server keeps to itself: start once more
    // and read it from the store's own report there.
    let launch = Peer::BootstrapLibrary.launch().unwrap();
    let mut child = Command::new(host_binary("lambda-local"))
        .arg("--runtime")
        .arg(&launch.runtime)
        .arg("--event-store")
        .arg(&store)
        .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // The cut was removed at the first restart; the damaged record is still there, and said.
    assert!(
        first.contains("was damaged")
            && first.contains("1 damaged stretch")
            && first.contains(&path.display().to_string()),
        "{first}"
    );
}

/// Where the `n`th record (from 1) of a segment starts.
fn nth_record(segment: &[u8], n: usize) -> usize {
    const MARKER: [u8; 4] = [0xFE, 0xFF, 0xEE, 0x01];
    let mut found = 0;
    for at in 0..segment.len() - 4 {
        if segment[at..at + 4] == MARKER {
            found += 1;
            if found == n {
                return at;
            }
        }
    }
    panic!("no record {n}");
}

/// A body that is not UTF-8 (a JSON string with raw bytes in it, which the endpoint lets
/// through, as Lambda does) reaches the function byte for byte after a stay in the store.
#[test]
fn a_body_that_is_not_utf8_comes_out_of_the_store_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let body: &[u8] = b"{\"raw\":\"\xff\xfe\x80\xc3\x28\xed\xa0\x80\"}";
    let script = workspace_root().join("local/tests/runtimes/echo.sh");
    let server = |keep: bool| {
        let binary = integration_tests::require(host_binary("lambda-local"), "lambda-local")?;
        let mut command = Command::new(binary);
        command
            .args(["--runtime", "/bin/sh", "--arg"])
            .arg(&script)
            .arg("--task-root")
            .arg(script.parent().unwrap())
            .arg("--event-store")
            .arg(&store)
            .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"]);
        if keep {
            command
                .arg("--env")
                .arg(format!("ECHO_KEEP_DIR={}", kept.display()));
        }
        Some(LocalServer::from_command(command, "lambda-local", false))
    };
    let Some(mut first) = server(false) else {
        return;
    };
    // The runtime is busy, so the event waits; the server dies before it runs.
    let busy_body = r#"{"action":"sleep","s":"30"}"#;
    let busy = integration_tests::server::send_raw(
        &first.invoke_addr,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{busy_body}",
            proto::invoke_api::INVOKE_PATH,
            busy_body.len()
        )
        .as_bytes(),
    );
    first.wait_for_log(Duration::from_secs(10), |l| l.starts_with("START"));
    let reply = first.invoke_raw(body, &[EVENT]);
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.id();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    first.terminate(Duration::from_secs(10));
    drop(busy);

    let Some(second) = server(true) else { return };
    let report = second.report_for_within(&id, Duration::from_secs(30));
    assert!(!report.contains("Status: error"), "{report}");
    assert_eq!(std::fs::read(kept.join(&id)).unwrap(), body);
}

/// A thousand 1 MiB events waiting in the store at a restart: only their ids are read at
/// start, their bodies as they run, so the server's resident memory stays within its bound
/// (64 MiB of bodies held) instead of growing with what the store holds; and every one runs.
#[test]
fn a_thousand_stored_1_mib_events_keep_memory_bounded_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events");
    let pad = "p".repeat((1 << 20) - 64);
    let event = format!(r#"{{"action":"sleep","ms":0,"pad":"{pad}"}}"#);
    let Some(ids) = accept_then_kill(&store, 1000, &event) else {
        return;
    };
    let Some(server) = start(&store, &[]) else {
        return;
    };
    let pid = server.pid();
    let mut most = 0;
    let all_ran = wait_until(Duration::from_secs(600), || {
        most = most.max(resident_kib(pid));
        let logs = server.logs();
        ids.iter().all(|id| finished(&logs, id))
    });
    let lost = ids
        .iter()
        .filter(|id| !finished(&server.logs(), id))
        .count();
    assert!(all_ran, "{lost} of 1000 stored events did not run");
    println!("resident at most {most} KiB while 1000 stored 1 MiB events ran");
    assert!(
        most <= 192 * 1024,
        "{most} KiB resident while the stored events ran"
    );
}

/// Records for a failure destination on a full disk are not lost: each event stays stored and
/// its record is tried again, with a log line, until space returns; no temporary file is left.
#[test]
fn a_full_failure_destination_keeps_every_record_until_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("a full failure destination", "1m") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let destination = tmpfs.path().join("failed");
    let args = [
        "--on-failure-dir",
        destination.to_str().unwrap(),
        "--async-retry-delay",
        "0.1",
        "--maximum-retry-attempts",
        "0",
    ];
    let Some(server) = start(&store.path().join("events"), &args) else {
        return;
    };
    let filler = tmpfs.fill();
    let ids: Vec<String> = (0..20)
        .map(|n| {
            let body = format!(r#"{{"action":"error","message":"full {n}"}}"#);
            let reply = server.invoke_raw(body.as_bytes(), &[EVENT]);
            assert_eq!(reply.status, 202, "{}", reply.text());
            reply.id()
        })
        .collect();
    let refused = |logs: &[String], id: &str| {
        logs.iter().any(|l| {
            l.starts_with(&format!(
                "rapid: async invoke {id}: RetriesExhausted; cannot write"
            )) && l.contains("trying again")
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let logs = server.logs();
            ids.iter().all(|id| refused(&logs, id))
        }),
        "not every record was refused and kept: {:#?}",
        server.logs()
    );
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !names(&destination).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names(&destination)
    );
    std::fs::remove_file(filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || ids
            .iter()
            .all(|id| destination.join(format!("{id}.json")).exists())),
        "records missing after space returned: {:?}",
        names(&destination)
    );
    for id in &ids {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(destination.join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(record["requestContext"]["requestId"], id.as_str());
        assert_eq!(started(&server.logs(), id), 1, "{id} ran once");
    }
    assert_eq!(
        names(&destination).len(),
        ids.len(),
        "{:?}",
        names(&destination)
    );
    println!(
        "refused writes logged: {}",
        server
            .logs()
            .iter()
            .filter(|l| l.contains("cannot write"))
            .count()
    );
}
