//! OOM kills as the kernel's log reports them, for an environment that is the whole machine: a
//! microVM's guest, where no cgroup counts kills and every process but init is the function's,
//! so every kill the kernel logs is the function running out of memory.
//!
//! `/dev/kmsg` is opened at its end and read only when the kernel has a new record (it is
//! watched by the reactor), so an invocation costs no system call for it; a runtime that
//! died is looked up once more with a direct read, in case its kill's record has not been
//! read yet.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the kernel logs for each process its OOM killer kills (`mm/oom_kill.c`).
const KILL_RECORD: &str = "Killed process ";

/// The kernel log's count of OOM kills since it was opened.
pub struct KernelOomLog {
    kmsg: Mutex<File>,
    kills: AtomicU64,
}

impl std::fmt::Debug for KernelOomLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelOomLog")
            .field("kills", &self.kills.load(Ordering::Relaxed))
            .finish()
    }
}

impl KernelOomLog {
    /// Opens `/dev/kmsg` at its end and watches it (within a tokio runtime).
    pub fn open() -> std::io::Result<Arc<KernelOomLog>> {
        use std::os::unix::fs::OpenOptionsExt;
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg")?;
        // SAFETY: lseek(2) on a descriptor `kmsg` owns; for /dev/kmsg, SEEK_END moves past
        // every record logged so far.
        if unsafe { libc::lseek(kmsg.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let watched = kmsg.try_clone()?;
        let log = Arc::new(KernelOomLog {
            kmsg: Mutex::new(kmsg),
            kills: AtomicU64::new(0),
        });
        let watched = std::os::fd::OwnedFd::from(watched);
        // SAFETY: the `AsyncFd` owns the descriptor, so it stays open and the same for the
        // `AsyncFd`'s whole life.
        let readiness = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(watched, tokio::io::Interest::READABLE)
        }?;
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            while let Ok(mut ready) = readiness.readable().await {
                let Some(log) = weak.upgrade() else {
                    return;
                };
                log.read_new();
                ready.clear_ready();
            }
        });
        Ok(log)
    }

    /// The kills counted so far (what the watch has read).
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::Acquire)
    }

    /// The kills counted after reading whatever the kernel has logged by now.
    pub fn kills_by_now(&self) -> u64 {
        self.read_new();
        self.kills()
    }

    /// Reads every new record (one per read), counting the kills among them.
    fn read_new(&self) {
        let mut kmsg = self.kmsg.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = [0u8; 8192];
        loop {
            match kmsg.read(&mut record) {
                Ok(0) => return,
                Ok(n) => {
                    if is_kill(&record[..n]) {
                        self.kills.fetch_add(1, Ordering::AcqRel);
                    }
                }
                // Records were overwritten before they were read: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Whether a `/dev/kmsg` record (`PRIORITY,SEQ,TIME,FLAGS;MESSAGE`) reports an OOM kill.
fn is_kill(record: &[u8]) -> bool {
    let text = String::from_utf8_lossy(record);
    let message = text.split_once(';').map_or(&*text, |(_, m)| m);
    message.contains(KILL_RECORD) && message.to_ascii_lowercase().contains("out of memory")
}

#[cfg(test)]
mod tests {
    #[test]
    fn kill_records_are_recognised() {
        let kill = b"3,1234,5678,-;Out of memory: Killed process 812 (bootstrap-echo) total-vm:268000kB, anon-rss:120000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:300kB oom_score_adj:0\n";
        assert!(super::is_kill(kill));
        let memcg = b"3,9,9,-;Memory cgroup out of memory: Killed process 1 (x) total-vm:1kB\n";
        assert!(super::is_kill(memcg));
        assert!(!super::is_kill(b"6,1,2,-;init: host link up\n"));
        assert!(!super::is_kill(b"4,1,2,-;Killed process group\n"));
    }
}
