//! What the fuzz targets share: round-trip checks, the virtio driver that lays queues out in
//! guest memory, and the in-memory HTTP connection.

pub mod http;
pub mod virtio;

use proto::host_link::{self, Message};

/// A decoded host-link message must encode to a frame that decodes to the same message.
pub fn assert_round_trip(message: &Message) {
    let frame = host_link::encode(message).expect("a decoded message encodes");
    let body = &frame[host_link::LEN_PREFIX..];
    let again = host_link::decode(body).expect("an encoded message decodes");
    assert_eq!(&again, message);
}

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// A path for this process's scratch file or socket `name` (fuzz jobs run side by side).
/// Under /dev/shm where there is one: the targets that write files (and sync them) then run at
/// memory speed.
pub fn scratch_path(name: &str) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("lambda-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir.join(name)
}

/// The guest's vsock CID in the vsock targets.
pub const GUEST_CID: u64 = 3;
/// The host ports with a service listening (`<uds>_<port>`): the host link's, and one more.
pub const HOST_PORTS: [u32; 2] = [proto::host_link::PORT, 52];

/// The host side of the vsock targets: services on [`HOST_PORTS`] that accept the guest's
/// connections, greet them and read what they send.
pub struct VsockHost {
    pub uds_path: PathBuf,
    listeners: Vec<UnixListener>,
    accepted: Vec<UnixStream>,
}

/// The process's vsock host (its sockets are bound once).
pub fn vsock_host() -> std::sync::MutexGuard<'static, VsockHost> {
    static HOST: OnceLock<Mutex<VsockHost>> = OnceLock::new();
    let host = HOST.get_or_init(|| {
        let uds_path = scratch_path("vsock.sock");
        let listeners = HOST_PORTS
            .iter()
            .map(|port| {
                let mut path = uds_path.clone().into_os_string();
                path.push(format!("_{port}"));
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).expect("host service socket");
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            })
            .collect();
        Mutex::new(VsockHost {
            uds_path,
            listeners,
            accepted: Vec::new(),
        })
    });
    host.lock().unwrap_or_else(|e| e.into_inner())
}

impl VsockHost {
    /// Accepts the guest's new connections, greets each and reads what arrived.
    pub fn serve(&mut self) {
        for listener in &self.listeners {
            while let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(true);
                self.accepted.push(stream);
            }
        }
        let mut buf = [0u8; 4096];
        for stream in &mut self.accepted {
            let _ = stream.write(b"hello from the host\n");
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    }

    /// Serves once more, then closes every connection, so that the next input starts afresh.
    pub fn serve_and_drop(&mut self) {
        self.serve();
        self.accepted.clear();
    }
}

// The guest init's host-link module, compiled from init's own source (init is a binary crate
// with no library to depend on), with the one module it uses.
#[path = "../../init/src/host_link.rs"]
#[allow(dead_code)]
pub mod init_host_link;
#[path = "../../init/src/sys.rs"]
#[allow(dead_code)]
mod sys;

/// `data` with every `from` replaced by `to`.
pub fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}
