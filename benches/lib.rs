//! Criterion benchmarks live in this package's bench targets; see `BENCHMARKS.md`. This
//! library holds what the benchmark binaries (`src/bin/`) share.

use lambda_vm::host_link::{GuestAddr, HostLink, LinkError, PORT};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How many connections [`dial_restored`] tries. Our vmm holds a host connection until the
/// restored guest has taken the vsock reset; Firecracker does not, so its guest may reset the
/// first connection or two.
const DIAL_ATTEMPTS: u32 = 8;

/// Dials the host link of a just restored guest whose vsock socket is `uds`, as lambda-vm does
/// (`Hello` and a `Restore` saying the wall clock reads `now`, in one write), and waits up to
/// `timeout` for its init's `Hello`; a connection the restore's vsock reset closed is tried
/// again. Returns the link and how many connections it took.
pub fn dial_restored(
    uds: &Path,
    now: SystemTime,
    timeout: Duration,
) -> Result<(HostLink, u32), LinkError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let addr = GuestAddr::Vsock { uds, port: PORT };
        match HostLink::dial_at(addr, now).and_then(|d| d.finish(timeout)) {
            Ok(link) => return Ok((link, attempts)),
            Err(e) if e.is_closed() && attempts < DIAL_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// KVM's statistics of the VM of process `pid` (`/sys/kernel/debug/kvm/PID-FD/`, when debugfs
/// is mounted), its vCPUs' (`vcpuN/`) summed: exits, guest page faults KVM fixed (`pf_fixed`),
/// the 4 KiB mappings it made (`pages_4k`), and the rest.
pub fn kvm_stats(pid: u32) -> BTreeMap<String, u64> {
    fn add(dir: &Path, into: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() && name.starts_with("vcpu") {
                add(&path, into);
            } else if let Some(value) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                *into.entry(name).or_default() += value;
            }
        }
    }
    let prefix = format!("{pid}-");
    let mut stats = BTreeMap::new();
    let vm = std::fs::read_dir("/sys/kernel/debug/kvm")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
    if let Some(vm) = vm {
        add(&vm.path(), &mut stats);
    }
    stats
}

/// What KVM did for the VM of process `pid` since `before` (its [`kvm_stats`] then): the
/// counters that moved, by how much. Empty without debugfs.
pub fn kvm_stats_moved(
    pid: u32,
    before: &BTreeMap<String, u64>,
) -> serde_json::Map<String, serde_json::Value> {
    kvm_stats(pid)
        .into_iter()
        .filter_map(|(name, value)| {
            let moved = value.saturating_sub(before.get(&name).copied().unwrap_or(0));
            (moved > 0).then(|| (name, moved.into()))
        })
        .collect()
}

/// The median of sorted `samples` (NaN for none).
fn median_of_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median of `samples` (NaN for none).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

/// Median, min and max of `samples` (ms), with the samples, for a result file.
pub fn spread(samples: &[f64]) -> serde_json::Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    serde_json::json!({
        "median": median_of_sorted(&sorted),
        "min": sorted.first().copied().unwrap_or(f64::NAN),
        "max": sorted.last().copied().unwrap_or(f64::NAN),
        "n": sorted.len(),
        "samples": samples,
    })
}
