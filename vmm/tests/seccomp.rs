//! The `vmm`'s real seccomp filters, each installed in a forked child of this test: calls on a
//! thread kind's list go through, and a call off it (made directly by the child with
//! `libc::syscall`, the way a hijacked thread would) kills the process with SIGSYS. The filters
//! working in a whole `vmm` (boot, restore, invoke, snapshot) are the microVM tests' job: they
//! run with the filters on, the default.

use vmm::seccomp::{allowed_syscalls, Filters, ThreadKind};

/// How the forked child ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signal(i32),
}

/// Forks; the child installs `kind`'s filter, makes the call `call`, and exits 0 if it returns.
fn in_child(filters: &Filters, kind: ThreadKind, call: impl Fn()) -> Ended {
    // SAFETY: the child runs only system calls and `Filters::install`, which does not allocate
    // on success (prctl and seccomp on a program compiled before the fork); it leaves with
    // `_exit`, running no destructor or atexit handler of the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        if filters.install(kind).is_err() {
            // SAFETY: ends the child at once, see above.
            unsafe { libc::_exit(100) };
        }
        call();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

fn syscall0(nr: libc::c_long) {
    // SAFETY: a system call without arguments or memory effects on this process.
    unsafe { libc::syscall(nr) };
}

/// `ioctl(-1, request)`: EBADF if the filter lets it through.
fn ioctl_on_nothing(request: libc::c_ulong) {
    // SAFETY: fd -1 is invalid, so the kernel touches no memory; only the filter matters.
    unsafe { libc::ioctl(-1, request, 0) };
}

fn socket(domain: libc::c_int) {
    // SAFETY: creates a socket (closed at the child's exit); no memory is passed.
    unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
}

const KVM_CREATE_VM: libc::c_ulong = 0xae01;

#[test]
fn each_thread_kind_dies_by_sigsys_on_a_call_outside_its_filter() {
    let filters = Filters::compile().expect("the filters compile");
    for kind in ThreadKind::ALL {
        let allowed = in_child(&filters, kind, || syscall0(libc::SYS_getpid));
        assert_eq!(allowed, Ended::Exited(0), "{kind:?}: getpid is allowed");
        // Nothing in the vmm starts programs: a hijacked thread must not either.
        let execve = in_child(&filters, kind, || {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            // SAFETY: valid NUL-terminated path and NULL-terminated argument vectors.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        });
        assert_eq!(execve, Ended::Signal(libc::SIGSYS), "{kind:?}: execve");
        let getppid = in_child(&filters, kind, || syscall0(libc::SYS_getppid));
        assert_eq!(getppid, Ended::Signal(libc::SIGSYS), "{kind:?}: getppid");
        // ioctl is allowed by request number only: a new VM is not one of them anywhere.
        let create_vm = in_child(&filters, kind, || ioctl_on_nothing(KVM_CREATE_VM));
        assert_eq!(
            create_vm,
            Ended::Signal(libc::SIGSYS),
            "{kind:?}: ioctl KVM_CREATE_VM"
        );
    }
}

#[test]
fn argument_filters_tell_allowed_from_forbidden_uses_of_one_call() {
    let filters = Filters::compile().expect("the filters compile");
    let kvm_run = 0xae80;
    assert_eq!(
        in_child(&filters, ThreadKind::Vcpu, || ioctl_on_nothing(kvm_run)),
        Ended::Exited(0),
        "KVM_RUN on a vCPU thread"
    );
    assert_eq!(
        in_child(&filters, ThreadKind::Main, || ioctl_on_nothing(kvm_run)),
        Ended::Signal(libc::SIGSYS),
        "KVM_RUN on the main thread"
    );
    assert_eq!(
        in_child(&filters, ThreadKind::EventLoop, || socket(libc::AF_UNIX)),
        Ended::Exited(0),
        "a Unix socket on the device thread"
    );
    assert_eq!(
        in_child(&filters, ThreadKind::EventLoop, || socket(libc::AF_INET)),
        Ended::Signal(libc::SIGSYS),
        "an IP socket on the device thread"
    );
    assert_eq!(
        in_child(&filters, ThreadKind::Vcpu, || socket(libc::AF_UNIX)),
        Ended::Signal(libc::SIGSYS),
        "a socket on a vCPU thread"
    );
    // The API thread reads clients' bytes: it may neither make sockets nor open files.
    assert_eq!(
        in_child(&filters, ThreadKind::Api, || socket(libc::AF_UNIX)),
        Ended::Signal(libc::SIGSYS),
        "a socket on the API thread"
    );
    assert_eq!(
        in_child(&filters, ThreadKind::Api, || {
            let _ = std::fs::File::open("/etc/hostname");
        }),
        Ended::Signal(libc::SIGSYS),
        "opening a file on the API thread"
    );
}

#[test]
fn allowed_system_call_counts() {
    for kind in ThreadKind::ALL {
        let count = allowed_syscalls(kind);
        eprintln!("{}: {count} system calls allowed", kind.name());
        assert!(count > 0 && count < 60, "{kind:?}: {count}");
    }
}
