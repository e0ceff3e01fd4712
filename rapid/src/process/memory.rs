//! The memory high-water mark of a runtime, for REPORT's `Max Memory Used`.
//!
//! Lambda reports its cgroup's peak. Without a cgroup of our own, the closest figure a process
//! can read is `VmHWM` (peak resident set) in `/proc/<pid>/status`; we take the largest over the
//! runtime and its descendants, so a runtime that forks its worker (a shell script, a wrapper)
//! is measured by the worker. The descendants are found from the runtime down
//! (`/proc/<pid>/task/<tid>/children`), so the work is the sandbox's size, never the host's: a
//! host with thousands of processes costs an invoke nothing more.

/// Most processes looked at in one sandbox: a fork bomb is not measured to the end.
const MAX_PROCESSES: usize = 256;

/// The largest `VmHWM` among `root` and its descendants, in MB (rounded up); 0 when none is
/// left.
pub fn max_memory_used_mb(root: i32) -> u64 {
    let Ok(root) = u32::try_from(root) else {
        return 0;
    };
    if root == 0 {
        return 0;
    }
    let (mut peak_kb, mut pending, mut looked) = (0, vec![root], 0);
    while let Some(pid) = pending.pop() {
        if looked == MAX_PROCESSES {
            break;
        }
        looked += 1;
        if let Some(kb) = proc_info::read_status_kb(pid, "VmHWM") {
            peak_kb = peak_kb.max(kb);
        }
        pending.extend(proc_info::children(pid));
    }
    peak_kb.div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_measured_with_its_parent() {
        // A child that touches 64 MB: the tree's peak is at least that, whatever ours is.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "python3 -c 'import time; b = b\"x\" * (64 << 20); time.sleep(5)'",
            ])
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut peak = 0;
        while peak < 64 && std::time::Instant::now() < deadline {
            peak = max_memory_used_mb(me);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(peak >= 64, "{peak} MB");
        assert_eq!(max_memory_used_mb(0), 0);
    }

    #[test]
    fn vm_hwm_is_parsed_and_absent_for_kernel_threads() {
        let vm_hwm_kb = |status| proc_info::status_kb(status, "VmHWM");
        assert_eq!(
            vm_hwm_kb("Name:\tx\nVmHWM:\t   40960 kB\nVmRSS:\t1 kB\n"),
            Some(40960)
        );
        assert_eq!(vm_hwm_kb("Name:\tkthreadd\nState:\tS\n"), None);
    }
}
