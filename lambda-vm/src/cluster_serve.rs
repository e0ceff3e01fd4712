//! `lambda-vm --cluster`: the binary's side of a cluster host (joining, the invoke endpoint,
//! the signals); the environments are `lambda_vm::cluster_host`.

use std::sync::Arc;
use std::time::Duration;

/// Runs this host in the cluster until SIGTERM or SIGINT: joins, serves the invoke endpoint on
/// `listen` (every deployed function, and `GET /cluster`), then leaves and stops every
/// environment.
pub async fn serve(
    args: &cluster::ClusterArgs,
    host_id: Option<&str>,
    settings: lambda_vm::cluster_host::VmSettings,
    listen: std::net::SocketAddr,
    limits: http_server::ConnectionLimits,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    const PROGRAM: &str = "lambda-vm";
    let id = cluster::registry::host_id(host_id).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let invoke_addr = listener.local_addr()?;
    let (connection, on_event) = cluster::host::connection_watch(PROGRAM);
    let joined = cluster::Cluster::connect(args, &format!("{PROGRAM} {id}"), on_event).await?;
    let tails = settings.tails.clone();
    let host_settings = cluster::HostSettings {
        id: id.clone(),
        invoke_url: format!("http://{invoke_addr}"),
        region: "us-east-1".into(),
        retry_delay: Duration::from_secs(1),
        on_failure_dir: settings.on_failure_dir.clone(),
        event_workers: settings.host.max(),
        program: PROGRAM.into(),
    };
    let host = lambda_vm::cluster_host::VmHost::new(settings, joined.artifacts.clone());
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let node = cluster::Node::start(
        joined,
        connection,
        Arc::new(host.clone()),
        tails,
        host_settings,
    )
    .await
    .context("joining the cluster")?;
    let front = cluster::front::Front::new(Arc::clone(&node));
    tokio::spawn(http_server::serve_with(listener, limits, move |request| {
        front.clone().handle(request)
    }));
    // Scripts and tests wait for this line, as for the single-host form.
    let ready = format!(
        "lambda-vm: listening invoke={invoke_addr} cluster-host={id} cluster={}\n",
        args.cluster.join(",")
    );
    std::io::Write::write_all(&mut std::io::stderr(), ready.as_bytes())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    node.stop().await;
    for service in host.services() {
        service.shutdown().await;
    }
    Ok(())
}
