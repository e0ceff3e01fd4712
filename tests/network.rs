//! Guest networking end to end, on real KVM with the real guest kernel and a real virtio-net
//! device on a tap: `lambda-vm` gives each environment its own network namespace, tap, veth
//! pair and nftables rules (lambda-vm/src/network.rs), and the net-fetch function
//! (tests/functions/net-fetch) fetches pages from HTTP servers this test runs on the host, each
//! bound only on one environment's host-side address.
//!
//! Each test gives its service a range of its own (`--network-range`), so the addresses its
//! environments get are known in advance and no other service on the host uses them.
//!
//! Needs root and nftables, `GUEST_VMLINUX`, and the net-fetch images: `GUEST_NET_ROOTFS` and
//! `GUEST_NET_FUNCTION_CONFIG`, `GUEST_NET_SNAPSTART_ROOTFS` and
//! `GUEST_NET_SNAPSTART_FUNCTION_CONFIG` (scripts/test.sh builds and sets them). Skipped, with
//! the reason printed, only where /dev/kvm is absent; under CI that fails.

use integration_tests::server::LocalServer;
use integration_tests::{
    guest_artifact, host_binary, process_gone, require, require_kvm, wait_until,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port of every page server (each on an address of its own).
const PAGE_PORT: u16 = 47080;
/// What the page servers serve: 1 KB.
const PAGE_BYTES: usize = 1024;
/// Where the SnapStart function connects during init (`NET_INIT_CONNECT` in its function.json,
/// set by scripts/test.sh): the host side of the first link in [`SNAPSTART_RANGE`].
const KEPT_TARGET: &str = "100.64.201.1:47001";
/// Fixed, as the image holds [`KEPT_TARGET`]: runs of this test in several checkouts on one
/// host take turns (a run waits while another's networks hold the range).
const SNAPSTART_RANGE: &str = "100.64.201.0/29";

/// The booted test's one-link range: a /30 of 100.65.0.0/16 picked by this process's id, so
/// runs in several checkouts on one host at once do not meet.
fn cold_range() -> String {
    let network = u32::from(Ipv4Addr::new(100, 65, 0, 0)) + 4 * (std::process::id() % 16384);
    format!("{}/30", Ipv4Addr::from(network))
}

/// The host and environment addresses of each /30 link of `range`, and the names of the
/// service's objects for it (`lvm-<the link's address over 4>`).
fn links(range: &str) -> Vec<(Ipv4Addr, Ipv4Addr, String)> {
    let (base, len) = range.split_once('/').unwrap();
    let base = u32::from(base.parse::<Ipv4Addr>().unwrap());
    let count = 1u32 << (30 - len.parse::<u32>().unwrap());
    (0..count)
        .map(|i| {
            let network = base + 4 * i;
            let name = format!("lvm-{}", network >> 2);
            (
                Ipv4Addr::from(network + 1),
                Ipv4Addr::from(network + 2),
                name,
            )
        })
        .collect()
}

/// Which of the namespaces, host links and host nft tables named `names` exist.
fn leftovers(names: &[String]) -> Vec<String> {
    let tables = Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .expect("nft runs");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    let mut found = Vec::new();
    for name in names {
        if Path::new("/run/netns").join(name).exists() {
            found.push(format!("namespace {name}"));
        }
        if Path::new("/sys/class/net").join(name).exists() {
            found.push(format!("link {name}"));
        }
        if tables
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(name))
        {
            found.push(format!("nft table {name}"));
        }
    }
    found
}

/// `lambda-vm` serving one function with `range` for its environments' links, its files in
/// `work` under the target's temp dir (a short name: socket paths must stay short).
fn start_service(
    work: &str,
    rootfs: &Path,
    config: &Path,
    range: &str,
    extra: &[&str],
) -> Option<LocalServer> {
    let kernel = guest_artifact("GUEST_VMLINUX")?;
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(work);
    let mut command = Command::new(require(host_binary("lambda-vm"), "lambda-vm")?);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--function-config")
        .arg(config)
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--snapshot-dir")
        .arg(work.join("snapshots"))
        .arg("--console")
        .arg(work.join("console.log"))
        .args(["--network-range", range, "--listen", "127.0.0.1:0"])
        .args(extra);
    Some(LocalServer::from_command(command, "lambda-vm", true))
}

/// A TCP server on the host, on one address: serves [`PAGE_BYTES`] to each HTTP request, or
/// echoes lines back. It binds as soon as the address exists (the service makes it when an
/// environment starts) and keeps who connected.
struct HostServer {
    peers: Arc<Mutex<Vec<IpAddr>>>,
    bound: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HostServer {
    fn spawn(address: SocketAddr, echo: bool) -> HostServer {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let bound = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, up, stopping) = (peers.clone(), bound.clone(), stop.clone());
        std::thread::spawn(move || {
            let listener = loop {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                match TcpListener::bind(address) {
                    Ok(listener) => break listener,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            listener.set_nonblocking(true).unwrap();
            up.store(true, Ordering::Relaxed);
            while !stopping.load(Ordering::Relaxed) {
                let Ok((stream, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                seen.lock().unwrap().push(peer.ip());
                stream.set_nonblocking(false).unwrap();
                std::thread::spawn(move || serve(stream, echo));
            }
        });
        HostServer { peers, bound, stop }
    }

    fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, echo: bool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if echo {
            if writer.write_all(line.as_bytes()).is_err() {
                return;
            }
        } else if line == "\r\n" {
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {PAGE_BYTES}\r\n\r\n");
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&[b'x'; PAGE_BYTES]);
            return;
        }
        line.clear();
    }
}

fn page_url(host: Ipv4Addr) -> String {
    format!("http://{host}:{PAGE_PORT}/page")
}

/// The same connect and GET as the function's, from the host through the host's own stack,
/// for comparison: (connect, total) in ms.
fn host_fetch(host: Ipv4Addr) -> (f64, f64) {
    let started = Instant::now();
    let mut stream = TcpStream::connect((host, PAGE_PORT)).unwrap();
    let connect = started.elapsed().as_secs_f64() * 1000.0;
    stream.write_all(b"GET /page HTTP/1.0\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    assert!(response.ends_with(&[b'x'; PAGE_BYTES]));
    (connect, started.elapsed().as_secs_f64() * 1000.0)
}

fn invoke(server: &LocalServer, event: &Value) -> Value {
    let reply = server.invoke(event);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.function_error.is_none(), "{}", reply.text());
    reply.json()
}

/// A fetch that worked: the whole page over the network.
fn assert_fetched(result: &Value) {
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["body_bytes"], PAGE_BYTES, "{result}");
}

/// A fetch that was refused at once (a reset), not left to time out.
fn assert_refused(result: &Value) {
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error"], "ConnectionRefused", "{result}");
}

/// A booted (not restored) environment fetches a page from a server on its own host-side
/// address; its traffic arrives from its environment address, not the guest's. When the
/// service is killed with SIGKILL its network stays behind, and the next service's sweep
/// removes it.
#[test]
fn a_booted_function_fetches_from_the_host_and_a_killed_services_network_is_swept() {
    require_kvm!();
    let (Some(rootfs), Some(config)) = (
        guest_artifact("GUEST_NET_ROOTFS"),
        guest_artifact("GUEST_NET_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let range = cold_range();
    let [(host, env, name)] = links(&range).try_into().unwrap();
    let names = [name];
    assert_eq!(
        leftovers(&names),
        Vec::<String>::new(),
        "left by an earlier run"
    );
    let Some(service) = start_service("net-boot", &rootfs, &config, &range, &["--eager"]) else {
        return;
    };
    service.wait_for_log(Duration::from_secs(600), |l| {
        l.contains("provisioned environment ready")
    });
    assert_eq!(leftovers(&names).len(), 3, "{:?}", leftovers(&names));
    let page = HostServer::spawn(SocketAddr::from((host, PAGE_PORT)), false);
    assert!(wait_until(Duration::from_secs(10), || page
        .bound
        .load(Ordering::Relaxed)));

    let reply = invoke(
        &service,
        &json!({"fetch": [page_url(host), page_url(host)]}),
    );
    let results = reply["results"].as_array().unwrap();
    results.iter().for_each(assert_fetched);
    // The service translated the guest's address (the same in every environment) to the
    // environment's own.
    assert_eq!(page.peers(), vec![IpAddr::V4(env); 2]);
    let (host_connect, host_total) = host_fetch(host);
    println!(
        "network: booted guest: connect {:.1} / {:.1} ms, 1 KB GET {:.1} / {:.1} ms (first / \
         second); host loopback: connect {host_connect:.2} ms, 1 KB GET {host_total:.2} ms",
        results[0]["connect_ms"].as_f64().unwrap(),
        results[1]["connect_ms"].as_f64().unwrap(),
        results[0]["total_ms"].as_f64().unwrap(),
        results[1]["total_ms"].as_f64().unwrap(),
    );

    // SIGKILL: the service cannot clean up; its vmm dies with it (PDEATHSIG).
    let pid = service.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    drop(service);
    assert_eq!(leftovers(&names).len(), 3, "{:?}", leftovers(&names));
    // The next service removes what the killed one left, before it listens.
    // (Making no network ahead: one made at once would take the swept slot again.)
    let Some(mut next) = start_service(
        "net-boot",
        &rootfs,
        &config,
        &range,
        &["--ready-networks", "0"],
    ) else {
        return;
    };
    assert_eq!(leftovers(&names), Vec::<String>::new());
    next.terminate(Duration::from_secs(30)).unwrap();
}

/// SnapStart: two environments restored at once from one snapshot each fetch from a server on
/// their own host-side address, each is refused at once by the other's, and the connection the
/// function opened during init (before the snapshot) fails fast with a reset in the copy whose
/// network is not the one it was made on, instead of hanging. When the service stops nothing
/// of the networks is left.
#[test]
fn restored_environments_each_fetch_cannot_reach_each_other_and_stale_connections_fail_fast() {
    require_kvm!();
    let (Some(rootfs), Some(config)) = (
        guest_artifact("GUEST_NET_SNAPSTART_ROOTFS"),
        guest_artifact("GUEST_NET_SNAPSTART_FUNCTION_CONFIG"),
    ) else {
        return;
    };
    let function: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        function["environment"]["NET_INIT_CONNECT"],
        KEPT_TARGET,
        "{} must be staged by stage_net_function snap-start {KEPT_TARGET}",
        config.display()
    );
    let [(host_a, env_a, name_a), (host_b, env_b, name_b)] =
        links(SNAPSTART_RANGE).try_into().unwrap();
    let names = [name_a, name_b];
    // Another checkout's run of this test holds the range until it ends: wait for it.
    let free = wait_until(Duration::from_secs(900), || {
        let free = leftovers(&names).is_empty();
        if !free {
            // Each look runs `nft`: look twice a second, not at the usual pace.
            std::thread::sleep(Duration::from_millis(500));
        }
        free
    });
    assert!(free, "still in use: {:?}", leftovers(&names));
    // A fresh snapshot, so the function's init connects to this run's server.
    let _ = std::fs::remove_dir_all(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-snap"));
    // Each server binds once the service has made its address.
    let kept = HostServer::spawn(KEPT_TARGET.parse().unwrap(), true);
    let page_a = HostServer::spawn(SocketAddr::from((host_a, PAGE_PORT)), false);
    let page_b = HostServer::spawn(SocketAddr::from((host_b, PAGE_PORT)), false);
    let Some(mut service) =
        // Networks made as environments start, not ahead: the range has two links, and the
        // snapshot's environment must have the first (its init connects to that link's host).
        start_service(
            "net-snap",
            &rootfs,
            &config,
            SNAPSTART_RANGE,
            &["--eager", "--ready-networks", "0"],
        )
    else {
        return;
    };
    service.wait_for_log(Duration::from_secs(600), |l| {
        l.contains("provisioned environment ready")
    });
    // The snapshot's environment connected during init.
    assert_eq!(kept.peers(), vec![IpAddr::V4(env_a)]);

    // Two at once: the provisioned environment, and one restored for the second request.
    let event = json!({
        "sleep_ms": 2000, "kept": true, "timeout_ms": 20000,
        "fetch": [page_url(host_a), page_url(host_b)],
    });
    let body = serde_json::to_vec(&event).unwrap();
    let calls = [(); 2].map(|()| service.invoke_in_background(&body, &[]));
    let replies: Vec<Value> = calls
        .into_iter()
        .map(|call| {
            let reply = call.join().unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert!(reply.function_error.is_none(), "{}", reply.text());
            reply.json()
        })
        .collect();
    assert!(page_a.bound.load(Ordering::Relaxed) && page_b.bound.load(Ordering::Relaxed));
    // Each reached its own environment's server and was refused by the other's.
    let mut reached = Vec::new();
    for reply in &replies {
        let results = reply["results"].as_array().unwrap();
        let own = usize::from(results[0]["ok"] != true);
        assert_fetched(&results[own]);
        assert_refused(&results[1 - own]);
        reached.push(own);
    }
    reached.sort_unstable();
    assert_eq!(reached, [0, 1], "{replies:?}");
    assert_eq!(page_a.peers(), vec![IpAddr::V4(env_a)]);
    assert_eq!(page_b.peers(), vec![IpAddr::V4(env_b)]);
    // The connection from init goes on in the copy on the snapshot's own link (same address,
    // same host end) and is reset at once in the other: neither waits for a timeout.
    let mut outcomes: Vec<&str> = replies
        .iter()
        .map(|r| r["kept"]["outcome"].as_str().unwrap_or_default())
        .collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["data", "reset"], "{replies:?}");

    for reply in &replies {
        let own = &reply["results"][usize::from(reply["results"][0]["ok"] != true)];
        println!(
            "network: restored guest ({}): first connect {:.1} ms, first 1 KB GET {:.1} ms, \
             kept connection {} after {:.1} ms",
            own["url"],
            own["connect_ms"].as_f64().unwrap(),
            own["total_ms"].as_f64().unwrap(),
            reply["kept"]["outcome"],
            reply["kept"]["ms"].as_f64().unwrap_or_default(),
        );
    }
    let (host_connect, host_total) = host_fetch(host_a);
    println!("network: host loopback: connect {host_connect:.2} ms, 1 KB GET {host_total:.2} ms");

    service.terminate(Duration::from_secs(60)).unwrap();
    assert_eq!(leftovers(&names), Vec::<String>::new());
}
