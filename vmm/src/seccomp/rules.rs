//! What each thread kind may call. The lists come from running boot, restore, invoke and
//! snapshot under `strace -f` (thread names from `prctl(PR_SET_NAME)`), plus the error and
//! exit paths read from the code; see the `vmm` README for the method and the counts.

use super::ThreadKind;
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_list, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

const KVMIO: u32 = 0xae;

/// An ioctl request number, as the kernel's `_IOC` macro builds it.
fn ioc<T>(dir: u32, nr: u32) -> u64 {
    let size = u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX);
    ioctl_expr(dir, KVMIO, nr, size)
}

fn kvm_run() -> u64 {
    ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0)
}

fn kvm_get_regs() -> u64 {
    ioc::<kvm_regs>(_IOC_READ, 0x81)
}

/// What a snapshot reads from KVM, on the main thread, after the vCPUs stopped.
fn kvm_snapshot_ioctls() -> Vec<u64> {
    let rw = _IOC_READ | _IOC_WRITE;
    vec![
        ioc::<kvm_msr_list>(rw, 0x02),           // KVM_GET_MSR_INDEX_LIST
        kvm_get_regs(),                          // KVM_GET_REGS
        ioc::<kvm_sregs>(_IOC_READ, 0x83),       // KVM_GET_SREGS
        ioc::<kvm_msrs>(rw, 0x88),               // KVM_GET_MSRS
        ioc::<kvm_lapic_state>(_IOC_READ, 0x8e), // KVM_GET_LAPIC
        ioc::<kvm_cpuid2>(rw, 0x91),             // KVM_GET_CPUID2
        ioc::<kvm_mp_state>(_IOC_READ, 0x98),    // KVM_GET_MP_STATE
        ioc::<kvm_vcpu_events>(_IOC_READ, 0x9f), // KVM_GET_VCPU_EVENTS
        ioc::<kvm_xsave>(_IOC_READ, 0xa4),       // KVM_GET_XSAVE
        ioc::<kvm_xcrs>(_IOC_READ, 0xa6),        // KVM_GET_XCRS
        ioc::<kvm_irqchip>(rw, 0x62),            // KVM_GET_IRQCHIP
        ioc::<kvm_pit_state2>(_IOC_READ, 0x9f),  // KVM_GET_PIT2
        ioc::<kvm_clock_data>(_IOC_READ, 0x7c),  // KVM_GET_CLOCK
    ]
}

/// Every thread: memory, locks, time, signal return, logging to stderr, closing, exiting.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The main thread after the VM started: stop the vCPUs (signal them), read their and the VM's
/// state, write the snapshot (a directory or the API's two files) atomically, append metrics,
/// exit.
const MAIN: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_renameat,
    libc::SYS_read,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// The device thread: epoll, eventfds, block I/O, the vsock muxer's Unix sockets, entropy, and
/// the network device's tap (read and written here; opened by the main thread before the
/// filters).
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getrandom,
];

/// The API thread: poll its socket, connections and eventfd; accept, read, write, close.
const API: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_writev,
    libc::SYS_shutdown,
];

/// Equality of argument `arg` (a 32-bit value) with `value`.
fn arg_is(arg: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values.iter().map(|&v| arg_is(arg, v)).collect()
}

/// `fcntl` for what std does with descriptors: read and set the close-on-exec and status flags,
/// duplicate with close-on-exec.
fn fcntl_rules() -> Result<Vec<SeccompRule>, BackendError> {
    let commands = [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_SETFL,
        libc::F_DUPFD_CLOEXEC,
    ];
    any_of(1, &commands.map(|c| u64::from(c.unsigned_abs())))
}

fn signal_number(signal: i32) -> u64 {
    u64::from(signal.unsigned_abs())
}

/// The filter rules of `kind`: each allowed system call with its argument conditions (none:
/// any arguments).
pub(super) fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut rules: Rules = COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.insert(libc::SYS_fcntl, fcntl_rules()?);
    match kind {
        ThreadKind::Main => {
            rules.extend(MAIN.iter().map(|&nr| (nr, Vec::new())));
            rules.insert(libc::SYS_ioctl, any_of(1, &kvm_snapshot_ioctls())?);
            // Only the vCPU kick (to stop them for a snapshot or at exit).
            rules.insert(
                libc::SYS_tgkill,
                vec![arg_is(2, signal_number(libc::SIGRTMIN()))?],
            );
        }
        ThreadKind::EventLoop => {
            rules.extend(EVENT_LOOP.iter().map(|&nr| (nr, Vec::new())));
            // Host ends of vsock connections are Unix sockets; nothing else is opened here.
            rules.insert(
                libc::SYS_socket,
                vec![arg_is(0, u64::from(libc::AF_UNIX.unsigned_abs()))?],
            );
            // Accepted host clients are made non-blocking.
            rules.insert(libc::SYS_ioctl, any_of(1, &[libc::FIONBIO])?);
        }
        ThreadKind::Api => {
            rules.extend(API.iter().map(|&nr| (nr, Vec::new())));
            // Accepted clients are made non-blocking (std's set_nonblocking).
            rules.insert(libc::SYS_ioctl, any_of(1, &[libc::FIONBIO])?);
        }
        ThreadKind::Vcpu => {
            // KVM_GET_REGS is for the crash report's instruction pointer; TUNSETOFFLOAD is
            // the network device's activation, which runs on the vCPU that writes DRIVER_OK.
            rules.insert(
                libc::SYS_ioctl,
                any_of(1, &[kvm_run(), kvm_get_regs(), libc::TUNSETOFFLOAD])?,
            );
        }
    }
    Ok(rules)
}

/// How many system calls `kind` may make (each counted once, whatever its argument rules).
pub fn allowed_syscalls(kind: ThreadKind) -> usize {
    rules(kind).map(|r| r.len()).unwrap_or(0)
}
