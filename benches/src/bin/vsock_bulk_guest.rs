//! The guest side of `scripts/bench-vsock-bulk.sh`: a tiny `/init` (PID 1) for an initramfs
//! that measures how fast a VMM's virtio-vsock device moves bulk bytes, with nothing else in the
//! guest (no init, no Runtime API, no other process).
//!
//! It listens on AF_VSOCK port 5000 (any CID) and takes connections one after another. On each:
//! it reads an 8-byte little-endian length N, then N bytes, then writes the same N bytes back and
//! closes the connection. It prints one line to the console once it listens. Bad input (a short
//! read, a length over [`MAX_LEN`], a closed peer) ends that connection, never the program: PID 1
//! must not exit. If it cannot listen at all, it says so and reboots the guest (`reboot=k` makes
//! that reach the VMM, which then exits).
//!
//! Build: `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p benches
//! --bin vsock_bulk_guest --target x86_64-unknown-linux-gnu`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// The vsock port the guest listens on.
const PORT: u32 = 5000;
/// The largest length accepted: the guest holds the whole message in memory (a 128 MiB guest).
const MAX_LEN: u64 = 64 << 20;

/// Gives PID 1 a console when the initramfs has no `/dev/console` (the kernel then starts init
/// with no descriptors 0-2): mounts devtmpfs on `/dev` and opens the console there. Best effort.
fn ensure_console() {
    // SAFETY: fcntl(2) F_GETFD only reads a descriptor's flags.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0 {
        return;
    }
    let _ = std::fs::create_dir_all("/dev");
    // SAFETY: mount(2) with NUL-terminated constant strings and no data.
    unsafe {
        libc::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    // SAFETY: open(2) with a NUL-terminated constant path.
    let fd = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        return;
    }
    for target in 0..3 {
        if fd != target {
            // SAFETY: dup2(2) onto descriptors 0-2, which this process does not use otherwise.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: `fd` was opened above and has been duplicated; nothing else uses it.
        unsafe { libc::close(fd) };
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "vsock_bulk_guest: {line}");
    let _ = out.flush();
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
fn listen(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value to fill in.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).unwrap_or(40);
    address.svm_cid = libc::VMADDR_CID_ANY;
    address.svm_port = port;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).unwrap_or(16);
    // SAFETY: bind(2) reads `len` bytes of the sockaddr_vm it is given, which lives here.
    let bound = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(address).cast::<libc::sockaddr>(),
            len,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(fd, 16) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// The next connection on `listener`.
fn accept(listener: &OwnedFd) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept4(2) on a listening socket this program owns; no peer address is asked for,
    // so null pointers are allowed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4(2) and is owned by nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One exchange: the length, the bytes, the same bytes back.
fn echo(stream: &mut File) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let len = u64::from_le_bytes(header);
    if len > MAX_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("length {len} is over {MAX_LEN}"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    data.resize(len, 0);
    stream.read_exact(&mut data)?;
    stream.write_all(&data)?;
    stream.flush()
}

fn main() {
    ensure_console();
    let listener = match listen(PORT) {
        Ok(listener) => listener,
        Err(e) => {
            say(&format!(
                "cannot listen on vsock port {PORT}: {e}; rebooting"
            ));
            // SAFETY: reboot(2) with a constant command; as PID 1 there is nothing to clean up.
            unsafe { libc::reboot(libc::RB_AUTOBOOT) };
            loop {
                std::thread::park();
            }
        }
    };
    say(&format!("listening on vsock port {PORT}"));
    let mut served = 0u64;
    loop {
        let mut stream = match accept(&listener) {
            Ok(stream) => stream,
            Err(e) => {
                say(&format!("accept: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        served += 1;
        // Only failures are printed: a console line costs guest kernel time here, and the
        // host's clock stops at the last byte it receives, which the guest may still be sending.
        if let Err(e) = echo(&mut stream) {
            say(&format!("connection {served}: {e}"));
        }
    }
}
