//! The cold-start benchmark (issue 23), run by `scripts/bench-coldstart.sh` against a
//! `lambda-vm` it started with two builds of the echo function, `cold` (on-demand) and `snap`
//! (SnapStart), both without networking, and beside it the bare `vmm` on the same snapshot:
//!
//! - **vmm**: a fresh `vmm --api-sock` process, `PUT /snapshot/load` with `resume_vm`, and the
//!   restored guest's first output (its init's `Hello`, through hybrid vsock); one at a time,
//!   then N at once;
//! - **restore**: through `lambda-vm`, a request that needs a new environment (none idle) to its
//!   response, with the first invoke's REPORT (Duration, Restore Duration) and how long the
//!   restored init took to answer; one at a time, then bursts of N;
//! - **cold boot**: the same for the on-demand function;
//! - **warm**: sequential invokes of an idle environment: round trip, REPORT Duration, and the
//!   round trip less the Duration (the platform's part);
//! - **vsock**: 1-byte round trips between the host and a restored guest's function, the
//!   floor of any exchange with the guest (the echo function's `vsock` action).
//!
//! Medians with min and max go to stdout as markdown, every sample to a JSON file, and the
//! bursts to an SVG chart.
//!
//! Usage: coldstart --addr HOST:PORT --log PATH --vmm PATH --snapshot DIR --work DIR
//!        --json PATH --svg PATH [--snap NAME] [--cold NAME] [--runs N] [--cold-runs N]
//!        [--warm N] [--bursts 1,2,4,8] [--ready N]
//!        coldstart --vmm-only --vmm PATH --snapshot DIR --work DIR --json PATH [--runs N]
//!        (the bare vmm's restores alone: how a snapshot's age changes them, say)
//!        coldstart --skip-vmm ... (lambda-vm alone: an older build whose guest does not listen
//!        for the host, compared with `--ready 0`)
//!        [--lazy-addr HOST:PORT --lazy-log PATH]: a second lambda-vm, started with
//!        `--no-working-set` on the same snapshot, whose restores are measured beside the first's
//!
//! With a working set beside the snapshot (`memory.ws`, recorded by lambda-vm after the first
//! restore's first invoke), the bare vmm's first invoke after a restore is measured without and
//! with it (round trip, host page faults, the load's time), alternating.

use anyhow::{bail, ensure, Context};
use lambda_vm::host_link::{HostLink, Invoke, Outcome};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use vmm::api::client::ApiClient;
use vmm::api::types::{MemoryBackend, MemoryBackendType, SnapshotLoadParams, VsockOverride};

/// How long one request may take (a cold boot runs the guest kernel in this machine's
/// emulator: tens of seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a function may take to drain and refill its ready processes between runs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The vsock port of the round trips (any free port of the guest's host side).
const PING_PORT: u32 = 47_100;
/// 1-byte round trips per vsock measurement.
const PINGS: u64 = 200;

struct Args {
    /// Only the bare vmm's restores.
    vmm_only: bool,
    /// No bare vmm restores (nor vsock round trips, which use one).
    skip_vmm: bool,
    addr: String,
    log: PathBuf,
    vmm: PathBuf,
    snapshot: PathBuf,
    work: PathBuf,
    json: PathBuf,
    svg: PathBuf,
    snap: String,
    cold: String,
    runs: usize,
    cold_runs: usize,
    warm: usize,
    bursts: Vec<usize>,
    ready: usize,
    /// A second `lambda-vm` started with `--no-working-set` on the same snapshot, and its log:
    /// the same restores without the working set.
    lazy: Option<(String, PathBuf)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut named = std::collections::BTreeMap::new();
    let (mut vmm_only, mut skip_vmm) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--vmm-only" {
            vmm_only = true;
            continue;
        }
        if flag == "--skip-vmm" {
            skip_vmm = true;
            continue;
        }
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag}");
        };
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        named.insert(name.to_owned(), value);
    }
    let mut take = |name: &str| named.remove(name);
    let path = |v: Option<String>, name: &str| {
        v.map(PathBuf::from)
            .with_context(|| format!("--{name} is required"))
    };
    let number = |v: Option<String>, default: usize, name: &str| -> anyhow::Result<usize> {
        v.map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("--{name} {v}"))
        })
    };
    let (addr, log) = if vmm_only {
        (String::new(), PathBuf::new())
    } else {
        (
            take("addr").context("--addr is required")?,
            path(take("log"), "log")?,
        )
    };
    let parsed = Args {
        vmm_only,
        skip_vmm,
        addr,
        log,
        vmm: path(take("vmm"), "vmm")?,
        snapshot: path(take("snapshot"), "snapshot")?,
        work: path(take("work"), "work")?,
        json: path(take("json"), "json")?,
        svg: take("svg").map(PathBuf::from).unwrap_or_default(),
        snap: take("snap").unwrap_or_else(|| "snap".into()),
        cold: take("cold").unwrap_or_else(|| "cold".into()),
        runs: number(take("runs"), 10, "runs")?,
        cold_runs: number(take("cold-runs"), 1, "cold-runs")?,
        warm: number(take("warm"), 20, "warm")?,
        bursts: take("bursts")
            .unwrap_or_else(|| "1,2,4,8".into())
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .context("--bursts: give sizes like 1,2,4,8")?,
        ready: number(take("ready"), 2, "ready")?,
        lazy: match (take("lazy-addr"), take("lazy-log")) {
            (Some(addr), Some(log)) => Some((addr, PathBuf::from(log))),
            (None, None) => None,
            _ => bail!("--lazy-addr and --lazy-log go together"),
        },
    };
    if let Some(unknown) = named.keys().next() {
        bail!("unknown flag --{unknown}");
    }
    ensure!(
        parsed.vmm_only || !parsed.svg.as_os_str().is_empty(),
        "--svg is required"
    );
    Ok(parsed)
}

/// Milliseconds, for the tables and the JSON.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(value: &Value) -> f64 {
    value["median"].as_f64().unwrap_or(f64::NAN)
}

fn row(what: &str, value: &Value) -> String {
    format!(
        "| {what} | {:.1} ms | {:.1}–{:.1} ms | {} |",
        median(value),
        value["min"].as_f64().unwrap_or(f64::NAN),
        value["max"].as_f64().unwrap_or(f64::NAN),
        value["n"]
    )
}

// ---- the bare vmm -------------------------------------------------------------------------

/// One bare `vmm` restore: spawn to API ready, the load request, load to the guest's first
/// output (init's `Hello`), and spawn to that output.
struct VmmRestore {
    /// How long loading the working set took inside the vmm (ms), and its pages, when it was
    /// given one.
    working_set_load: Option<(f64, u64)>,
    /// Connections it took to reach the guest's init.
    attempts: u32,
    api_ready: Duration,
    load: Duration,
    to_output: Duration,
    total: Duration,
    child: Child,
    link: HostLink,
    dir: PathBuf,
}

impl Drop for VmmRestore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vmm_restore(args: &Args, n: usize) -> anyhow::Result<VmmRestore> {
    vmm_restore_with(args, n, None)
}

/// [`vmm_restore`], loading the pages of `working_set` first (`PUT /ext/working-set`).
fn vmm_restore_with(
    args: &Args,
    n: usize,
    working_set: Option<&Path>,
) -> anyhow::Result<VmmRestore> {
    let dir = args.work.join(format!("vmm-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let api_socket = dir.join("api.sock");
    let vsock = dir.join("v.sock");
    let started = Instant::now();
    let child = Command::new(&args.vmm)
        .arg("--api-sock")
        .arg(&api_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.vmm.display()))?;
    // Killed and reaped however this restore ends.
    let mut child = Reaped(Some(child));
    let mut api = ApiClient::new(&api_socket, REQUEST_TIMEOUT);
    api.wait_ready(Duration::from_secs(30))?;
    let api_ready = started.elapsed();
    let params = SnapshotLoadParams {
        snapshot_path: args.snapshot.join(vmm::snapshot::STATE_FILE),
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: args.snapshot.join(vmm::snapshot::MEMORY_FILE),
        }),
        resume_vm: true,
        vsock_override: Some(VsockOverride {
            uds_path: vsock.clone(),
        }),
        ..SnapshotLoadParams::default()
    };
    if let Some(path) = working_set {
        api.put_working_set(path)?;
    }
    api.load_snapshot_with(&params)?;
    let working_set_load = api
        .status()?
        .working_set
        .map(|used| {
            ensure!(used.ignored.is_none(), "working set ignored: {used:?}");
            Ok((used.load_ms, used.pages))
        })
        .transpose()?;
    let loaded = started.elapsed();
    let (link, attempts) = benches::dial_restored(&vsock, SystemTime::now(), REQUEST_TIMEOUT)?;
    let total = started.elapsed();
    Ok(VmmRestore {
        working_set_load,
        child: child.take(),
        attempts,
        api_ready,
        load: loaded - api_ready,
        to_output: total - loaded,
        total,
        link,
        dir,
    })
}

/// A child process killed and reaped when dropped, unless taken.
struct Reaped(Option<Child>);

impl Reaped {
    fn take(&mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Minor and major page faults of process `pid` so far (fields 10 and 12 of /proc/PID/stat).
fn faults(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    (field(10), field(12))
}

/// The host page faults of a restored guest's `vmm` during its first invoke and its second
/// (a guest page touched for the first time since the restore is a fault of the host's mapping
/// of the snapshot's memory file), and the two invokes' times.
fn first_invoke_faults(restored: &mut VmmRestore) -> anyhow::Result<Value> {
    let pid = restored.child.id();
    restored.link.set_timeout(Some(REQUEST_TIMEOUT))?;
    let mut rounds = Vec::new();
    for n in 0..2 {
        let before = faults(pid);
        let kvm_before = benches::kvm_stats(pid);
        let started = Instant::now();
        let outcome = restored.link.invoke(Invoke {
            request_id: format!("faults-{n}"),
            event: br#"{"action":"whoami"}"#.to_vec().into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        })?;
        let took = ms(started.elapsed());
        ensure!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
        let after = faults(pid);
        let kvm = benches::kvm_stats_moved(pid, &kvm_before);
        rounds.push(json!({
            "invoke_ms": took,
            "minor_faults": after.0 - before.0,
            "major_faults": after.1 - before.1,
            "kvm": kvm,
        }));
    }
    Ok(json!({"first": rounds[0], "second": rounds[1]}))
}

/// Bare `vmm` restores of the snapshot without and with its working set (`memory.ws`, which
/// lambda-vm recorded beside it), alternating, `runs` of each: the first invoke's round trip
/// and host page faults, and the working set's load time.
fn working_set_comparison(args: &Args, working_set: &Path) -> anyhow::Result<Value> {
    let mut sides = [
        (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ),
        (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ),
    ];
    for n in 0..args.runs {
        for (with, side) in sides.iter_mut().enumerate() {
            let path = (with == 1).then_some(working_set);
            let mut restored = vmm_restore_with(args, 2000 + n * 2 + with, path)?;
            let load = restored.working_set_load;
            let faults = first_invoke_faults(&mut restored)?;
            let first = &faults["first"];
            side.0.push(first["invoke_ms"].as_f64().unwrap_or(f64::NAN));
            side.1
                .push(first["minor_faults"].as_f64().unwrap_or(f64::NAN));
            side.2
                .push(first["major_faults"].as_f64().unwrap_or(f64::NAN));
            side.3.extend(load.map(|(ms, _)| ms));
            side.5
                .extend(load.map(|(_, pages)| f64::from(u32::try_from(pages).unwrap_or(u32::MAX))));
            side.4.push(faults["first"]["kvm"].clone());
        }
    }
    let [lazy, loaded] = sides;
    Ok(json!({
        "without": {
            "first_invoke_round_trip": benches::spread(&lazy.0),
            "first_invoke_minor_faults": benches::spread(&lazy.1),
            "first_invoke_major_faults": benches::spread(&lazy.2),
            "first_invoke_kvm_stats": lazy.4,
        },
        "with": {
            "first_invoke_round_trip": benches::spread(&loaded.0),
            "first_invoke_minor_faults": benches::spread(&loaded.1),
            "first_invoke_major_faults": benches::spread(&loaded.2),
            "load_ms": benches::spread(&loaded.3),
            "pages": benches::spread(&loaded.5),
            "first_invoke_kvm_stats": loaded.4,
        },
    }))
}

/// 1-byte round trips between the host and the function in a restored guest: the echo
/// function's `vsock` action connects to the host and echoes each byte it reads.
fn vsock_round_trips(restored: &mut VmmRestore) -> anyhow::Result<Vec<f64>> {
    // The guest's connection to host port PING_PORT arrives on `<vsock socket>_<port>`.
    let listener =
        std::os::unix::net::UnixListener::bind(restored.dir.join(format!("v.sock_{PING_PORT}")))?;
    let event = json!({"action": "vsock", "port": PING_PORT, "bytes": 1, "rounds": PINGS});
    restored.link.set_timeout(Some(REQUEST_TIMEOUT))?;
    let link = &mut restored.link;
    std::thread::scope(|scope| {
        let invoke = scope.spawn(move || {
            link.invoke(Invoke {
                request_id: "vsock-round-trips".into(),
                event: event.to_string().into_bytes().into(),
                trace_id: None,
                client_context: None,
                cognito_identity: None,
            })
        });
        let mut times = Vec::new();
        let (mut stream, _) = listener.accept()?;
        let mut byte = [0u8; 1];
        for _ in 0..PINGS {
            let sent = Instant::now();
            stream.write_all(&byte)?;
            stream.read_exact(&mut byte)?;
            times.push(ms(sent.elapsed()));
        }
        let outcome = invoke
            .join()
            .map_err(|_| anyhow::anyhow!("the invoke thread panicked"))??;
        ensure!(
            matches!(outcome, Outcome::Success(_)),
            "the vsock action failed: {outcome:?}"
        );
        Ok(times)
    })
}

// ---- lambda-vm ----------------------------------------------------------------------------

struct Client {
    agent: ureq::Agent,
    base: String,
}

/// One invoke's answer: status, body, request id, and how long it took.
struct Answer {
    status: u16,
    body: String,
    request_id: String,
    took: Duration,
}

impl Client {
    fn new(addr: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Client {
            agent,
            base: format!("http://{addr}"),
        }
    }

    fn status(&self, function: &str) -> anyhow::Result<Value> {
        let url = format!("{}/status", self.base);
        let mut reply = self.agent.get(&url).call().context("GET /status")?;
        let status: Value = serde_json::from_str(&reply.body_mut().read_to_string()?)?;
        status["functions"]
            .get(function)
            .cloned()
            .with_context(|| format!("/status has no function {function}"))
    }

    fn invoke(&self, function: &str, event: &Value) -> anyhow::Result<Answer> {
        let url = format!("{}/2015-03-31/functions/{function}/invocations", self.base);
        let sent = Instant::now();
        let mut reply = self
            .agent
            .post(&url)
            .send(event.to_string())
            .with_context(|| format!("invoke {function}"))?;
        let body = reply.body_mut().read_to_string()?;
        let took = sent.elapsed();
        let request_id = reply
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = reply.status().as_u16();
        ensure!(status == 200, "invoke {function}: {status}: {body}");
        Ok(Answer {
            status,
            body,
            request_id,
            took,
        })
    }

    /// Waits until `function` has no environment, and (with `ready`) that many `vmm`s ready.
    fn settle(&self, function: &str, ready: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let f = self.status(function)?;
            let count = |k: &str| f[k].as_u64().unwrap_or(u64::MAX);
            let empty = count("idle") == 0 && count("busy") == 0 && count("initializing") == 0;
            if empty && count("ready") >= ready as u64 {
                return Ok(());
            }
            ensure!(
                start.elapsed() < SETTLE_TIMEOUT,
                "{function} did not settle: {f}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// From lambda-vm's log: the REPORT line of `request_id` and the environment that wrote it.
fn report(log: &Path, request_id: &str) -> Option<(String, String)> {
    let needle = format!("REPORT RequestId: {request_id}\t");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            let env = line.split(' ').next().unwrap_or_default().to_owned();
            return Some((env, line.to_owned()));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `Name: 12.34 ms` field of a REPORT line.
fn report_ms(line: &str, name: &str) -> Option<f64> {
    let after = line.split(&format!("\t{name}: ")).nth(1)?;
    after.split(' ').next()?.parse().ok()
}

/// From lambda-vm's log: how long environment `env` (`snap[N]`) took from its restore request
/// to its init's answer.
fn init_answered_ms(log: &Path, env: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let prefix = format!("lambda-vm: {env}: microVM restored");
    let line = text.lines().find(|l| l.starts_with(&prefix))?;
    line.split("init answered after ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// A function's first response from a new environment, and that invoke's REPORT.
struct First {
    took: f64,
    duration: Option<f64>,
    restore_duration: Option<f64>,
    init_answered: Option<f64>,
}

fn first_response(
    log: &Path,
    client: &Client,
    function: &str,
    ready: usize,
) -> anyhow::Result<First> {
    client.settle(function, ready)?;
    let answer = client.invoke(function, &json!({"action": "whoami"}))?;
    let (env, line) = report(log, &answer.request_id)
        .with_context(|| format!("no REPORT for {}", answer.request_id))?;
    Ok(First {
        took: ms(answer.took),
        duration: report_ms(&line, "Duration"),
        restore_duration: report_ms(&line, "Restore Duration"),
        init_answered: init_answered_ms(log, &env),
    })
}

/// `size` concurrent first invokes: the time until all answered.
fn burst(client: &Client, function: &str, size: usize, ready: usize) -> anyhow::Result<f64> {
    client.settle(function, ready)?;
    let start = Instant::now();
    let answers = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..size)
            .map(|tag| {
                scope.spawn(move || {
                    client.invoke(function, &json!({"action": "whoami", "tag": tag, "ms": 0}))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("an invoke panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let all = ms(start.elapsed());
    let environments: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| {
            serde_json::from_str::<Value>(&a.body).unwrap_or_default()["environment"].to_string()
        })
        .collect();
    ensure!(
        environments.len() == size && answers.iter().all(|a| a.status == 200),
        "burst of {size}: {} environments answered",
        environments.len()
    );
    Ok(all)
}

/// `size` bare `vmm` restores at once: the time until every guest's first output.
fn vmm_burst(args: &Args, size: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let restored = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..size)
            .map(|n| scope.spawn(move || vmm_restore(args, 1000 + n)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a restore panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let all = restored.iter().map(|r| r.total).max().unwrap_or_default();
    let _ = start;
    drop(restored);
    Ok(ms(all))
}

fn plot(path: &Path, bursts: &[(usize, Value, Value)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let y_max = bursts
        .iter()
        .flat_map(|(_, a, b)| [a["max"].as_f64(), b["max"].as_f64()])
        .flatten()
        .fold(1.0, f64::max)
        * 1.15;
    let x_max = bursts.iter().map(|b| b.0).max().unwrap_or(1);
    #[allow(clippy::cast_precision_loss)]
    let x_max = x_max as f64 + 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "N first invokes at once: lambda-vm (SnapStart) vs. N bare vmm restores",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..x_max, 0.0..y_max)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("burst size")
        .y_desc("time until all answered (ms), median and min–max")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw)?;
    for (index, color, label) in [
        (1, BLUE, "lambda-vm: request to response"),
        (2, RED, "bare vmm: process start to guest output"),
    ] {
        #[allow(clippy::cast_precision_loss)]
        let points: Vec<(f64, f64, f64, f64)> = bursts
            .iter()
            .map(|b| {
                let v = if index == 1 { &b.1 } else { &b.2 };
                (
                    b.0 as f64,
                    median(v),
                    v["min"].as_f64().unwrap_or(0.0),
                    v["max"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(draw)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, color.filled(), 8)),
            )
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = Client::new(&args.addr);
    std::fs::create_dir_all(&args.work)?;
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let mut result = json!({ "loadavg_at_start": load() });

    let bare_runs = if args.skip_vmm { 0 } else { args.runs };
    eprintln!("coldstart: the bare vmm, {bare_runs} restores one at a time");
    let mut vmm = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut redialled = 0;
    for n in 0..bare_runs {
        let restored = vmm_restore(&args, n)?;
        vmm.0.push(ms(restored.api_ready));
        vmm.1.push(ms(restored.load));
        vmm.2.push(ms(restored.to_output));
        vmm.3.push(ms(restored.total));
        redialled += usize::from(restored.attempts > 1);
    }
    result["vmm"] = json!({
        "spawn_to_api_ready": benches::spread(&vmm.0),
        "load_request": benches::spread(&vmm.1),
        "load_to_first_output": benches::spread(&vmm.2),
        "spawn_to_first_output": benches::spread(&vmm.3),
        "restores_that_needed_a_second_connection": redialled,
    });
    if args.vmm_only {
        for (what, value) in [
            (
                "process start to API ready",
                &result["vmm"]["spawn_to_api_ready"],
            ),
            (
                "PUT /snapshot/load (resume_vm)",
                &result["vmm"]["load_request"],
            ),
            (
                "load done to the guest's first output",
                &result["vmm"]["load_to_first_output"],
            ),
            (
                "process start to the guest's first output",
                &result["vmm"]["spawn_to_first_output"],
            ),
        ] {
            println!("{}", row(what, value));
        }
        std::fs::write(&args.json, serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }

    let working_set = args.snapshot.join(vmm::snapshot::working_set::FILE_NAME);
    if !args.skip_vmm && working_set.exists() {
        eprintln!("coldstart: the bare vmm without and with the working set");
        result["working_set_vmm"] = working_set_comparison(&args, &working_set)?;
    }

    if !args.skip_vmm {
        eprintln!("coldstart: 1-byte vsock round trips with a restored guest");
        let mut restored = vmm_restore(&args, 999)?;
        result["first_invoke_host_faults"] = first_invoke_faults(&mut restored)?;
        let pings = vsock_round_trips(&mut restored)?;
        drop(restored);
        result["vsock_round_trip"] = benches::spread(&pings);
    }

    eprintln!(
        "coldstart: lambda-vm, {} restores one at a time, each then {} warm invokes",
        args.runs, args.warm
    );
    let (mut took, mut duration, mut restore_duration, mut answered) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut warm_trip, mut warm_duration, mut warm_platform) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut lazy_took, mut lazy_duration, mut lazy_restore_duration) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let first = first_response(&args.log, &client, &args.snap, args.ready)?;
        took.push(first.took);
        duration.extend(first.duration);
        restore_duration.extend(first.restore_duration);
        answered.extend(first.init_answered);
        // The same restore through the lambda-vm that has working sets off.
        if let Some((addr, log)) = &args.lazy {
            let lazy = first_response(log, &Client::new(addr), &args.snap, args.ready)?;
            lazy_took.push(lazy.took);
            lazy_duration.extend(lazy.duration);
            lazy_restore_duration.extend(lazy.restore_duration);
        }
        for n in 0..args.warm {
            let answer = client.invoke(&args.snap, &json!({"warm": n}))?;
            let Some((_, line)) = report(&args.log, &answer.request_id) else {
                continue;
            };
            if let Some(d) = report_ms(&line, "Duration") {
                warm_trip.push(ms(answer.took));
                warm_duration.push(d);
                warm_platform.push(ms(answer.took) - d);
            }
        }
    }
    result["restore"] = json!({
        "request_to_response": benches::spread(&took),
        "first_invoke_duration": benches::spread(&duration),
        "restore_duration": benches::spread(&restore_duration),
        "resume_to_init_answered": benches::spread(&answered),
    });
    if args.lazy.is_some() {
        result["restore_without_working_set"] = json!({
            "request_to_response": benches::spread(&lazy_took),
            "first_invoke_duration": benches::spread(&lazy_duration),
            "restore_duration": benches::spread(&lazy_restore_duration),
        });
    }
    result["warm"] = json!({
        "round_trip": benches::spread(&warm_trip),
        "duration": benches::spread(&warm_duration),
        "round_trip_minus_duration": benches::spread(&warm_platform),
    });

    eprintln!("coldstart: cold boots ({})", args.cold_runs);
    let mut cold = Vec::new();
    for _ in 0..args.cold_runs {
        cold.push(first_response(&args.log, &client, &args.cold, 0)?.took);
    }
    result["cold_boot"] = json!({ "request_to_response": benches::spread(&cold) });

    let mut bursts = Vec::new();
    for &size in &args.bursts {
        eprintln!("coldstart: bursts of {size} (loadavg {})", load());
        let (mut through, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..args.runs.div_ceil(2).max(1) {
            through.push(burst(&client, &args.snap, size, args.ready)?);
            if !args.skip_vmm {
                bare.push(vmm_burst(&args, size)?);
            }
        }
        bursts.push((size, benches::spread(&through), benches::spread(&bare)));
    }
    result["bursts"] = bursts
        .iter()
        .map(|(size, through, bare)| json!({"size": size, "lambda_vm": through, "vmm": bare}))
        .collect();
    result["loadavg_at_end"] = json!(load());

    // The done-when ratios of issue 23.
    let vmm_first = median(&result["vmm"]["spawn_to_first_output"]);
    let restore_first = median(&result["restore"]["request_to_response"]);
    let eight = bursts.iter().find(|b| b.0 == 8);
    result["ratios"] = json!({
        "restore_to_first_response_over_vmm_restore_to_first_output": restore_first / vmm_first,
        "burst_8_over_8_bare_vmm_restores": eight.map(|b| median(&b.1) / median(&b.2)),
        "first_invoke_duration_over_warm_duration":
            median(&result["restore"]["first_invoke_duration"]) / median(&result["warm"]["duration"]),
        "first_invoke_duration_over_warm_duration_without_working_set":
            median(&result["restore_without_working_set"]["first_invoke_duration"]) / median(&result["warm"]["duration"]),
        "warm_round_trip_minus_duration_over_vsock_round_trip":
            median(&result["warm"]["round_trip_minus_duration"]) / median(&result["vsock_round_trip"]),
    });

    println!("| what | median | min–max | n |");
    println!("|---|---|---|---|");
    for (what, value) in [
        (
            "bare vmm: process start to API ready",
            &result["vmm"]["spawn_to_api_ready"],
        ),
        (
            "bare vmm: PUT /snapshot/load (resume_vm)",
            &result["vmm"]["load_request"],
        ),
        (
            "bare vmm: load done to the guest's first output",
            &result["vmm"]["load_to_first_output"],
        ),
        (
            "bare vmm: process start to the guest's first output",
            &result["vmm"]["spawn_to_first_output"],
        ),
        (
            "1-byte vsock round trip, host and a restored guest's function",
            &result["vsock_round_trip"],
        ),
        (
            "lambda-vm: restore, request to response",
            &result["restore"]["request_to_response"],
        ),
        (
            "lambda-vm: restore request to the restored init's answer",
            &result["restore"]["resume_to_init_answered"],
        ),
        (
            "lambda-vm: Restore Duration (REPORT)",
            &result["restore"]["restore_duration"],
        ),
        (
            "lambda-vm: the first invoke's Duration (REPORT)",
            &result["restore"]["first_invoke_duration"],
        ),
        (
            "lambda-vm, working sets off: restore, request to response",
            &result["restore_without_working_set"]["request_to_response"],
        ),
        (
            "lambda-vm, working sets off: the first invoke's Duration (REPORT)",
            &result["restore_without_working_set"]["first_invoke_duration"],
        ),
        (
            "bare vmm, no working set: first invoke round trip",
            &result["working_set_vmm"]["without"]["first_invoke_round_trip"],
        ),
        (
            "bare vmm, working set: first invoke round trip",
            &result["working_set_vmm"]["with"]["first_invoke_round_trip"],
        ),
        (
            "bare vmm, working set: loading it (inside the restore)",
            &result["working_set_vmm"]["with"]["load_ms"],
        ),
        (
            "lambda-vm: warm invoke round trip",
            &result["warm"]["round_trip"],
        ),
        (
            "lambda-vm: warm invoke Duration (REPORT)",
            &result["warm"]["duration"],
        ),
        (
            "lambda-vm: warm round trip minus its Duration",
            &result["warm"]["round_trip_minus_duration"],
        ),
        (
            "lambda-vm: cold boot, request to response",
            &result["cold_boot"]["request_to_response"],
        ),
    ] {
        // A part this run did not measure (no working set, no second lambda-vm) is left out.
        if !value.is_null() {
            println!("{}", row(what, value));
        }
    }
    for (side, what) in [("without", "no working set"), ("with", "working set")] {
        let side = &result["working_set_vmm"][side];
        for (kind, name) in [("minor", "minor"), ("major", "major")] {
            let value = &side[format!("first_invoke_{kind}_faults")];
            if value.is_object() {
                println!(
                    "| bare vmm, {what}: host {name} faults in the first invoke | {} | {}–{} | {} |",
                    value["median"], value["min"], value["max"], value["n"]
                );
            }
        }
    }
    for (size, through, bare) in &bursts {
        println!(
            "{}",
            row(
                &format!("burst of {size}: lambda-vm, all answered"),
                through
            )
        );
        println!(
            "{}",
            row(
                &format!("burst of {size}: bare vmm restores, all guests' first output"),
                bare
            )
        );
    }
    println!();
    println!(
        "ratios: {}",
        serde_json::to_string_pretty(&result["ratios"])?
    );
    std::fs::write(&args.json, serde_json::to_string_pretty(&result)?)?;
    plot(&args.svg, &bursts)
}
