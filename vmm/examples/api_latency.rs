//! Measures the API from a client's side: `GET /` round trips (kept-alive and on a new
//! connection each), pause and resume, a full snapshot, and restores in fresh processes (spawn
//! to socket ready, `PUT /snapshot/load` with `resume_vm` to its `204`). The same requests run
//! against Firecracker's binary with `--firecracker`, for a side by side (BENCHMARKS.md, "The
//! vmm API").
//!
//! cargo run --release -p vmm --example api_latency -- BINARY KERNEL [INITRD] [--firecracker]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmm::api::client::ApiClient;

const ROUND_TRIPS: usize = 2000;
const NEW_CONNECTIONS: usize = 500;
const RESTORES: usize = 20;

struct Options {
    binary: PathBuf,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    firecracker: bool,
    work: PathBuf,
}

fn spawn(options: &Options, name: &str) -> (Child, ApiClient, Duration) {
    let socket = options.work.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    let started = Instant::now();
    let mut command = Command::new(&options.binary);
    command.arg("--api-sock").arg(&socket);
    if !options.firecracker {
        command
            .arg("--serial-out")
            .arg(options.work.join("console"));
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the VMM");
    let mut client = ApiClient::new(&socket, Duration::from_secs(60));
    client.wait_ready(Duration::from_secs(10)).expect("socket");
    (child, client, started.elapsed())
}

fn put(client: &mut ApiClient, method: &str, path: &str, body: &str) {
    let reply = client.request(method, path, Some(body.as_bytes())).unwrap();
    assert!(
        reply.status == 204,
        "{method} {path}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 99th percentile, in microseconds.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100].as_secs_f64() * 1e6;
    format!(
        "median {:8.1} us   p99 {:8.1} us   (n={})",
        at(50),
        at(99),
        samples.len()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let firecracker = args.iter().any(|a| a == "--firecracker");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let work = std::env::temp_dir().join(format!("api-latency-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let options = Options {
        binary: PathBuf::from(paths.first().expect("BINARY")),
        kernel: PathBuf::from(paths.get(1).expect("KERNEL")),
        initrd: paths.get(2).map(PathBuf::from),
        firecracker,
        work,
    };
    let (mut child, mut client, _) = spawn(&options, "boot");
    put(
        &mut client,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    let mut boot = format!(r#"{{"kernel_image_path": "{}""#, options.kernel.display());
    if let Some(initrd) = &options.initrd {
        boot.push_str(&format!(r#", "initrd_path": "{}""#, initrd.display()));
    }
    boot.push('}');
    put(&mut client, "PUT", "/boot-source", &boot);
    let started = Instant::now();
    put(
        &mut client,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    println!("InstanceStart: {:.2} ms", ms(started.elapsed()));

    let mut kept = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        let reply = client.request("GET", "/", None).unwrap();
        kept.push(started.elapsed());
        assert_eq!(reply.status, 200);
    }
    println!("GET / kept-alive:      {}", summary(kept));
    let socket = client.socket_path().to_owned();
    let mut fresh = Vec::with_capacity(NEW_CONNECTIONS);
    for _ in 0..NEW_CONNECTIONS {
        let started = Instant::now();
        let mut once = ApiClient::new(&socket, Duration::from_secs(10));
        let reply = once.request("GET", "/", None).unwrap();
        fresh.push(started.elapsed());
        assert_eq!(reply.status, 200);
    }
    println!("GET / new connection:  {}", summary(fresh));

    let started = Instant::now();
    put(&mut client, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    println!("PATCH /vm Paused: {:.2} ms", ms(started.elapsed()));
    let state = options.work.join("vm.state");
    let memory = options.work.join("vm.mem");
    let create = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        memory.display()
    );
    let started = Instant::now();
    put(&mut client, "PUT", "/snapshot/create", &create);
    println!(
        "PUT /snapshot/create (128 MiB): {:.2} ms",
        ms(started.elapsed())
    );
    let _ = child.kill();
    let _ = child.wait();

    restores(&options, &state, &memory);
    if !options.firecracker {
        command_line_restores(&options, &state, &memory);
    }
    let _ = std::fs::remove_dir_all(&options.work);
}

/// The same snapshot restored the pre-API way, for comparison: `vmm --restore-from DIR`, from
/// spawn to its "restored in" log line (what the function host waited for before the API).
fn command_line_restores(options: &Options, state: &Path, memory: &Path) {
    use std::io::BufRead;
    let dir = options.work.join("snapshot-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::hard_link(state, dir.join("state")).unwrap();
    std::fs::hard_link(memory, dir.join("memory")).unwrap();
    let mut totals = Vec::with_capacity(RESTORES);
    for _ in 0..RESTORES {
        let started = Instant::now();
        let mut child = Command::new(&options.binary)
            .args(["--log-level", "info", "--restore-from"])
            .arg(&dir)
            .arg("--serial-out")
            .arg(options.work.join("console"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the VMM");
        let stderr = child.stderr.take().expect("stderr");
        let restored = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("restored in"));
        assert!(restored, "no restore line");
        totals.push(started.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "--restore-from, spawn to restored (log line): {}",
        summary(totals)
    );
}

fn restores(options: &Options, state: &Path, memory: &Path) {
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
        state.display(),
        memory.display()
    );
    let (mut ready, mut loads, mut totals, mut inside) = (vec![], vec![], vec![], vec![]);
    for n in 0..RESTORES {
        let started = Instant::now();
        let (mut child, mut client, to_ready) = spawn(options, &format!("restore{n}"));
        let load_started = Instant::now();
        put(&mut client, "PUT", "/snapshot/load", &load);
        loads.push(load_started.elapsed());
        totals.push(started.elapsed());
        ready.push(to_ready);
        if !options.firecracker {
            let status = client.status().unwrap();
            assert_eq!(status.state, "Running");
            let restore_ms = status.timings.restore_ms.unwrap_or_default();
            inside.push(Duration::from_secs_f64(restore_ms / 1000.0));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("restore, spawn to socket ready:        {}", summary(ready));
    println!("restore, PUT /snapshot/load to 204:    {}", summary(loads));
    println!(
        "restore, spawn to restored and running: {}",
        summary(totals)
    );
    if !inside.is_empty() {
        println!("restore, inside the vmm (restore_ms):  {}", summary(inside));
    }
}
