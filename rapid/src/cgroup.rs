//! The runtime's cgroup, where the environment confines its runtimes: the `cgroups` crate with
//! the `cgroups` feature (local mode), and types that cannot exist without it (inside a microVM,
//! where the VM is the sandbox, and the guest's init does not compile any cgroup code). The code
//! that uses a cgroup is the same either way: without the feature, `EnvironmentConfig::cgroups`
//! can only be `None`.

use std::time::Duration;

/// Lambda's limit on processes and threads in one execution environment.
pub const MAX_PROCESSES: u32 = 1024;

#[cfg(feature = "cgroups")]
pub use cgroups::{Cgroup, CgroupError, Cgroups};

#[cfg(feature = "cgroups")]
const _: () = assert!(cgroups::MAX_PROCESSES == MAX_PROCESSES);

/// Kills what is left in `cgroup` and removes it, waiting on tokio's timer (up to `limit`) for
/// its processes to exit; false if some outlived it (the next server's start removes them).
pub async fn remove(cgroup: Cgroup, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cgroup.try_remove() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(not(feature = "cgroups"))]
pub use absent::{Cgroup, CgroupError, Cgroups};

/// Without the feature: types with no values, so every method is unreachable by construction.
#[cfg(not(feature = "cgroups"))]
mod absent {
    use std::fs::File;
    use std::path::Path;
    use std::time::Duration;

    #[derive(Debug)]
    pub enum Cgroups {}

    #[derive(Debug)]
    pub enum Cgroup {}

    #[derive(Debug, thiserror::Error)]
    pub enum CgroupError {}

    impl Cgroups {
        pub fn create(&self, _memory_mb: u32) -> Result<Cgroup, CgroupError> {
            match *self {}
        }
    }

    impl Cgroup {
        pub fn path(&self) -> &Path {
            match *self {}
        }
        pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
            match *self {}
        }
        pub fn peak_bytes(&self) -> Option<u64> {
            match *self {}
        }
        pub fn oom_kills(&self) -> u64 {
            match *self {}
        }
        pub fn process_limit_hits(&self) -> u64 {
            match *self {}
        }
        pub fn kill(&self) {
            match *self {}
        }
        pub fn try_remove(&self) -> bool {
            match *self {}
        }
        pub fn remove_within(self, _limit: Duration) -> bool {
            match self {}
        }
    }
}
