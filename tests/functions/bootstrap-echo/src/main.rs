//! The conformance function (see `tests/functions/README.md`) on our `bootstrap` library, so the
//! library's loop is checked by the same cases as the third-party runtimes.

use bootstrap::{Context, Function, HandlerError};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

struct Echo;

/// This process's execution-environment id: 16 random hex digits, drawn once.
fn environment_id() -> Result<String, HandlerError> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
    let id = random
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(ID.get_or_init(|| id).clone())
}

impl Function for Echo {
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError> {
        let payload: Value = serde_json::from_slice(event)?;
        let reply = match payload.get("action").and_then(Value::as_str) {
            // Echo the bytes as they came, not a re-serialization of them.
            None => return Ok(event.to_vec()),
            Some("error") => {
                let message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("failed");
                return Err(HandlerError::new("EchoError", message));
            }
            Some("sleep") => {
                let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                json!({ "slept": ms })
            }
            Some("crash") => std::process::exit(3),
            Some("log") => {
                let message = payload.get("message").and_then(Value::as_str).unwrap_or("");
                println!("{message}");
                json!({ "logged": message })
            }
            // For the function-host tests: which execution environment answered. The id is
            // drawn on first use, after any SnapStart restore, so restored copies differ.
            Some("whoami") => {
                let sleep = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(sleep));
                // The network namespace tells apart hosts that each run in one of their own
                // (the cluster tests).
                let netns = std::fs::read_link("/proc/self/ns/net")
                    .map(|link| link.to_string_lossy().into_owned())
                    .ok();
                json!({ "environment": environment_id()?, "tag": payload.get("tag"), "netns": netns })
            }
            // For the cluster tests: sleeps `ms`, then leaves a file named by the request id in
            // `dir` (one per run, so a second run of one event shows as a second file).
            Some("mark") => {
                let sleep = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(sleep));
                let dir = payload.get("dir").and_then(Value::as_str).unwrap_or(".");
                let name = format!("{}.{}", ctx.request_id, environment_id()?);
                let mut path = std::path::PathBuf::from(dir).join(&name);
                let mut n = 0;
                while path.exists() {
                    n += 1;
                    path = std::path::PathBuf::from(dir).join(format!("{name}.{n}"));
                }
                std::fs::write(&path, b"")
                    .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
                json!({ "marked": name })
            }
            Some("context") => json!({
                "request_id": ctx.request_id,
                "function_arn": ctx.invoked_function_arn,
                "deadline_ms": ctx.deadline_ms,
                "trace_id": ctx.trace_id,
                "env_trace_id": std::env::var("_X_AMZN_TRACE_ID").ok(),
                "function_name": ctx.env_config.function_name,
                "memory_mb": ctx.env_config.memory_mb,
            }),
            // For the SnapStart tests: what must differ between restored copies of one
            // snapshot (fresh kernel randomness) and what must be right in each (the clock).
            Some("unique") => {
                let mut random = [0u8; 16];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
                    .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
                json!({ "random": hex, "time_ms": now })
            }
            // For the memory tests: more memory than the function has.
            Some("alloc") => {
                let mb = payload.get("mb").and_then(Value::as_u64).unwrap_or(0);
                // A MiB at a time, each touched page by page, so that the memory is really
                // taken and no one allocation is refused outright (which would abort instead).
                let mut held = Vec::new();
                for _ in 0..mb {
                    let mut chunk = vec![0u8; 1 << 20];
                    for page in chunk.chunks_mut(4096) {
                        page[0] = 1;
                    }
                    held.push(chunk);
                }
                json!({ "allocated": held.len() })
            }
            // For the flood tests: what a hostile function can do to its own Runtime API.
            Some("flood") => {
                let connections = payload.get("connections").and_then(Value::as_u64);
                let hold = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                flood(connections.unwrap_or(0), Duration::from_millis(hold))?
            }
            Some("big") => {
                let bytes = payload.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                let bytes = usize::try_from(bytes)
                    .map_err(|_| HandlerError::new("EchoError", "bytes is too large"))?;
                Value::String("a".repeat(bytes))
            }
            // For the payload benchmark (scripts/bench-payload.sh) and the cold-start one's
            // vsock round trips (scripts/bench-coldstart.sh): the vsock device's own rate,
            // without the host link. Connects to the host's vsock port `port`, then `rounds`
            // times (1 unless given) reads `bytes` bytes and sends them back.
            Some("vsock") => {
                let port = payload.get("port").and_then(Value::as_u64).unwrap_or(0);
                let bytes = payload.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                let rounds = payload.get("rounds").and_then(Value::as_u64).unwrap_or(1);
                let failed = |e: std::io::Error| HandlerError::new("EchoError", e.to_string());
                let port = u32::try_from(port)
                    .map_err(|_| HandlerError::new("EchoError", "port is out of range"))?;
                let bytes = usize::try_from(bytes)
                    .map_err(|_| HandlerError::new("EchoError", "bytes is too large"))?;
                vsock_echo(port, bytes, rounds).map_err(failed)?;
                json!({ "echoed": bytes, "rounds": rounds })
            }
            Some(other) => {
                return Err(HandlerError::new(
                    "EchoError",
                    format!("unknown action {other}"),
                ))
            }
        };
        Ok(serde_json::to_vec(&reply)?)
    }

    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        eprintln!("conformance: before_snapshot");
        Ok(())
    }

    fn after_restore(&mut self) -> Result<(), HandlerError> {
        eprintln!("conformance: after_restore");
        Ok(())
    }
}

/// Opens `connections` connections to the Runtime API, sends each a request cut short (half
/// of them inside the headers, half inside a body), holds them all for `hold`, and says how
/// many connected and how many the server had closed by then.
fn flood(connections: u64, hold: Duration) -> Result<Value, HandlerError> {
    use std::io::{Read, Write};
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|e| HandlerError::new("EchoError", e.to_string()))?;
    let addr: std::net::SocketAddr = api
        .parse()
        .map_err(|e| HandlerError::new("EchoError", format!("{api}: {e}")))?;
    let mut open = Vec::new();
    let mut refused = 0u64;
    for n in 0..connections {
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        else {
            refused += 1;
            continue;
        };
        let partial: &[u8] = if n % 2 == 0 {
            b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n"
        } else {
            b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"
        };
        if stream.write_all(partial).is_ok() {
            open.push(stream);
        }
    }
    std::thread::sleep(hold);
    let mut closed = 0u64;
    for stream in &mut open {
        let _ = stream.set_nonblocking(true);
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    Ok(json!({ "connected": open.len(), "refused": refused, "closed": closed }))
}

/// Connects to the host (CID 2) on vsock `port`, then `rounds` times reads `bytes` bytes and
/// writes them back.
fn vsock_echo(port: u32, bytes: usize, rounds: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let mut stream = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value to fill in.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).unwrap_or(40);
    address.svm_cid = 2;
    address.svm_port = port;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).unwrap_or(16);
    // SAFETY: connect(2) reads `len` bytes of the sockaddr_vm it is given, which lives here.
    let connected = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(address).cast::<libc::sockaddr>(),
            len,
        )
    };
    if connected != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut data = vec![0u8; bytes];
    for _ in 0..rounds {
        stream.read_exact(&mut data)?;
        stream.write_all(&data)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    bootstrap::run(|| {
        if std::env::var("ECHO_FAIL_INIT").as_deref() == Ok("1") {
            return Err(HandlerError::new(
                "EchoInitError",
                "init failed on purpose (ECHO_FAIL_INIT=1)",
            ));
        }
        Ok(Echo)
    })
}
