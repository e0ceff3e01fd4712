//! Forking `vmm` processes that die with the service, however it dies: `PR_SET_PDEATHSIG` from
//! long-lived spawner threads (the signal follows the forking *thread*), and a lifeline pipe for
//! the moment between fork and that `prctl`.

use crate::jail::JailHost;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

/// How many threads fork `vmm` processes: starts of a burst go in parallel.
const SPAWNERS: usize = 4;

/// Spawns `command` so that it is killed when this service dies, however it dies
/// (`PR_SET_PDEATHSIG`); with `pid_namespace`, in a new PID namespace of that jail host. The
/// signal fires when the *thread* that forked the child ends, so every `vmm` is forked by one of
/// [`SPAWNERS`] threads that live as long as the process (and whose PID namespace for children
/// is their own to change).
pub(crate) fn spawn_dying_with_us(
    mut command: Command,
    pid_namespace: Option<Arc<JailHost>>,
) -> std::io::Result<Child> {
    type Request = (
        Command,
        Option<Arc<JailHost>>,
        mpsc::Sender<std::io::Result<Child>>,
    );
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let lifeline = lifeline()?;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl(2), close(2) and poll(2) are plain system calls on integers and
    // a stack array, and nothing here allocates.
    unsafe {
        command.pre_exec(move || {
            let signal = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The service may have died between fork and prctl: then no signal ever comes.
            // Its end of the lifeline is then closed everywhere (the child's copy goes now),
            // which a poll sees as a hang-up. getppid(2) cannot tell: in a new PID namespace
            // the parent is outside and always reads as 0.
            libc::close(lifeline.alive);
            let mut watch = [libc::pollfd {
                fd: lifeline.watch,
                events: libc::POLLIN,
                revents: 0,
            }];
            if libc::poll(watch.as_mut_ptr(), 1, 0) != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        let incoming = Arc::new(Mutex::new(incoming));
        for n in 0..SPAWNERS {
            let incoming = Arc::clone(&incoming);
            let started = std::thread::Builder::new()
                .name(format!("vmm-spawner-{n}"))
                .spawn(move || loop {
                    // The lock is held only to take a request, not while spawning it.
                    let next = incoming.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((mut command, pid_namespace, reply)) = next else {
                        return;
                    };
                    let spawned = match pid_namespace {
                        Some(host) => host.in_new_pid_namespace(|| command.spawn()),
                        None => command.spawn(),
                    };
                    let _ = reply.send(spawned);
                });
            if let Err(e) = started {
                log::error!("cannot start a vmm spawner thread: {e}");
            }
        }
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    let sent =
        spawner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, pid_namespace, reply));
    sent.map_err(|_| std::io::Error::other("the vmm spawner threads are gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the vmm spawner threads are gone"))?
}

/// A pipe nobody writes to, whose write end (`alive`) only this process keeps open: a child
/// polling the read end (`watch`) sees a hang-up once this process is gone.
#[derive(Clone, Copy)]
struct Lifeline {
    watch: libc::c_int,
    alive: libc::c_int,
}

fn lifeline() -> std::io::Result<Lifeline> {
    static LIFELINE: OnceLock<Result<Lifeline, i32>> = OnceLock::new();
    let made = LIFELINE.get_or_init(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given; both are
        // close-on-exec, so no `vmm` keeps them, and they live as long as the process.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(Lifeline {
            watch: fds[0],
            alive: fds[1],
        })
    });
    made.map_err(std::io::Error::from_raw_os_error)
}
