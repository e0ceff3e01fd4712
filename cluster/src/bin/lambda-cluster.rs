//! `lambda-cluster`: deploys functions to a cluster of hosts and shows what it holds.

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use clap::{Parser, Subcommand};
use cluster::catalog::{self, FunctionRecord};
use cluster::registry::{HostRecord, STALE_AFTER};
use cluster::{names, Cluster, ClusterArgs};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "lambda-cluster",
    about = "Deploy Lambda functions to a cluster of hosts (lambda-local or lambda-vm with --cluster), and see what it holds"
)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a function: a directory holding function.json and its artifacts (a .zip package
    /// for local mode, an .ext4 or .cpio image for microVMs), or a package (.zip) that carries
    /// its own function.json. Every host then serves it.
    Deploy { source: PathBuf },
    /// List the deployed functions.
    Functions,
    /// List the hosts in the registry: id, invoke endpoint, environments in use, live or stale.
    Hosts,
    /// Print the on-failure destination records of a function's asynchronous invokes (JSON,
    /// one per line).
    Failures { function: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.cluster.enabled(),
        "give the cluster's servers: --cluster nats://HOST:PORT[,...]"
    );
    let cluster = Cluster::connect(&args.cluster, "lambda-cluster", |_| {}).await?;
    match args.command {
        Command::Deploy { source } => {
            let record = catalog::deploy(&cluster, &source).await?;
            let artifacts: Vec<String> = record
                .artifacts
                .iter()
                .map(|a| format!("{} sha256:{} ({} bytes)", a.kind.as_str(), a.sha256, a.size))
                .collect();
            println!(
                "deployed {} (revision {}): {}",
                record.name(),
                record.revision,
                artifacts.join(", ")
            );
        }
        Command::Functions => {
            let mut keys = cluster.functions.keys().await?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                names.push(key?);
            }
            names.sort();
            for name in names {
                let Some(value) = cluster.functions.get(&name).await? else {
                    continue;
                };
                let record: FunctionRecord = serde_json::from_slice(&value)
                    .with_context(|| format!("the record of {name}"))?;
                let kinds: Vec<&str> = record.artifacts.iter().map(|a| a.kind.as_str()).collect();
                println!(
                    "{name}\thandler={}\tmemory={} MB\ttimeout={} s\t{}",
                    record.config.handler,
                    record.config.memory_mb,
                    record.config.timeout_secs,
                    kinds.join(",")
                );
            }
        }
        Command::Hosts => {
            let mut keys = cluster.hosts.keys().await?;
            while let Some(key) = keys.next().await {
                let key = key?;
                let Some(entry) = cluster.hosts.entry(&key).await? else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<HostRecord>(&entry.value) else {
                    continue;
                };
                // The server's clock stamped the entry; this program's clock reads its age.
                let age = time_since(entry.created.unix_timestamp_nanos());
                let state = if age < STALE_AFTER && record.accepting {
                    "live"
                } else {
                    "stale"
                };
                println!(
                    "{}\t{}\t{}/{} in use\t{}\t{state}",
                    record.id,
                    record.invoke_url,
                    record.in_use,
                    record.max_concurrency,
                    record.runs.join(",")
                );
            }
        }
        Command::Failures { function } => {
            let consumer = cluster
                .failures
                .create_consumer(pull::OrderedConfig {
                    filter_subject: names::failures_subject(&function),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let mut pending = consumer.cached_info().num_pending;
            let mut messages = consumer.messages().await?;
            while pending > 0 {
                let Some(message) = messages.next().await else {
                    break;
                };
                let message = message?;
                let record: serde_json::Value = serde_json::from_slice(&message.payload)
                    .context("a failure record that is not JSON")?;
                println!("{record}");
                pending = message.info().map(|i| i.pending).unwrap_or(0);
            }
        }
    }
    Ok(())
}

/// How long ago a time (ns since the epoch, the server's clock) was, by this program's clock.
fn time_since(then_ns: i128) -> Duration {
    let now_ms = proto::time::epoch_ms();
    let then_ms = u64::try_from(then_ns / 1_000_000).unwrap_or(0);
    Duration::from_millis(now_ms.saturating_sub(then_ms))
}
