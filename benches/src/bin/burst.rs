//! The function host's burst benchmark (issue 11, item 7), run by `scripts/bench-burst.sh`
//! against a `lambda-vm` it started with two functions: an on-demand one (cold boots) and a
//! SnapStart one (restores of its snapshot).
//!
//! For each burst size N, for each function, it waits until the function has no environment,
//! fires N concurrent first invokes, and records the time until the last response and the host
//! memory of the N environments (`vmm` processes). It prints a markdown table on stdout and
//! draws the time to all responses by burst size as an SVG chart.
//!
//! Usage: burst --addr HOST:PORT --lambda-vm-pid PID --svg PATH
//!        [--sizes 1,2,4,8] [--cold NAME] [--snap NAME]

use anyhow::{bail, ensure, Context};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long one burst may take. Cold boots run the guest kernel under this machine's emulated
/// KVM, tens of seconds of CPU each, and a burst of 8 shares 2 CPUs.
const BURST_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a function's idle environments may take to go (`--idle-timeout` plus teardown).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `/status` is read during a burst to sample the environments' memory. Well under
/// the host's `--idle-timeout` (1 s in the script), so an environment that answered early is
/// seen idle before it is torn down.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

struct Args {
    addr: String,
    lambda_vm_pid: u32,
    svg: PathBuf,
    sizes: Vec<usize>,
    cold: String,
    snap: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut addr = None;
    let mut pid = None;
    let mut svg = None;
    let mut sizes = vec![1, 2, 4, 8];
    let mut cold = "cold".to_owned();
    let mut snap = "snap".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?),
            "--lambda-vm-pid" => {
                let v = value()?;
                pid = Some(v.parse().with_context(|| format!("--lambda-vm-pid {v}"))?);
            }
            "--svg" => svg = Some(PathBuf::from(value()?)),
            "--sizes" => {
                let v = value()?;
                sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--sizes {v}: give sizes like 1,2,4,8"))?;
                ensure!(
                    sizes.iter().all(|&n| n > 0),
                    "--sizes {v}: sizes start at 1"
                );
            }
            "--cold" => cold = value()?,
            "--snap" => snap = value()?,
            other => bail!(
                "unknown argument {other}; usage: burst --addr HOST:PORT --lambda-vm-pid PID \
                 --svg PATH [--sizes 1,2,4,8] [--cold NAME] [--snap NAME]"
            ),
        }
    }
    Ok(Args {
        addr: addr.context("--addr is required")?,
        lambda_vm_pid: pid.context("--lambda-vm-pid is required")?,
        svg: svg.context("--svg is required")?,
        sizes,
        cold,
        snap,
    })
}

/// One burst's result.
struct Burst {
    size: usize,
    /// From the first request sent to the last response received.
    all_responses: Duration,
    /// VmRSS of the burst's `vmm` processes, summed, in kB.
    vmm_rss_kb: u64,
    /// RssAnon of the same processes: the private part (the rest is file-backed, such as a
    /// restored snapshot's memory file in the page cache, shared between restored copies).
    vmm_anon_kb: u64,
    /// How many `vmm` processes were sampled (should be `size`).
    vmms: usize,
    /// `lambda-vm`'s own VmRSS right after the burst, in kB.
    host_rss_kb: u64,
}

struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn new(addr: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            // A failed invoke's status and body are the report, not a transport error.
            .http_status_as_error(false)
            .timeout_global(Some(BURST_TIMEOUT))
            .build()
            .new_agent();
        Client {
            agent,
            base: format!("http://{addr}"),
        }
    }

    fn status(&self) -> anyhow::Result<Value> {
        let url = format!("{}/status", self.base);
        let mut reply = self.agent.get(&url).call().context("GET /status")?;
        let text = reply.body_mut().read_to_string()?;
        ensure!(
            reply.status() == 200,
            "GET /status: {}: {text}",
            reply.status()
        );
        serde_json::from_str(&text).with_context(|| format!("GET /status: not JSON: {text}"))
    }

    /// Invokes FUNCTION with EVENT; the status and the body.
    fn invoke(&self, function: &str, event: &Value) -> anyhow::Result<(u16, String)> {
        let url = format!("{}/2015-03-31/functions/{function}/invocations", self.base);
        let mut reply = self
            .agent
            .post(&url)
            .send(event.to_string())
            .with_context(|| format!("invoke {function}"))?;
        let text = reply.body_mut().read_to_string()?;
        Ok((reply.status().as_u16(), text))
    }
}

/// A function's entry in `/status`.
fn function_status<'a>(status: &'a Value, function: &str) -> anyhow::Result<&'a Value> {
    status["functions"]
        .get(function)
        .with_context(|| format!("/status has no function {function}: {status}"))
}

/// The pids in a function's `/status` list (`busy_vmm_pids` or `idle_vmm_pids`).
fn pids(function: &Value, list: &str) -> Vec<u32> {
    function[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .filter_map(|p| u32::try_from(p).ok())
        .collect()
}

/// Waits until FUNCTION has no environment in any state.
fn wait_drained(client: &Client, function: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let status = client.status()?;
        let f = function_status(&status, function)?;
        let count = |k: &str| f[k].as_u64().unwrap_or(u64::MAX);
        if count("idle") == 0 && count("busy") == 0 && count("initializing") == 0 {
            return Ok(());
        }
        ensure!(
            start.elapsed() < DRAIN_TIMEOUT,
            "{function} still has environments after {DRAIN_TIMEOUT:?}: {f}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

use proc_info::read_status_kb as proc_kb;

/// The memory of one `vmm` process: (VmRSS, RssAnon) in kB, and whether it was read while the
/// environment was idle (after its invoke, the state the table reports).
#[derive(Clone, Copy)]
struct Sample {
    rss_kb: u64,
    anon_kb: u64,
    idle: bool,
}

/// Reads the memory of FUNCTION's `vmm` processes into SAMPLES. An idle reading replaces any
/// earlier one; a busy one is kept only until the process is seen idle.
fn sample(client: &Client, function: &str, samples: &mut BTreeMap<u32, Sample>) {
    // A failed status read during a burst only costs a sample; the invokes decide the result.
    let Ok(status) = client.status() else { return };
    let Ok(f) = function_status(&status, function) else {
        return;
    };
    for (list, idle) in [("busy_vmm_pids", false), ("idle_vmm_pids", true)] {
        for pid in pids(f, list) {
            if !idle && samples.get(&pid).is_some_and(|s| s.idle) {
                continue;
            }
            if let (Some(rss_kb), Some(anon_kb)) = (proc_kb(pid, "VmRSS"), proc_kb(pid, "RssAnon"))
            {
                samples.insert(
                    pid,
                    Sample {
                        rss_kb,
                        anon_kb,
                        idle,
                    },
                );
            }
        }
    }
}

/// Fires SIZE concurrent first invokes at FUNCTION and checks every answer: 200, its own tag,
/// and SIZE distinct environments.
fn burst(client: &Client, function: &str, size: usize, host_pid: u32) -> anyhow::Result<Burst> {
    wait_drained(client, function)?;
    let start = Instant::now();
    let mut samples = BTreeMap::new();
    let replies = std::thread::scope(|scope| {
        let invokes: Vec<_> = (0..size)
            .map(|tag| {
                scope.spawn(move || {
                    let event = json!({"action": "whoami", "tag": tag});
                    let reply = client.invoke(function, &event);
                    (tag, reply, start.elapsed())
                })
            })
            .collect();
        while !invokes.iter().all(|h| h.is_finished()) {
            sample(client, function, &mut samples);
            std::thread::sleep(SAMPLE_EVERY);
        }
        invokes
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("an invoke thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    // The last environments to answer are idle now; read them before --idle-timeout.
    sample(client, function, &mut samples);
    let host_rss_kb = proc_kb(host_pid, "VmRSS")
        .with_context(|| format!("lambda-vm (pid {host_pid}) is gone"))?;
    let mut environments = BTreeSet::new();
    let mut all_responses = Duration::ZERO;
    for (tag, reply, elapsed) in replies {
        let (status, text) = reply?;
        ensure!(
            status == 200,
            "{function}, burst of {size}: invoke {tag} answered {status}: {text}"
        );
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{function}: invoke {tag}: not JSON: {text}"))?;
        ensure!(
            body["tag"] == json!(tag),
            "{function}: invoke {tag} got another invoke's answer: {text}"
        );
        environments.insert(body["environment"].to_string());
        all_responses = all_responses.max(elapsed);
    }
    ensure!(
        environments.len() == size,
        "{function}, burst of {size}: {} distinct environments answered: {environments:?}",
        environments.len()
    );
    if samples.len() != size {
        eprintln!(
            "burst: {function}, burst of {size}: memory of {} vmm processes sampled, not {size}",
            samples.len()
        );
    }
    if let Some(pid) = samples.iter().find(|(_, s)| !s.idle).map(|(p, _)| p) {
        eprintln!("burst: {function}, burst of {size}: vmm {pid} was never seen idle; its busy reading is used");
    }
    Ok(Burst {
        size,
        all_responses,
        vmm_rss_kb: samples.values().map(|s| s.rss_kb).sum(),
        vmm_anon_kb: samples.values().map(|s| s.anon_kb).sum(),
        vmms: samples.len(),
        host_rss_kb,
    })
}

/// kB per environment, in MB with one decimal.
fn per_env_mb(kb: u64, size: usize) -> String {
    // Exact for any memory a host has (kB counts far below 2^52).
    #[allow(clippy::cast_precision_loss)]
    let mb = kb as f64 / 1024.0 / size.max(1) as f64;
    format!("{mb:.1} MB")
}

fn print_table(cold: &[Burst], snap: &[Burst]) {
    println!(
        "| burst | cold boot: time to all responses | cold boot: vmm RSS per environment (private) \
         | SnapStart restore: time to all responses | SnapStart restore: vmm RSS per environment (private) \
         | lambda-vm RSS after the burst (cold / restore) |"
    );
    println!("|---|---|---|---|---|---|");
    for (c, s) in cold.iter().zip(snap) {
        println!(
            "| {} | {:.2} s | {} ({}) | {:.2} s | {} ({}) | {} / {} |",
            c.size,
            c.all_responses.as_secs_f64(),
            per_env_mb(c.vmm_rss_kb, c.size),
            per_env_mb(c.vmm_anon_kb, c.size),
            s.all_responses.as_secs_f64(),
            per_env_mb(s.vmm_rss_kb, s.size),
            per_env_mb(s.vmm_anon_kb, s.size),
            per_env_mb(c.host_rss_kb, 1),
            per_env_mb(s.host_rss_kb, 1),
        );
    }
}

/// Draws time to all responses (s) by burst size, one line for cold boots, one for restores.
fn plot(path: &PathBuf, cold: &[Burst], snap: &[Burst]) -> anyhow::Result<()> {
    let points = |bursts: &[Burst]| -> Vec<(f64, f64)> {
        bursts
            .iter()
            .map(|b| {
                // Burst sizes are single digits.
                #[allow(clippy::cast_precision_loss)]
                let x = b.size as f64;
                (x, b.all_responses.as_secs_f64())
            })
            .collect()
    };
    let (cold, snap) = (points(cold), points(snap));
    let x_max = cold.iter().chain(&snap).map(|p| p.0).fold(1.0, f64::max) + 0.5;
    let y_max = cold.iter().chain(&snap).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 450)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "lambda-vm: N concurrent first invokes, time to all responses",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5..x_max, 0.0..y_max)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("burst size (concurrent first invokes)")
        .y_desc("time to all responses (s)")
        .x_labels(8)
        // Burst sizes are whole numbers.
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw)?;
    for (points, color, label) in [
        (cold, RED, "cold boot (on-demand)"),
        (snap, BLUE, "SnapStart restore"),
    ] {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
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

    // The SnapStart function's first environment boots, inits and is snapshotted; every later
    // one is a restore. Take the snapshot before measuring, and let that environment go.
    eprintln!("burst: taking {}'s SnapStart snapshot", args.snap);
    wait_drained(&client, &args.snap)?;
    let (status, text) = client.invoke(&args.snap, &json!({"action": "whoami", "tag": 0}))?;
    ensure!(
        status == 200,
        "{}: first invoke answered {status}: {text}",
        args.snap
    );
    wait_drained(&client, &args.snap)?;

    let (mut cold, mut snap) = (Vec::new(), Vec::new());
    for &size in &args.sizes {
        for (function, results) in [(&args.cold, &mut cold), (&args.snap, &mut snap)] {
            // Other work on the machine shares its 2 CPUs with the guests; the load average
            // says how quiet it was.
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!(
                "burst: {function}, burst of {size} (loadavg {})",
                load.trim()
            );
            let b = burst(&client, function, size, args.lambda_vm_pid)?;
            eprintln!(
                "burst: {function}, burst of {size}: all responses in {:.2} s, {} vmm processes, \
                 {} per environment",
                b.all_responses.as_secs_f64(),
                b.vmms,
                per_env_mb(b.vmm_rss_kb, b.size)
            );
            results.push(b);
        }
    }
    print_table(&cold, &snap);
    plot(&args.svg, &cold, &snap)
}
