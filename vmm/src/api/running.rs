//! What the API does to a running VM: pause and resume, full snapshots, metrics lines. The
//! controller (`super::controller`) calls these only once the VM has started.

use super::types::{SnapshotCreateParams, SnapshotType, Timings, VmRunState};
use super::ApiResponse;
use crate::microvm::Microvm;
use crate::snapshot::manifest::SnapshotManifest;
use crate::snapshot::{self, SnapshotPaths};
use logging::Chain;
use std::fs::File;
use std::io::Write;
use std::time::Instant;

fn refuse(message: impl AsRef<str>) -> ApiResponse {
    ApiResponse::fault(400, message.as_ref())
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// What a post-boot request may change besides the VM.
pub(super) struct ControllerState<'a> {
    pub metrics: &'a mut Option<File>,
    pub timings: &'a mut Timings,
    pub last_snapshot: &'a mut Option<SnapshotManifest>,
    pub requests: u64,
    pub refused: u64,
}

impl ControllerState<'_> {
    pub fn set_run_state(&mut self, vm: &mut Microvm, state: VmRunState) -> ApiResponse {
        match state {
            VmRunState::Paused => {
                let started = Instant::now();
                vm.pause();
                self.timings.pause_ms = Some(ms_since(started));
            }
            VmRunState::Resumed => vm.resume(),
        }
        ApiResponse::no_content()
    }

    pub fn create_snapshot(
        &mut self,
        vm: &mut Microvm,
        params: &SnapshotCreateParams,
    ) -> ApiResponse {
        if params.snapshot_type == SnapshotType::Diff {
            return refuse("snapshot_type Diff is not supported by this VMM: use Full");
        }
        if !vm.is_paused() {
            return refuse("the microVM must be paused to create a snapshot (PATCH /vm)");
        }
        let paths = SnapshotPaths {
            state: params.snapshot_path.clone(),
            memory: params.mem_file_path.clone(),
        };
        let started = Instant::now();
        match snapshot::create_files(vm, &paths) {
            Ok(manifest) => {
                self.timings.snapshot_create_ms = Some(ms_since(started));
                *self.last_snapshot = Some(manifest);
                ApiResponse::no_content()
            }
            Err(e) => refuse(format!("creating the snapshot: {}", Chain(&e))),
        }
    }

    /// One JSON line: what this VMM counts.
    pub fn flush_metrics(&mut self, vm: &Microvm) -> ApiResponse {
        let Some(file) = self.metrics.as_mut() else {
            return refuse("metrics are not configured (PUT /metrics before boot)");
        };
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = serde_json::json!({
            "utc_timestamp_ms": u64::try_from(timestamp_ms).unwrap_or(u64::MAX),
            "api_server": { "requests": self.requests, "refused": self.refused },
            "vm": { "paused": vm.is_paused() },
            "timings_ms": self.timings,
        });
        let mut text = line.to_string();
        text.push('\n');
        match file.write_all(text.as_bytes()) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => refuse(format!("writing the metrics: {e}")),
        }
    }
}
