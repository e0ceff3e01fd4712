//! Many hosts as one platform (the `cluster` crate, `lambda-local --cluster`, `lambda-cluster`):
//! a real 3-node NATS JetStream cluster and local-mode hosts, each in a network namespace of its
//! own, started and stopped by `scripts/cluster.sh`. A function deployed once is served through
//! every host; a busy host forwards (the response the same bytes and headers, 6 MB each way);
//! the whole cluster full is Lambda's 429; a stopped (stale), a cut-off and a killed host get no
//! work, and a killed host fails only the invoke it ran; every accepted asynchronous event
//! reaches one outcome across a host's `kill -9`; sync invokes go on across a NATS server's
//! `kill -9`; a SnapStart snapshot taken on one microVM host is restored by another; bad URLs
//! and credentials fail at start.

use integration_tests::cluster::{echo_function, is_root, nats_server, TestCluster};
use integration_tests::server::Reply;
use integration_tests::{guest_artifact, host_binary, wait_for, wait_until};
use integration_tests::{require_kvm, skip, skip_unless};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const FUNCTION: &str = "echo";

/// One cluster at a time: each is three NATS servers and up to three hosts, on a small machine.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn one_cluster() -> MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// A name (at most 8 characters) and a /24 for test number `n`, unlike other runs'.
fn name_and_subnet(n: u32) -> (String, String) {
    let pid = std::process::id();
    (
        format!("lc{n}{}", pid % 100_000),
        format!("10.{}.{}", 200 + n, pid % 250),
    )
}

fn function_config() -> Value {
    json!({
        "function_name": FUNCTION,
        "handler": "echo",
        "timeout_secs": 120,
        "maximum_retry_attempts": 1,
        "maximum_event_age_secs": 900,
    })
}

/// A test's cluster and scratch directory; dropped in this order, the cluster first.
struct Setup {
    cluster: TestCluster,
    dir: tempfile::TempDir,
    _one: MutexGuard<'static, ()>,
}

fn start(n: u32, hosts: usize, max_concurrency: usize) -> Option<Setup> {
    let nats = nats_server()?;
    if !is_root() {
        skip!(return None; "network namespaces need root");
    }
    let one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let function = echo_function(dir.path(), &function_config());
    let (name, subnet) = name_and_subnet(n);
    let cluster = TestCluster::start(
        &name,
        &subnet,
        hosts,
        max_concurrency,
        &[&function],
        None,
        &nats,
    );
    // Every host has heard every other's heartbeat.
    let all_live = || (1..=hosts).all(|i| (1..=hosts).all(|j| i == j || cluster.sees_live(i, j)));
    assert!(
        wait_until(Duration::from_secs(30), all_live),
        "the hosts never all saw each other"
    );
    Some(Setup {
        cluster,
        dir,
        _one: one,
    })
}

/// Starts a `ms`-long invoke through host `i` and waits until that host is busy with it.
fn keep_busy(cluster: &TestCluster, i: usize, ms: u64) -> std::thread::JoinHandle<Reply> {
    let before = in_use(cluster, i);
    let busy = cluster.invoke_in_background(i, FUNCTION, json!({"action": "sleep", "ms": ms}));
    assert!(
        wait_until(Duration::from_secs(30), || in_use(cluster, i) > before),
        "host {i} never took the long invoke"
    );
    busy
}

/// The idle environments of the function host `i` knows host `other` has.
fn idle_seen(cluster: &TestCluster, i: usize, other: usize) -> u64 {
    let id = cluster.host_id(other);
    let status = cluster.status(i);
    let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
    hosts
        .iter()
        .find(|h| h["id"] == id.as_str())
        .and_then(|h| h["functions"][FUNCTION]["idle"].as_u64())
        .unwrap_or(0)
}

fn in_use(cluster: &TestCluster, i: usize) -> u64 {
    cluster.status(i)["host"]["in_use"].as_u64().unwrap_or(0)
}

/// The namespace the function ran in, for a `whoami` reply.
fn ran_in(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["netns"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn decoded_tail(reply: &Reply) -> String {
    use base64::Engine;
    let encoded = reply.header("X-Amz-Log-Result").expect("a log tail");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn any_host_serves_a_function_deployed_once_and_forwards_when_busy() {
    let Some(setup) = start(1, 3, 1) else {
        return;
    };
    let cluster = &setup.cluster;
    assert!(cluster.lambda_cluster(&["functions"]).starts_with("echo\t"));
    // The first invoke starts an environment where it arrives; after that, an invoke through
    // any host goes where that warm environment is, rather than cold-starting another.
    for i in 1..=3 {
        if i > 1 {
            assert!(wait_until(Duration::from_secs(10), || {
                idle_seen(cluster, i, 1) > 0
            }));
        }
        let reply = cluster.invoke(i, FUNCTION, &json!({"action": "whoami"}));
        assert_eq!(ran_in(&reply), cluster.host_netns(1), "through host {i}");
    }

    let busy_1 = keep_busy(cluster, 1, 20_000);
    let forwarded = cluster.invoke(1, FUNCTION, &json!({"action": "whoami"}));
    let elsewhere = ran_in(&forwarded);
    assert!(
        elsewhere == cluster.host_netns(2) || elsewhere == cluster.host_netns(3),
        "a busy host forwards: ran in {elsewhere}"
    );

    // A forwarded reply is what the host that ran it would have answered: status, body bytes
    // and Lambda's headers, the log tail included.
    let event = br#"{"action":"error","message":"the same either way"}"#;
    let tail = [("X-Amz-Log-Type", "Tail")];
    let local = cluster.invoke_with(2, FUNCTION, event, &tail);
    let remote = cluster.invoke_with(1, FUNCTION, event, &tail);
    for reply in [&local, &remote] {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let id = reply.id();
        let log = decoded_tail(reply);
        assert!(log.starts_with(&format!("START RequestId: {id} ")), "{log}");
        assert!(log.contains(&format!("\nEND RequestId: {id}\n")), "{log}");
        assert!(
            log.contains(&format!("\nREPORT RequestId: {id}\t")),
            "{log}"
        );
    }
    assert_eq!(remote.body, local.body);
    for header in [
        "Content-Type",
        "X-Amz-Function-Error",
        "X-Amz-Executed-Version",
    ] {
        assert_eq!(remote.header(header), local.header(header), "{header}");
    }
    let names = |reply: &Reply| {
        let mut names: Vec<String> = reply
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .filter(|n| n != "date" && n != "content-length")
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&remote), names(&local));

    // Lambda's 6 MB each way, whole through the cluster.
    let limit = proto::runtime_api::SYNC_PAYLOAD_LIMIT;
    let mut big = br#"{"pad":""#.to_vec();
    big.resize(limit - 2, b'a');
    big.extend_from_slice(br#""}"#);
    assert_eq!(big.len(), limit);
    let echoed = cluster.invoke_with(1, FUNCTION, &big, &[]);
    assert_eq!(echoed.status, 200, "{}", echoed.text());
    assert_eq!(echoed.function_error, None);
    assert!(echoed.body == big, "the 6 MB event came back whole");

    // With every environment of every host busy, the cluster is at its limit: Lambda's 429.
    let busy_2 = keep_busy(cluster, 2, 20_000);
    let busy_3 = keep_busy(cluster, 3, 20_000);
    let throttled = cluster.invoke(1, FUNCTION, &json!({"action": "whoami"}));
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    assert_eq!(
        throttled.header("X-Amzn-ErrorType"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        throttled.json(),
        json!({"Type": "User", "Message": "Rate Exceeded.", "Reason": "ConcurrentInvocationLimitExceeded"})
    );
    for busy in [busy_1, busy_2, busy_3] {
        let reply = busy.join().unwrap();
        assert_eq!(reply.json(), json!({"slept": 20_000}));
    }
}

#[test]
fn stale_cut_off_and_killed_hosts_get_no_work_and_a_kill_fails_only_its_invoke() {
    let Some(setup) = start(2, 3, 1) else {
        return;
    };
    let cluster = &setup.cluster;
    let whoami = json!({"action": "whoami"});

    // A stopped host's record goes stale, and it is never routed to: every invoke a busy
    // host forwards reaches the one live host, at once.
    let stopped = cluster.host_pid(3);
    signal(stopped, "STOP");
    assert!(
        wait_until(Duration::from_secs(30), || !cluster.sees_live(1, 3)),
        "host 1 never saw host 3's record go stale"
    );
    let busy = keep_busy(cluster, 1, 15_000);
    for _ in 0..3 {
        let reply = cluster.invoke(1, FUNCTION, &whoami);
        assert_eq!(ran_in(&reply), cluster.host_netns(2));
    }
    signal(stopped, "CONT");
    assert!(wait_until(Duration::from_secs(30), || cluster.sees_live(1, 3)));
    busy.join().unwrap();

    // A host cut off from NATS says so, stops taking forwarded work, and still serves its own
    // endpoint from the environments it has; back on the network it rejoins.
    let busy_1 = keep_busy(cluster, 1, 20_000);
    let busy_2 = keep_busy(cluster, 2, 20_000);
    let reply = cluster.invoke(3, FUNCTION, &whoami);
    assert_eq!(ran_in(&reply), cluster.host_netns(3));
    let subnet = name_and_subnet(2).1;
    cluster.in_host_netns(
        3,
        &[
            "nft",
            &format!("add table inet cut; add chain inet cut out {{ type filter hook output priority 0; }}; add rule inet cut out ip daddr {subnet}.1 tcp dport 4222-4224 drop"),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            cluster.status(3)["connected"] == false
                && cluster.host_log(3).contains("disconnected from NATS")
        }),
        "host 3 never said it was cut off"
    );
    assert!(wait_until(Duration::from_secs(30), || !cluster.sees_live(1, 3)));
    let reply = cluster.invoke(3, FUNCTION, &whoami);
    assert_eq!(ran_in(&reply), cluster.host_netns(3));
    // Hosts 1 and 2 busy, host 3 out of reach: the cluster is full, at once.
    let throttled = cluster.invoke(1, FUNCTION, &whoami);
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    cluster.in_host_netns(3, &["nft", "delete table inet cut"]);
    assert!(
        wait_until(Duration::from_secs(60), || cluster.status(3)["connected"]
            == true
            && cluster.sees_live(1, 3)),
        "host 3 never rejoined"
    );
    for busy in [busy_1, busy_2] {
        assert_eq!(busy.join().unwrap().status, 200);
    }

    // kill -9 of the host running a forwarded invoke: that invoke fails at once (Lambda's
    // ServiceException, never a hang), and the caller's retry runs on another host.
    let busy_1 = keep_busy(cluster, 1, 15_000);
    let busy_3 = keep_busy(cluster, 3, 15_000);
    let started = Instant::now();
    let doomed =
        cluster.invoke_in_background(1, FUNCTION, json!({"action": "sleep", "ms": 20_000}));
    assert!(wait_until(Duration::from_secs(30), || in_use(cluster, 2) == 1));
    signal(cluster.host_pid(2), "KILL");
    let failed = doomed.join().unwrap();
    eprintln!(
        "the invoke on the killed host failed {:.1} s after it started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(failed.header("X-Amzn-ErrorType"), Some("ServiceException"));
    assert!(failed.text().contains("lost"), "{}", failed.text());
    let retried = wait_for(Duration::from_secs(60), || {
        let reply = cluster.invoke(1, FUNCTION, &whoami);
        (reply.status == 200).then_some(reply)
    })
    .expect("a retry succeeds on a live host");
    let ran = ran_in(&retried);
    assert!(ran == cluster.host_netns(1) || ran == cluster.host_netns(3));
    for busy in [busy_1, busy_3] {
        assert_eq!(busy.join().unwrap().status, 200);
    }
}

#[test]
fn every_accepted_event_has_one_outcome_when_a_host_is_killed() {
    let Some(setup) = start(3, 3, 2) else {
        return;
    };
    let (cluster, dir) = (&setup.cluster, &setup.dir);
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let event_header = [("X-Amz-Invocation-Type", "Event")];
    let mut succeeding = HashSet::new();
    let mut failing = HashSet::new();
    for k in 0..200 {
        // The first 60 go through every host; then host 2 is killed while it runs events.
        if k == 60 {
            assert!(wait_until(Duration::from_secs(30), || {
                cluster.host_log(2).contains("\nSTART RequestId")
            }));
            signal(cluster.host_pid(2), "KILL");
        }
        let host = if k < 60 { 1 + k % 3 } else { [1, 3][k % 2] };
        let fails = k % 10 == 9;
        let event = if fails {
            json!({"action": "error", "message": format!("event {k}")})
        } else {
            json!({"action": "mark", "dir": marks, "ms": 200})
        };
        let reply =
            cluster.invoke_with(host, FUNCTION, event.to_string().as_bytes(), &event_header);
        assert_eq!(reply.status, 202, "event {k}: {}", reply.text());
        if fails {
            failing.insert(reply.id());
        } else {
            succeeding.insert(reply.id());
        }
    }
    let runs = |marks: &Path| -> HashMap<String, usize> {
        let mut runs = HashMap::new();
        for entry in std::fs::read_dir(marks).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.split('.').next().unwrap_or_default().to_owned();
            *runs.entry(id).or_insert(0) += 1;
        }
        runs
    };
    let records = || -> Vec<Value> {
        cluster
            .lambda_cluster(&["failures", FUNCTION])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let all_done = wait_until(Duration::from_secs(180), || {
        let runs = runs(&marks);
        succeeding.iter().all(|id| runs.contains_key(id)) && records().len() >= failing.len()
    });
    let runs = runs(&marks);
    let records = records();
    let killed = cluster.host_log(2);
    eprintln!(
        "the killed host started {} invocations and finished {}",
        killed.matches("\nSTART RequestId").count(),
        killed.matches("\nREPORT RequestId").count()
    );
    let lost: Vec<&String> = succeeding
        .iter()
        .filter(|id| !runs.contains_key(*id))
        .collect();
    assert!(all_done, "{} events never ran: {lost:?}", lost.len());
    let duplicates: usize = runs.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events accepted, {} succeeded ({duplicates} ran twice or more), {} failure records",
        succeeding.len() + failing.len(),
        runs.len(),
        records.len()
    );
    assert!(
        runs.keys().all(|id| succeeding.contains(id)),
        "a run of an event that was not accepted, or that fails"
    );
    // At least once: only events the killed host held may run again (2 environments).
    assert!(duplicates <= 4, "{duplicates} duplicate runs");
    let recorded: Vec<String> = records
        .iter()
        .map(|r| {
            r["requestContext"]["requestId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        recorded.iter().collect::<HashSet<_>>(),
        failing.iter().collect::<HashSet<_>>(),
        "one failure record for each failing event, none for the others"
    );
    assert_eq!(recorded.len(), failing.len(), "no failure record twice");
    for record in &records {
        assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
        // maximum_retry_attempts 1: it ran twice, wherever it ran.
        assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
        assert_eq!(record["responsePayload"]["errorType"], "EchoError");
    }
}

#[test]
fn sync_invokes_go_on_when_a_nats_server_is_killed() {
    let Some(setup) = start(4, 2, 1) else {
        return;
    };
    let (cluster, dir) = (&setup.cluster, &setup.dir);
    // Host 1 stays busy, so every invoke through it crosses NATS to host 2.
    let busy = keep_busy(cluster, 1, 30_000);
    let server = cluster
        .nats_of_host(2)
        .expect("host 2 is connected to a server");
    let invoke = || {
        let reply = cluster.invoke(1, FUNCTION, &json!({"action": "whoami"}));
        if reply.status == 200 {
            assert_eq!(ran_in(&reply), cluster.host_netns(2));
        } else {
            eprintln!("invoke: {} {}", reply.status, reply.text());
        }
        reply.status
    };
    let before: Vec<u16> = (0..20).map(|_| invoke()).collect();
    assert!(before.iter().all(|s| *s == 200), "{before:?}");
    signal(cluster.nats_pid(server), "KILL");
    // Until host 2 has reconnected to a live server, an invoke through host 1 may find no host
    // free for it: that is Lambda's 429, never another error and never a hang. After that every
    // invoke goes through again (how soon depends on the machine's load: the bound is generous).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut after = Vec::new();
    let mut in_a_row = 0;
    while in_a_row < 40 {
        assert!(std::time::Instant::now() < deadline, "{after:?}");
        let status = invoke();
        assert!(status == 200 || status == 429, "{after:?} then {status}");
        in_a_row = if status == 200 { in_a_row + 1 } else { 0 };
        after.push(status);
    }
    let throttled = after.iter().filter(|s| **s != 200).count();
    eprintln!(
        "{throttled} of {} invokes throttled around the server's kill -9",
        after.len()
    );
    // The event stream, a quorum of its replicas still up, takes and runs events.
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let event = json!({"action": "mark", "dir": marks}).to_string();
    for _ in 0..5 {
        let reply = cluster.invoke_with(
            1,
            FUNCTION,
            event.as_bytes(),
            &[("X-Amz-Invocation-Type", "Event")],
        );
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    assert!(wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&marks).map_or(0, |d| d.count()) >= 5
    }));
    assert_eq!(busy.join().unwrap().status, 200);
}

#[test]
fn a_microvm_host_and_local_hosts_serve_one_cluster() {
    require_kvm!();
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_ROOTFS"),
        guest_artifact("GUEST_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let Some(nats) = nats_server() else {
        return;
    };
    skip_unless!(is_root(), "network namespaces need root");
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    // A zip package for the local-mode hosts, an ext4 image for the microVM host.
    let package = echo_function(dir.path(), &function_config());
    let vm_function = dir.path().join("vm-function");
    std::fs::create_dir(&vm_function).unwrap();
    std::fs::copy(&config, vm_function.join("function.json")).unwrap();
    std::fs::copy(&image, vm_function.join("image.ext4")).unwrap();
    let vm_name: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let vm_name = vm_name["function_name"].as_str().unwrap().to_owned();
    let (name, subnet) = name_and_subnet(5);
    let cluster = TestCluster::start(
        &name,
        &subnet,
        2,
        1,
        &[&package, &vm_function],
        Some(&kernel),
        &nats,
    );
    let hosts = [0, 1, 2];
    let all_live = || {
        hosts
            .iter()
            .all(|&i| hosts.iter().all(|&j| i == j || cluster.sees_live(i, j)))
    };
    assert!(wait_until(Duration::from_secs(60), all_live));
    // The package only local-mode hosts run, through the microVM host.
    let reply = cluster.invoke(0, FUNCTION, &json!({"action": "whoami"}));
    let ran = ran_in(&reply);
    assert!(
        ran == cluster.host_netns(1) || ran == cluster.host_netns(2),
        "{ran}"
    );
    // The image only the microVM host runs, through every host: the first boots a microVM.
    for i in [1, 2, 0] {
        let event = json!({"through": i});
        let reply = cluster.invoke(i, &vm_name, &event);
        assert_eq!(reply.status, 200, "through host {i}: {}", reply.text());
        assert_eq!(reply.json(), event);
    }
    assert!(
        cluster.host_log(0).contains("REPORT RequestId"),
        "the microVM host ran them"
    );
}

#[test]
fn a_snapstart_snapshot_taken_on_one_microvm_host_is_restored_by_another() {
    require_kvm!();
    let (Some(kernel), Some(image), Some(config)) = (
        guest_artifact("GUEST_VMLINUX"),
        guest_artifact("GUEST_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let Some(nats) = nats_server() else {
        return;
    };
    skip_unless!(is_root(), "network namespaces need root");
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let function_dir = dir.path().join("snap-function");
    std::fs::create_dir(&function_dir).unwrap();
    std::fs::copy(&config, function_dir.join("function.json")).unwrap();
    std::fs::copy(&image, function_dir.join("image.ext4")).unwrap();
    let function: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let function = function["function_name"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&config).unwrap()).unwrap()
            ["initialization_type"],
        "snap-start"
    );
    let (name, subnet) = name_and_subnet(6);
    // One local-mode host (it runs no image) and two microVM hosts, each with its own
    // snapshot directory; working sets off, as the flag asks of cluster hosts too.
    let cluster = TestCluster::start_with_vm_hosts(
        &name,
        &subnet,
        1,
        1,
        &[&function_dir],
        &kernel,
        2,
        &["--no-working-set"],
        &nats,
    );
    // Host A boots, snapshots after init, restores, and publishes the snapshot.
    let event = json!({"through": "A"});
    let reply = cluster.vm_invoke(1, &function, &event);
    assert_eq!(reply.status, 200, "through host A: {}", reply.text());
    assert_eq!(reply.json(), event);
    let published = wait_until(Duration::from_secs(300), || {
        cluster
            .vm_host_log(1)
            .contains("SnapStart snapshot published to the cluster")
    });
    assert!(
        published,
        "host A never published its snapshot:\n{}",
        cluster.vm_host_log(1)
    );
    let log_a = cluster.vm_host_log(1);
    assert!(
        log_a.contains("SnapStart snapshot taken after init"),
        "{log_a}"
    );
    assert!(!log_a.contains("working set recorded"), "{log_a}");
    // Host A goes (its idle environment would otherwise take the next invoke): host B then
    // runs the function itself, from host A's snapshot.
    let pid_a = cluster.host_pid(0);
    signal(pid_a, "TERM");
    assert!(
        wait_until(Duration::from_secs(60), || !Path::new(&format!(
            "/proc/{pid_a}"
        ))
        .exists()),
        "host A did not stop"
    );
    let event = json!({"through": "B"});
    let reply = cluster.vm_invoke(2, &function, &event);
    assert_eq!(reply.status, 200, "through host B: {}", reply.text());
    assert_eq!(reply.json(), event);
    // The REPORT line follows the response.
    let reported = || cluster.vm_host_log(2).contains("REPORT RequestId");
    assert!(wait_until(Duration::from_secs(30), reported));
    let log_b = cluster.vm_host_log(2);
    assert!(
        log_b.contains("SnapStart snapshot fetched from the cluster"),
        "host B did not fetch the snapshot:\n{log_b}"
    );
    assert!(log_b.contains("microVM restored"), "{log_b}");
    assert!(log_b.contains("working sets off"), "{log_b}");
    for booted in [
        "microVM booted",
        "SnapStart snapshot taken",
        "not usable here",
        "working set recorded",
    ] {
        assert!(!log_b.contains(booted), "host B: {booted:?}:\n{log_b}");
    }
}

/// `lambda-local --cluster ARGS`: its exit status and stderr, or the listening line it printed
/// (then it is stopped).
fn lambda_local(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(host_binary("lambda-local"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Up to its listening line (a started host, then stopped) or its end (a refusal).
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        if line.starts_with("lambda-local: listening") {
            integration_tests::sigterm(child.id()).unwrap();
            let status = child.wait().unwrap();
            return (status.success(), line);
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    (status.success(), seen.join("\n"))
}

/// A single NATS server on a free loopback port with `config`; stopped when dropped.
struct Nats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start(binary: &Path, config: &str) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n{}\n",
                config.replace("STORE", &store.to_string_lossy())
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        Nats {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, credentials: &str) -> String {
        format!("nats://{credentials}127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bad_cluster_urls_and_credentials_fail_at_start_with_a_clear_message() {
    let Some(binary) = nats_server() else {
        return;
    };
    let expect_error = |args: &[&str], message: &str| {
        let (ok, stderr) = lambda_local(args);
        assert!(!ok, "{args:?} started: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    };
    expect_error(
        &["--cluster", "http://127.0.0.1:4222"],
        "is not a NATS server address",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    expect_error(
        &["--cluster", &format!("nats://127.0.0.1:{closed}")],
        "cannot reach the NATS cluster",
    );
    expect_error(
        &[
            "--cluster",
            "nats://127.0.0.1:4222",
            "--cluster-creds",
            "/nonexistent.creds",
        ],
        "--cluster-creds /nonexistent.creds",
    );
    expect_error(
        &[
            "--cluster",
            "nats://127.0.0.1:4222",
            "--runtime",
            "/bin/true",
        ],
        "cannot be used with",
    );

    let good = "max_payload: 8MB\njetstream { store_dir: \"STORE\" }";
    let guarded = Nats::start(
        &binary,
        &format!("{good}\nauthorization {{ user: lambda, password: secret }}"),
    );
    expect_error(
        &[
            "--cluster",
            &guarded.url("lambda:wrong@"),
            "--cluster-replicas",
            "1",
        ],
        "refused the credentials",
    );
    expect_error(
        &["--cluster", &guarded.url(""), "--cluster-replicas", "1"],
        "refused the credentials",
    );
    expect_error(
        &["--cluster", &guarded.url("lambda:secret@")],
        "lower --cluster-replicas",
    );
    let (ok, line) = lambda_local(&[
        "--cluster",
        &guarded.url("lambda:secret@"),
        "--cluster-replicas",
        "1",
    ]);
    assert!(ok && line.contains("cluster-host="), "{line}");

    let small = Nats::start(&binary, "jetstream { store_dir: \"STORE\" }");
    expect_error(
        &["--cluster", &small.url(""), "--cluster-replicas", "1"],
        "set `max_payload: 8MB`",
    );
    let plain = Nats::start(&binary, "max_payload: 8MB");
    expect_error(
        &["--cluster", &plain.url(""), "--cluster-replicas", "1"],
        "has no JetStream",
    );
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}
