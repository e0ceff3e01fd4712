//! `lambda-vm --cluster`: the binary's side of a cluster host (joining, the invoke endpoint,
//! the signals); the environments are `lambda_vm::cluster_host`.

use std::sync::Arc;
use std::time::Duration;

/// Runs this host in the cluster until SIGTERM or SIGINT: joins, serves the invoke endpoint on
/// `listen` (every deployed function, and `GET /cluster`), then leaves the cluster and stops as
/// the single-host form does (busy environments get `stop_grace`).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    args: &cluster::ClusterArgs,
    host_id: Option<&str>,
    settings: lambda_vm::cluster_host::VmSettings,
    listen: std::net::SocketAddr,
    limits: http_server::ConnectionLimits,
    mut signals: crate::Signals,
    stop_grace: Duration,
    scratch: lambda_vm::dirs::Scratch,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    const PROGRAM: &str = "lambda-vm";
    let id = cluster::registry::host_id(host_id).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let invoke_addr = listener.local_addr()?;
    let (connection, on_event) = cluster::host::connection_watch(PROGRAM);
    let joined = cluster::Cluster::connect(args, &format!("{PROGRAM} {id}"), on_event).await?;
    let tails = settings.tails.clone();
    let environments = Arc::clone(&settings.environments);
    let host_settings = cluster::HostSettings {
        id: id.clone(),
        invoke_url: format!("http://{invoke_addr}"),
        region: "us-east-1".into(),
        retry_delay: Duration::from_secs(1),
        on_failure_dir: settings.on_failure_dir.clone(),
        event_workers: settings.host.max(),
        program: PROGRAM.into(),
    };
    let snapshots = cluster::snapshots::SharedSnapshots::new(&joined, &id);
    let host =
        lambda_vm::cluster_host::VmHost::new(settings, joined.artifacts.clone(), Some(snapshots));
    let runner = Arc::new(host.clone());
    let node = cluster::Node::start(joined, connection, runner, tails, host_settings)
        .await
        .context("joining the cluster")?;
    let front = cluster::front::Front::new(Arc::clone(&node));
    let accepting = tokio::spawn(http_server::serve_with(listener, limits, move |request| {
        front.clone().handle(request)
    }));
    // Scripts and tests wait for this line, as for the single-host form.
    crate::say(&format!(
        "lambda-vm: listening invoke={invoke_addr} cluster-host={id} cluster={}",
        args.cluster.join(",")
    ));
    let signal = signals.next().await;
    node.stop().await;
    accepting.abort();
    environments.end_starts();
    crate::say(&format!(
        "lambda-vm: stopping ({signal}): left the cluster; {} environment(s), busy ones get {:.0} s",
        environments.count(),
        stop_grace.as_secs_f64()
    ));
    for service in host.services() {
        service.shutdown().await;
    }
    let waiting = Arc::clone(&environments);
    let gone = tokio::task::spawn_blocking(move || waiting.wait_gone(stop_grace))
        .await
        .unwrap_or(false);
    if !gone {
        environments.end_all();
        let waiting = Arc::clone(&environments);
        let _ =
            tokio::task::spawn_blocking(move || waiting.wait_gone(Duration::from_secs(30))).await;
    }
    if let Err(e) = scratch.remove() {
        crate::say(&format!("lambda-vm: removing the scratch directory: {e}"));
    }
    crate::say("lambda-vm: stopped");
    Ok(std::process::ExitCode::SUCCESS)
}
