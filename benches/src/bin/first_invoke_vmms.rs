//! The first invokes after a SnapStart restore, our `vmm` beside Firecracker (the reference
//! VMM) on the same function guest, in one run (issue 23). Run by
//! `scripts/bench-first-invoke-vmms.sh`, which builds the echo function's image.
//!
//! Each VMM boots the same guest (the same kernel, command line, ext4 image as a read-only
//! root drive, vsock on a Unix socket, an entropy device, 1 vCPU and the function's memory)
//! through the same Firecracker API calls, and the function's init runs as lambda-vm runs it:
//! the guest's init connects to the host link, its runtime runs the function's init and stops
//! at `restore/next` (`InitDone`), and the VM is paused and snapshotted (`PUT /snapshot/create`,
//! Full). Neither VMM can load the other's snapshot, so each restores its own.
//!
//! Then `--runs` restores of each, alternating (which goes first alternates too): a fresh
//! process with `--api-sock` only, `PUT /snapshot/load` with `resume_vm`, the host dialling the
//! restored init with `Hello` and `Restore` in one write (`HostLink::dial`, as lambda-vm does),
//! then one invoke after another on that link: the first, and `--warm` more, each `--gap-ms`
//! after the one before (so that it does not meet the last one's END and REPORT). Each invoke is
//! timed by the host (round trip) and by the guest (the kernel command line has
//! `INIT_TIMING=1`): from the `Invoke` frame to the runtime's `GET /next` answer, and from there
//! to the outcome, which is the function's part, what a REPORT's Duration measures.
//!
//! With debugfs mounted, KVM's counters of the VM that moved go with each sample: from the load
//! to the init's answer, and during each invoke (on this machine's `kvm_pvm` only `pages_4k`,
//! the 4 KiB mappings of guest memory KVM made, counts). Each invoke also carries what the VMM
//! process read meanwhile (`/proc/PID/io`): a drive read would show there.
//!
//! With `--ages`, each restore is also told that its snapshot is that old: the guest's
//! monotonic clock and TSC resume where the snapshot stopped them (both VMMs restore the KVM
//! clock and the TSC as saved), so the wall-clock time in the host's `Restore` is all a
//! restored guest learns of its snapshot's age, and setting it ahead simulates the age.
//!
//! Medians and min–max go to stdout as markdown, every sample to `--json`.
//!
//! Usage: first_invoke_vmms --vmm PATH [--firecracker PATH] --kernel PATH --rootfs PATH
//!        --work DIR --json PATH [--runs N] [--warm N] [--ages 0,3600,86400] [--mem-mib N]
//!        [--boot-args ARGS]

use anyhow::{ensure, Context};
use clap::Parser;
use lambda_vm::host_link::{HostLink, Invoke, Listener, Outcome, PORT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use vmm::api::client::ApiClient;

/// How long one request may take (a boot runs the guest kernel in this machine's emulator).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);
/// The guest's CID, as lambda-vm gives it.
const GUEST_CID: u32 = 3;

#[derive(Parser)]
#[command(about = "First invokes after a SnapStart restore: our vmm beside Firecracker")]
struct Args {
    /// Our vmm.
    #[arg(long)]
    vmm: PathBuf,
    /// Firecracker (run with --no-seccomp); without it only our vmm is measured.
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// The guest kernel (scripts/build-kernel.sh).
    #[arg(long)]
    kernel: PathBuf,
    /// The function's ext4 image (scripts/build-rootfs.sh --ext4).
    #[arg(long)]
    rootfs: PathBuf,
    /// The kernel command line; the vmm's default for this host with `init=/init
    /// INIT_TIMING=1` when not given.
    #[arg(long)]
    boot_args: Option<String>,
    /// The guest's memory (the function's memory_mb).
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// A scratch directory (snapshots, sockets, consoles).
    #[arg(long)]
    work: PathBuf,
    /// Every sample.
    #[arg(long)]
    json: PathBuf,
    /// Restores of each VMM.
    #[arg(long, default_value_t = 8)]
    runs: usize,
    /// Warm invokes after each restore's first.
    #[arg(long, default_value_t = 5)]
    warm: usize,
    /// The pause before each invoke after the first (ms): the guest finishes an invoke's END
    /// and REPORT after its answer has left, and an invoke sent at once would share the vCPU
    /// with that bookkeeping.
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    /// Snapshot ages to simulate, in seconds, each restore of each VMM taken at each: the
    /// host's `Restore` tells the restored guest that the wall clock reads that much later
    /// than it does (`HostLink::dial_at`).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    ages: Vec<u64>,
    /// Invokes run before the snapshot (after a `Restore`, as a restored copy would): the
    /// first invoke after a restore then runs no code for the first time, which tells the
    /// restore's own cost from that of code run the first time ever. SnapStart snapshots are
    /// taken with none.
    #[arg(long, default_value_t = 0)]
    primed: usize,
}

/// A VMM under test: its name and how it is started.
struct Vmm {
    name: &'static str,
    command: Vec<String>,
}

impl Vmm {
    /// A fresh process serving the API on `socket`, its output (the guest's console) in
    /// `console`, killed and reaped when the returned guard goes.
    fn spawn(&self, socket: &Path, console: &Path) -> anyhow::Result<Reaped> {
        let _ = std::fs::remove_file(socket);
        let out = std::fs::File::create(console)?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .arg("--api-sock")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.command[0]))?;
        Ok(Reaped(child))
    }

    fn dir(&self, work: &Path) -> PathBuf {
        work.join(self.name)
    }
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One API call whose answer must be 204 (or 200).
fn call(api: &mut ApiClient, method: &str, path: &str, body: &Value) -> anyhow::Result<()> {
    let reply = api.request(method, path, Some(body.to_string().as_bytes()))?;
    ensure!(
        reply.status == 204 || reply.status == 200,
        "{method} {path} {body} answered {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(())
}

/// Boots the function's guest in `vmm`, waits for its runtime to finish the function's init
/// (`InitDone`) and writes the VM's snapshot: `DIR/state` and `DIR/memory`, its vsock socket
/// `DIR/v.sock` (kept in the snapshot). Returns the init's duration as the guest measured it.
fn snapshot(args: &Args, vmm: &Vmm, boot_args: &str) -> anyhow::Result<Duration> {
    let dir = vmm.dir(&args.work);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("boot.api");
    let vsock = dir.join("v.sock");
    let process = vmm.spawn(&socket, &dir.join("boot.console"))?;
    let mut api = ApiClient::new(&socket, REQUEST_TIMEOUT);
    api.wait_ready(Duration::from_secs(30))?;
    call(
        &mut api,
        "PUT",
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": args.mem_mib}),
    )?;
    call(
        &mut api,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": args.kernel, "boot_args": boot_args}),
    )?;
    call(
        &mut api,
        "PUT",
        "/drives/rootfs",
        &json!({"drive_id": "rootfs", "path_on_host": args.rootfs,
                "is_root_device": true, "is_read_only": true}),
    )?;
    call(
        &mut api,
        "PUT",
        "/vsock",
        &json!({"guest_cid": GUEST_CID, "uds_path": vsock}),
    )?;
    call(&mut api, "PUT", "/entropy", &json!({}))?;
    // The guest's init connects to the host link on `<uds>_<PORT>` as it boots.
    let listener = Listener::bind(&vsock, PORT)?;
    let booted = Instant::now();
    call(
        &mut api,
        "PUT",
        "/actions",
        &json!({"action_type": "InstanceStart"}),
    )?;
    let mut link = listener.accept(REQUEST_TIMEOUT)?;
    link.set_timeout(Some(REQUEST_TIMEOUT))?;
    let init = link.wait_init_done()?;
    eprintln!(
        "  {}: booted and the function's init done in {:.1} s (init {:.0} ms)",
        vmm.name,
        booted.elapsed().as_secs_f64(),
        init.as_secs_f64() * 1000.0
    );
    if args.primed > 0 {
        link.restore()?;
        let pid = process.0.id();
        for n in 0..args.primed {
            invoke(&mut link, pid, format!("{}-primer-{n}", vmm.name))?;
        }
    }
    call(&mut api, "PATCH", "/vm", &json!({"state": "Paused"}))?;
    call(
        &mut api,
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": dir.join("state"),
                "mem_file_path": dir.join("memory")}),
    )?;
    drop(link);
    Ok(init)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One invoke's times: the host's round trip, the guest's wait for the runtime's `GET /next`
/// and the function's part (next to outcome), in ms.
fn invoke(link: &mut HostLink, pid: u32, id: String) -> anyhow::Result<Value> {
    let io_before = read_io(pid);
    let kvm_before = benches::kvm_stats(pid);
    let started = Instant::now();
    let outcome = link.invoke(Invoke {
        request_id: id,
        event: br#"{"action":"whoami"}"#.to_vec().into(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
    })?;
    let round_trip = ms(started.elapsed());
    let io_after = read_io(pid);
    let kvm = benches::kvm_stats_moved(pid, &kvm_before);
    ensure!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
    let timing = link
        .last_timing()
        .context("the guest sent no timing (INIT_TIMING=1 missing from its command line?)")?;
    let us = |v: u64| v as f64 / 1000.0;
    Ok(json!({
        "round_trip_ms": round_trip,
        "guest_next_ms": us(timing.next_us),
        "function_ms": us(timing.outcome_us.saturating_sub(timing.next_us)),
        "guest_sent_ms": us(timing.sent_us),
        "vmm_read_bytes": io_after.0.saturating_sub(io_before.0),
        "vmm_read_calls": io_after.1.saturating_sub(io_before.1),
        "kvm": kvm,
    }))
}

/// What the process `pid` has read so far: bytes (`rchar`) and read system calls (`syscr`),
/// from `/proc/PID/io`; the rootfs drive's reads are among them.
fn read_io(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("rchar:"), field("syscr:"))
}

/// One restore of `vmm`'s snapshot in a fresh process, told that the snapshot is `age` seconds
/// old, then its first invoke and `warm` more.
fn restore(args: &Args, vmm: &Vmm, age: u64, run: usize) -> anyhow::Result<Value> {
    let dir = vmm.dir(&args.work);
    let socket = dir.join("restore.api");
    let vsock = dir.join("v.sock");
    // The restored process binds the uds_path kept in the snapshot.
    let _ = std::fs::remove_file(&vsock);
    let started = Instant::now();
    let process = vmm.spawn(&socket, &dir.join(format!("restore-{run}.console")))?;
    let mut api = ApiClient::new(&socket, REQUEST_TIMEOUT);
    api.wait_ready(Duration::from_secs(30))?;
    ensure!(api.instance_info().is_ok(), "GET / failed");
    let api_ready = started.elapsed();
    call(
        &mut api,
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": dir.join("state"),
                "mem_backend": {"backend_type": "File", "backend_path": dir.join("memory")},
                "resume_vm": true}),
    )?;
    let loaded = started.elapsed();
    let pid = process.0.id();
    let kvm_at_load = benches::kvm_stats(pid);
    let now = SystemTime::now() + Duration::from_secs(age);
    let (mut link, attempts) = benches::dial_restored(&vsock, now, REQUEST_TIMEOUT)?;
    let linked = started.elapsed();
    let kvm_to_init_answer = benches::kvm_stats_moved(pid, &kvm_at_load);
    link.set_timeout(Some(REQUEST_TIMEOUT))?;
    let first = invoke(&mut link, pid, format!("{}-{run}-first", vmm.name))?;
    let answered = started.elapsed();
    let warm = (0..args.warm)
        .map(|n| {
            std::thread::sleep(Duration::from_millis(args.gap_ms));
            invoke(&mut link, pid, format!("{}-{run}-warm-{n}", vmm.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(link);
    drop(process);
    let sample = json!({
        "vmm": vmm.name,
        "age_s": age,
        "run": run,
        "api_ready_ms": ms(api_ready),
        "load_ms": ms(loaded - api_ready),
        "load_to_init_answer_ms": ms(linked - loaded),
        "dial_attempts": attempts,
        "kvm_at_load": kvm_at_load,
        "kvm_load_to_init_answer": kvm_to_init_answer,
        "load_to_first_response_ms": ms(answered - loaded),
        "first": first,
        "warm": warm,
    });
    eprintln!(
        "  {} (age {age} s) run {run}: load {:.1} ms, load → init's answer {:.1} ms, first invoke {:.1} ms \
         (function {:.1} ms, vmm read {} B in {} calls), warm function {:.1} ms",
        vmm.name,
        sample["load_ms"].as_f64().unwrap_or(f64::NAN),
        sample["load_to_init_answer_ms"].as_f64().unwrap_or(f64::NAN),
        sample["first"]["round_trip_ms"].as_f64().unwrap_or(f64::NAN),
        sample["first"]["function_ms"].as_f64().unwrap_or(f64::NAN),
        sample["first"]["vmm_read_bytes"],
        sample["first"]["vmm_read_calls"],
        benches::median(&warm_values(&sample, "function_ms")),
    );
    Ok(sample)
}

fn warm_values(sample: &Value, key: &str) -> Vec<f64> {
    sample["warm"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w[key].as_f64())
        .collect()
}

fn cell(value: &Value) -> String {
    format!(
        "{:.1} ({:.1}–{:.1})",
        value["median"].as_f64().unwrap_or(f64::NAN),
        value["min"].as_f64().unwrap_or(f64::NAN),
        value["max"].as_f64().unwrap_or(f64::NAN)
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.warm > 0, "--warm must be at least 1");
    std::fs::create_dir_all(&args.work)?;
    let boot_args = args.boot_args.clone().unwrap_or_else(|| {
        let template = vmm::config::CpuTemplate::Auto.resolve(&vmm::host_caps::HostCaps::detect());
        format!(
            "{} init=/init {}=1",
            vmm::builder::default_boot_args(template),
            proto::guest::cmdline::TIMING
        )
    });
    let mut vmms = vec![Vmm {
        name: "vmm",
        command: vec![args.vmm.display().to_string()],
    }];
    if let Some(firecracker) = &args.firecracker {
        vmms.push(Vmm {
            name: "firecracker",
            command: vec![firecracker.display().to_string(), "--no-seccomp".into()],
        });
    }
    eprintln!("  boot args: {boot_args}");
    let mut inits = serde_json::Map::new();
    for vmm in &vmms {
        let init = snapshot(&args, vmm, &boot_args)
            .with_context(|| format!("{}: booting and snapshotting the function", vmm.name))?;
        inits.insert(vmm.name.into(), json!(ms(init)));
    }
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let order: Vec<&Vmm> = if run % 2 == 1 {
            vmms.iter().collect()
        } else {
            vmms.iter().rev().collect()
        };
        for vmm in order {
            for &age in &args.ages {
                samples.push(
                    restore(&args, vmm, age, run)
                        .with_context(|| format!("{} run {run}: the restore", vmm.name))?,
                );
            }
        }
    }

    println!(
        "{} restores each, {} warm invokes after each first; ms, median (min–max)\n",
        args.runs, args.warm
    );
    println!(
        "| VMM | age | PUT /snapshot/load | load → init's answer | load → first response | \
         first invoke: function | warm invoke: function | first / warm | \
         first invoke: round trip | warm invoke: round trip |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = serde_json::Map::new();
    for (vmm, &age) in vmms
        .iter()
        .flat_map(|v| args.ages.iter().map(move |a| (v, a)))
    {
        let mine: Vec<&Value> = samples
            .iter()
            .filter(|s| s["vmm"] == vmm.name && s["age_s"] == age)
            .collect();
        let of = |key: &str| -> Vec<f64> { mine.iter().filter_map(|s| s[key].as_f64()).collect() };
        let first = |key: &str| -> Vec<f64> {
            mine.iter()
                .filter_map(|s| s["first"][key].as_f64())
                .collect()
        };
        let warm =
            |key: &str| -> Vec<f64> { mine.iter().flat_map(|s| warm_values(s, key)).collect() };
        let row = json!({
            "load_ms": benches::spread(&of("load_ms")),
            "load_to_init_answer_ms": benches::spread(&of("load_to_init_answer_ms")),
            "load_to_first_response_ms": benches::spread(&of("load_to_first_response_ms")),
            "first_function_ms": benches::spread(&first("function_ms")),
            "warm_function_ms": benches::spread(&warm("function_ms")),
            "first_round_trip_ms": benches::spread(&first("round_trip_ms")),
            "warm_round_trip_ms": benches::spread(&warm("round_trip_ms")),
        });
        let ratio = row["first_function_ms"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN)
            / row["warm_function_ms"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN);
        println!(
            "| {} | {age} s | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            vmm.name,
            cell(&row["load_ms"]),
            cell(&row["load_to_init_answer_ms"]),
            cell(&row["load_to_first_response_ms"]),
            cell(&row["first_function_ms"]),
            cell(&row["warm_function_ms"]),
            ratio,
            cell(&row["first_round_trip_ms"]),
            cell(&row["warm_round_trip_ms"]),
        );
        let mut row = row;
        row["first_to_warm_function"] = json!(ratio);
        let key = match args.ages.as_slice() {
            [0] => vmm.name.to_owned(),
            _ => format!("{} age {age} s", vmm.name),
        };
        summary.insert(key, row);
    }
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Each program by its file name: the result file names no path of the machine it ran on.
    let commands: Value = vmms
        .iter()
        .map(|v| {
            let mut command = v.command.clone();
            if let Some(name) = Path::new(&command[0]).file_name() {
                command[0] = name.to_string_lossy().into_owned();
            }
            (v.name.to_owned(), json!(command))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json!({
            "runs": args.runs,
            "warm": args.warm,
            "gap_ms": args.gap_ms,
            "ages_s": args.ages,
            "primed": args.primed,
            "boot_args": boot_args,
            "commands": commands,
            "init_ms": inits,
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "summary": summary,
            "samples": samples,
        }))? + "\n",
    )?;
    eprintln!("  samples in {}", args.json.display());
    Ok(())
}
