//! Load for the cluster benchmark (`scripts/bench-cluster.sh`): `--clients` threads, each
//! sending synchronous invokes one after another, round-robin over the invoke URLs given (as a
//! load balancer in front of the hosts would), for `--seconds` after a warm-up. Prints one line
//! of JSON: invokes per second, p50 and p99 latency in ms, and the count of answers other than
//! 200 (429s when the cluster is full).
//!
//! Usage: cluster_load --urls URL[,URL...] --clients N --seconds S [--warmup S] [--event JSON]

use anyhow::{bail, ensure, Context};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    urls: Vec<String>,
    clients: usize,
    seconds: f64,
    warmup: f64,
    event: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        urls: Vec::new(),
        clients: 1,
        seconds: 10.0,
        warmup: 2.0,
        event: "{}".into(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--urls" => args.urls = value.split(',').map(str::to_owned).collect(),
            "--clients" => args.clients = value.parse().context("--clients")?,
            "--seconds" => args.seconds = value.parse().context("--seconds")?,
            "--warmup" => args.warmup = value.parse().context("--warmup")?,
            "--event" => args.event = value,
            other => bail!("unknown flag {other}"),
        }
    }
    ensure!(!args.urls.is_empty(), "--urls is required");
    ensure!(args.clients > 0, "--clients must be at least 1");
    Ok(args)
}

/// What one client saw while measuring.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    others: usize,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..args.clients)
        .map(|client| {
            let (agent, urls, event) = (agent.clone(), args.urls.clone(), args.event.clone());
            let (measuring, stop) = (Arc::clone(&measuring), Arc::clone(&stop));
            std::thread::spawn(move || -> anyhow::Result<Seen> {
                let mut seen = Seen::default();
                let mut next = client;
                while !stop.load(Ordering::Relaxed) {
                    let url = &urls[next % urls.len()];
                    next += 1;
                    let started = Instant::now();
                    let mut response = agent
                        .post(url)
                        .send(event.as_bytes())
                        .with_context(|| format!("POST {url}"))?;
                    let body = response.body_mut().read_to_vec()?;
                    if measuring.load(Ordering::Relaxed) {
                        if response.status() == 200 {
                            seen.latencies.push(started.elapsed());
                        } else {
                            if seen.others == 0 {
                                eprintln!(
                                    "cluster_load: {}: {}",
                                    response.status(),
                                    String::from_utf8_lossy(&body)
                                );
                            }
                            seen.others += 1;
                        }
                    }
                }
                Ok(seen)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut others = 0;
    for thread in threads {
        let seen = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        latencies.extend(seen.latencies);
        others += seen.others;
    }
    ensure!(!latencies.is_empty(), "no invoke succeeded");
    latencies.sort();
    let percentile = |percent: usize| {
        let rank = (latencies.len() - 1) * percent / 100;
        latencies[rank].as_secs_f64() * 1000.0
    };
    let summary = json!({
        "clients": args.clients,
        "invokes_per_s": latencies.len() as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "ok": latencies.len(),
        "not_200": others,
    });
    println!("{summary}");
    Ok(())
}
