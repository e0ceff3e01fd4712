//! Invocations per second through local mode (`lambda-local`), one runtime at a time, all running
//! the same echo function: our bootstrap as a library, our bootstrap driving a Python worker, the
//! `lambda_runtime` crate and awslambdaric.
//!
//! Each iteration is one synchronous invoke round trip over HTTP on loopback: client → invoke
//! endpoint → Runtime API `/next` → function → `/response` → client. The first invoke (init) is
//! done before measuring. Run it with `scripts/bench-local.sh`, which builds the peers first.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use integration_tests::peers::Peer;
use integration_tests::server::LocalServer;
use std::time::Duration;

fn invokes_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_mode_echo_invoke");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    let event = serde_json::json!({"hello": "world", "n": 42});
    for peer in Peer::ALL {
        let Some(launch) = peer.launch() else {
            continue;
        };
        // The server's own stdout (START/END/REPORT per invoke) is not part of what is measured,
        // but printing it would flood the report: keep it in memory only.
        let Some(server) = LocalServer::start_quiet(&launch, &[]) else {
            continue;
        };
        let warm = server.invoke(&event);
        assert_eq!(warm.function_error, None, "{peer:?}: {}", warm.text());
        group.bench_function(format!("{peer:?}"), |b| {
            b.iter(|| {
                let reply = server.invoke(&event);
                assert_eq!(reply.status, 200);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, invokes_per_second);
criterion_main!(benches);
