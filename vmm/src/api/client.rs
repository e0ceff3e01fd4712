//! A blocking client of the API over its Unix socket, one request at a time on a kept-alive
//! connection: what a program that drives `vmm` processes (the function host, the tests) calls
//! instead of signals, exit codes and log lines.

use super::types::{
    ActionType, InstanceActionInfo, InstanceInfo, MemoryBackend, MemoryBackendType,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmRunState, VmStateUpdate, VmmStatus,
    VsockOverride,
};
use crate::config::{BootSource, Drive, Entropy, MachineConfig, NetworkInterface, Serial, Vsock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the vmm API at {path}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the vmm API")]
    Io(#[from] std::io::Error),
    #[error("the vmm API answered with malformed HTTP: {0}")]
    Http(String),
    /// The request was refused: its status and Firecracker's `fault_message`.
    #[error("{method} {path}: {status}: {message}")]
    Refused {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("decoding the answer to {path}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

/// An answer: its status and body (empty for `204`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct ApiClient {
    path: PathBuf,
    stream: Option<UnixStream>,
    timeout: Duration,
}

/// Answers are at most this big (a `GET /vm/config` is a few KiB).
const MAX_REPLY_BYTES: usize = 1 << 20;

impl ApiClient {
    /// A client of the socket at `path`; it connects on the first request. Each request may
    /// take up to `timeout` (a snapshot of a large guest takes a while).
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> ApiClient {
        ApiClient {
            path: path.into(),
            stream: None,
            timeout,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Connects, retrying until the socket accepts or `timeout` has passed: for a `vmm` that
    /// was just started and may not have bound its socket yet.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.path) {
                Ok(stream) => {
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClientError::Connect {
                        path: self.path.clone(),
                        source: e,
                    })
                }
                // A fresh vmm binds within milliseconds: a short retry keeps that visible.
                Err(_) => std::thread::sleep(Duration::from_micros(250)),
            }
        }
    }

    /// Sends one request and reads its answer, whatever the status.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        // A kept connection the server closed (it was idle the longest) fails on first use:
        // one retry on a fresh one.
        match self.exchange(&bytes) {
            Ok(reply) => Ok(reply),
            Err(ClientError::Io(_)) if self.stream.take().is_some() => self.exchange(&bytes),
            Err(e) => Err(e),
        }
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Reply, ClientError> {
        if self.stream.is_none() {
            let stream =
                UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(ClientError::Http("no connection".into()));
        };
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.write_all(request)?;
        let (reply, keep) = read_reply(stream)?;
        if !keep {
            self.stream = None;
        }
        Ok(reply)
    }

    /// A request whose success is `204` (or `200`), anything else an error.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let reply = self.request(method, path, body)?;
        if reply.status == 200 || reply.status == 204 {
            return Ok(reply);
        }
        let message = serde_json::from_slice::<super::types::Fault>(&reply.body)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).into_owned());
        Err(ClientError::Refused {
            method: method.to_owned(),
            path: path.to_owned(),
            status: reply.status,
            message,
        })
    }

    fn put<T: Serialize>(&mut self, method: &str, path: &str, body: &T) -> Result<(), ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })?;
        self.call(method, path, Some(&body)).map(|_| ())
    }

    fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ClientError> {
        let reply = self.call("GET", path, None)?;
        serde_json::from_slice(&reply.body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// `GET /`.
    pub fn instance_info(&mut self) -> Result<InstanceInfo, ClientError> {
        self.get("/")
    }

    /// `GET /ext/status` (extension): state, why the guest stopped, timings, last snapshot.
    pub fn status(&mut self) -> Result<VmmStatus, ClientError> {
        self.get("/ext/status")
    }

    /// `GET /machine-config`.
    pub fn machine_config(&mut self) -> Result<MachineConfig, ClientError> {
        self.get("/machine-config")
    }

    pub fn put_machine_config(&mut self, config: &MachineConfig) -> Result<(), ClientError> {
        self.put("PUT", "/machine-config", config)
    }

    pub fn put_boot_source(&mut self, boot: &BootSource) -> Result<(), ClientError> {
        self.put("PUT", "/boot-source", boot)
    }

    pub fn put_drive(&mut self, drive: &Drive) -> Result<(), ClientError> {
        let path = format!("/drives/{}", drive.drive_id);
        self.put("PUT", &path, drive)
    }

    pub fn put_network_interface(&mut self, iface: &NetworkInterface) -> Result<(), ClientError> {
        let path = format!("/network-interfaces/{}", iface.iface_id);
        self.put("PUT", &path, iface)
    }

    pub fn put_vsock(&mut self, vsock: &Vsock) -> Result<(), ClientError> {
        self.put("PUT", "/vsock", vsock)
    }

    pub fn put_entropy(&mut self) -> Result<(), ClientError> {
        self.put("PUT", "/entropy", &Entropy {})
    }

    pub fn put_serial(&mut self, serial: &Serial) -> Result<(), ClientError> {
        self.put("PUT", "/serial", serial)
    }

    fn action(&mut self, action_type: ActionType) -> Result<(), ClientError> {
        self.put("PUT", "/actions", &InstanceActionInfo { action_type })
    }

    /// `InstanceStart`: boots what was configured.
    pub fn start(&mut self) -> Result<(), ClientError> {
        self.action(ActionType::InstanceStart)
    }

    pub fn send_ctrl_alt_del(&mut self) -> Result<(), ClientError> {
        self.action(ActionType::SendCtrlAltDel)
    }

    pub fn flush_metrics(&mut self) -> Result<(), ClientError> {
        self.action(ActionType::FlushMetrics)
    }

    pub fn pause(&mut self) -> Result<(), ClientError> {
        let state = VmRunState::Paused;
        self.put("PATCH", "/vm", &VmStateUpdate { state })
    }

    pub fn resume(&mut self) -> Result<(), ClientError> {
        let state = VmRunState::Resumed;
        self.put("PATCH", "/vm", &VmStateUpdate { state })
    }

    /// A full snapshot of the paused VM: the state to `snapshot_path`, memory to
    /// `mem_file_path`, and the manifest (`crate::snapshot::manifest`) beside the state.
    pub fn create_snapshot(
        &mut self,
        snapshot_path: &Path,
        mem_file_path: &Path,
    ) -> Result<(), ClientError> {
        let params = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: snapshot_path.to_owned(),
            mem_file_path: mem_file_path.to_owned(),
        };
        self.put("PUT", "/snapshot/create", &params)
    }

    /// Restores a snapshot in this (not yet started) `vmm`, with a new vsock socket if
    /// `vsock_uds` is given, running at once if `resume`.
    pub fn load_snapshot(
        &mut self,
        snapshot_path: &Path,
        mem_file_path: &Path,
        vsock_uds: Option<&Path>,
        resume: bool,
    ) -> Result<(), ClientError> {
        let params = SnapshotLoadParams {
            snapshot_path: snapshot_path.to_owned(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem_file_path.to_owned(),
            }),
            resume_vm: resume,
            vsock_override: vsock_uds.map(|path| VsockOverride {
                uds_path: path.to_owned(),
            }),
            ..SnapshotLoadParams::default()
        };
        self.load_snapshot_with(&params)
    }

    /// `PUT /snapshot/load` with every parameter.
    pub fn load_snapshot_with(&mut self, params: &SnapshotLoadParams) -> Result<(), ClientError> {
        self.put("PUT", "/snapshot/load", params)
    }

    /// `PUT /ext/working-set` (an extension), before the load: the working-set file the
    /// next snapshot load reads in.
    pub fn put_working_set(&mut self, path: &Path) -> Result<(), ClientError> {
        let config = super::types::WorkingSetConfig {
            path: path.to_owned(),
        };
        self.put("PUT", "/ext/working-set", &config)
    }

    /// `GET /ext/working-set` (an extension): the pages the restored guest has touched.
    pub fn working_set(&mut self) -> Result<crate::snapshot::working_set::WorkingSet, ClientError> {
        self.get("/ext/working-set")
    }
}

/// Reads one response; returns it and whether the connection stays open.
fn read_reply(stream: &mut UnixStream) -> Result<(Reply, bool), ClientError> {
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        input.extend_from_slice(&chunk[..n]);
        if input.len() > MAX_REPLY_BYTES {
            return Err(ClientError::Http("answer too large".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(ClientError::Http(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        if status == 100 {
            input.drain(..head_len);
            continue;
        }
        let mut length = 0usize;
        let mut keep = true;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| ClientError::Http("bad Content-Length".into()))?;
            } else if header.name.eq_ignore_ascii_case("connection") {
                keep = !header.value.eq_ignore_ascii_case(b"close");
            }
        }
        if length > MAX_REPLY_BYTES {
            return Err(ClientError::Http("answer too large".into()));
        }
        while input.len() < head_len + length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            input.extend_from_slice(&chunk[..n]);
        }
        let body = input[head_len..head_len + length].to_vec();
        return Ok((Reply { status, body }, keep));
    }
}
