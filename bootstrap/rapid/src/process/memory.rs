//! The memory high-water mark of a runtime, for REPORT's `Max Memory Used`.
//!
//! Lambda reports its cgroup's peak. Without a cgroup of our own, the closest figure a process
//! can read is `VmHWM` (peak resident set) in `/proc/<pid>/status`; we take the largest over the
//! runtime's process group, so a runtime that forks its worker (a shell script, a wrapper) is
//! measured by the worker.

/// The largest `VmHWM` among the processes of group `pgid`, in MB (rounded up); 0 when none is
/// left.
pub fn max_memory_used_mb(pgid: i32) -> u64 {
    if pgid <= 0 {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let peak_kb = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_group_of(pid) == Some(pgid))
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            vm_hwm_kb(&status)
        })
        .max()
        .unwrap_or(0);
    peak_kb.div_ceil(1024)
}

/// The `VmHWM` field of a `/proc/<pid>/status` text, in kB.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_group_is_found() {
        // SAFETY: getpid/getpgrp have no preconditions.
        let (pid, pgid) = unsafe { (libc::getpid(), libc::getpgrp()) };
        assert_eq!(process_group_of(pid), Some(pgid));
        assert!(max_memory_used_mb(pgid) > 0);
        assert_eq!(max_memory_used_mb(0), 0);
    }

    #[test]
    fn vm_hwm_is_parsed_and_absent_for_kernel_threads() {
        assert_eq!(
            vm_hwm_kb("Name:\tx\nVmHWM:\t   40960 kB\nVmRSS:\t1 kB\n"),
            Some(40960)
        );
        assert_eq!(vm_hwm_kb("Name:\tkthreadd\nState:\tS\n"), None);
    }
}
