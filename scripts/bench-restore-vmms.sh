#!/usr/bin/env bash
# Snapshot restore in a fresh process, our `vmm` side by side with Firecracker (the reference
# VMM), in one run: restore → first guest answer, each VMM from a snapshot it took itself of the
# same guest (Firecracker cannot load our snapshot format, nor we its).
#
# Both VMMs are given the same things, through the same Firecracker API calls on an API socket
# (`--api-sock`, `curl --unix-socket`): PUT /machine-config (1 vCPU, 128 MiB), PUT /boot-source
# with the same vmlinux (scripts/build-kernel.sh), the same initramfs and the same kernel command
# line (our vmm's default for this host, vmm/src/builder.rs), PUT /vsock (CID 3, a Unix socket of
# its own), then PUT /actions InstanceStart. The initramfs holds one static program as /init
# (benches/src/bin/vsock_bulk_guest.rs, as in scripts/bench-vsock-bulk.sh): it listens on vsock
# port 5000 and, per connection, reads an 8-byte little-endian length N, N bytes, writes them back
# and closes. Once it prints its listening line: PATCH /vm Paused, PUT /snapshot/create (Full),
# and that process is stopped. Firecracker runs with `--no-seccomp` (a build from source without
# its seccomp filters has none to install); our vmm with its defaults.
#
# Then N runs, alternating between the VMMs (which goes first alternates too): a FRESH process
# with `--api-sock` only; the time from its start until GET / on the socket answers 200; then
# PUT /snapshot/load {"snapshot_path", "mem_backend": {"backend_type": "File", ...},
# "resume_vm": true}, timed; then a connection to the restored VM's vsock Unix socket (the
# `uds_path` kept in the snapshot, removed before each load so the new process can bind it),
# `CONNECT 5000`, a length of 1 and one byte, timed until the byte comes back. The process is
# killed after each run. Per VMM: median and min–max of process start → API ready, the
# snapshot/load call, load → first guest answer, and process start → first guest answer. A
# markdown table goes to stdout, every sample to --json PATH if given (with, in each, the time
# from the load to the guest's accepting the connection, the `OK` line). The memory files sit in
# the page cache (each was just written), for both VMMs alike.
#
# Without FIRECRACKER, only our vmm is measured.
#
# Usage: [FIRECRACKER=/path/to/firecracker] scripts/bench-restore-vmms.sh [--runs N] [--json PATH]
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

runs=10
json=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?}"; shift ;;
        --json) json="$(cd "$caller" && realpath -m "${2:?}")"; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number, not $runs"
. scripts/lib/vsock-guest.sh
command -v curl >/dev/null || ensure_apt_packages curl
[ -z "$json" ] || json="$(realpath -m "$json")"
trap 'exit 130' INT TERM

# api SOCKET METHOD PATH [BODY]: one Firecracker API call; logs it and its answer to stderr and
# dies unless the answer is 204 No Content.
api() {
    local sock="$1" method="$2" path="$3" body="${4:-}" code
    code=$(curl -sS --unix-socket "$sock" -X "$method" "http://localhost$path" \
        -H 'Content-Type: application/json' ${body:+-d "$body"} \
        -o "$work/answer" -w '%{http_code}') || die "$method $path: curl failed"
    printf '    %s %s %s -> %s %s\n' "$method" "$path" "$body" "$code" "$(cat "$work/answer")" >&2
    [ "$code" = 204 ] || die "$method $path answered $code: $(cat "$work/answer")"
}

# Waits up to 10 s for the API socket SOCKET of process PID to answer GET /.
wait_api() {
    local sock="$1" pid="$2" _
    for _ in $(seq 1000); do
        curl -sf --unix-socket "$sock" http://localhost/ >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || die "the process exited before its API answered"
        sleep 0.01
    done
    die "the API socket $sock did not answer within 10 s"
}

# snapshot NAME COMMAND...: boots the guest in COMMAND --api-sock NAME.boot.api (console in
# NAME.boot.console), waits for its listening line, pauses it, writes NAME.state and NAME.mem
# (vsock socket NAME.vsock, kept in the snapshot) and stops the process.
snapshot() {
    local name="$1" pid sock="$work/$1.boot.api" console="$work/$1.boot.console" _
    shift
    step "$name: booting the guest through the API (a Linux boot: tens of seconds here)"
    "$@" --api-sock "$sock" >"$console" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_api "$sock" "$pid"
    api "$sock" PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
    api "$sock" PUT /boot-source "{\"kernel_image_path\": \"$kernel\", \"initrd_path\": \"$initramfs\", \"boot_args\": \"$boot_args\"}"
    api "$sock" PUT /vsock "{\"guest_cid\": 3, \"uds_path\": \"$work/$name.vsock\"}"
    api "$sock" PUT /actions '{"action_type": "InstanceStart"}'
    wait_listening "$name" "$pid" "$console"
    step "$name: pausing and snapshotting"
    api "$sock" PATCH /vm '{"state": "Paused"}'
    api "$sock" PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$work/$name.state\", \"mem_file_path\": \"$work/$name.mem\"}"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -s "$work/$name.state" ] && [ -s "$work/$name.mem" ] || die "$name wrote no snapshot"
}

vmms=(vmm)
snapshot vmm "$target/release/vmm"
if [ -n "$firecracker" ]; then
    vmms+=(firecracker)
    snapshot firecracker "$firecracker" --no-seccomp
fi

step "measuring: ${vmms[*]}, $runs restores each, alternating (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$work" "$runs" "$json" "$target/release/vmm" "$firecracker" <<'PY' &
import ctypes, http.client, json, os, signal, socket, statistics, struct, subprocess, sys, time

work, runs, json_path, ours, firecracker = sys.argv[1:6]
runs = int(runs)
commands = {"vmm": [ours]}
if firecracker:
    commands["firecracker"] = [firecracker, "--no-seccomp"]
vmms = list(commands)
PORT = 5000
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
libc = ctypes.CDLL(None, use_errno=True)

def die_with_parent():
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the VMM goes if this script is killed

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)

def request(sock, method, path, body=None):
    conn = UnixConnection(sock)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    finally:
        conn.close()

def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

def restore(vmm, run):
    api, vsock = f"{work}/{vmm}.api", f"{work}/{vmm}.vsock"
    remove(api)
    remove(vsock)  # the restored process binds the uds_path kept in the snapshot
    console = open(f"{work}/{vmm}.restore.console", "wb")
    def fail(message):
        console.flush()
        with open(console.name, "rb") as f:
            tail = f.read()[-3000:].decode(errors="replace")
        raise SystemExit(f"{vmm} run {run}: {message}\n--- its output:\n{tail}")
    start = time.monotonic()
    proc = subprocess.Popen(commands[vmm] + ["--api-sock", api], stdout=console,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    try:
        while True:
            try:
                status, body = request(api, "GET", "/")
                if status == 200:
                    break
                fail(f"GET / answered {status}: {body}")
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode} before its API answered")
            if time.monotonic() - start > 10:
                fail("its API did not answer within 10 s")
            time.sleep(0.001)
        api_ready = time.monotonic()
        status, body = request(api, "PUT", "/snapshot/load", {
            "snapshot_path": f"{work}/{vmm}.state",
            "mem_backend": {"backend_type": "File", "backend_path": f"{work}/{vmm}.mem"},
            "resume_vm": True,
        })
        loaded = time.monotonic()
        if status != 204:
            fail(f"PUT /snapshot/load answered {status}: {body}")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        while True:
            try:
                conn.connect(vsock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() - loaded > 10:
                    fail(f"no vsock socket {vsock} within 10 s of the load")
                time.sleep(0.0005)
        conn.sendall(f"CONNECT {PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                fail(f"the vsock socket closed before its OK line (got {line!r})")
            line += byte
        if not line.startswith(b"OK "):
            fail(f"CONNECT answered {line!r}")
        connected = time.monotonic()  # the guest accepted: its OK line
        conn.sendall(struct.pack("<Q", 1) + b"R")
        got = conn.recv(1)
        answered = time.monotonic()
        if got != b"R":
            fail(f"the guest answered {got!r}, not b'R'")
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        console.close()
    ms = lambda a, b: round((b - a) * 1000, 3)
    return {"vmm": vmm, "run": run, "api_ready_ms": ms(start, api_ready),
            "load_ms": ms(api_ready, loaded), "load_to_answer_ms": ms(loaded, answered),
            "load_to_connect_ok_ms": ms(loaded, connected),
            "start_to_answer_ms": ms(start, answered)}

samples = []
for run in range(1, runs + 1):
    order = vmms if run % 2 else vmms[::-1]
    for vmm in order:
        s = restore(vmm, run)
        samples.append(s)
        print(f"  {vmm} run {run}: API ready {s['api_ready_ms']:.1f} ms, load {s['load_ms']:.1f} ms, "
              f"load → CONNECT OK {s['load_to_connect_ok_ms']:.1f} ms, "
              f"load → answer {s['load_to_answer_ms']:.1f} ms, start → answer "
              f"{s['start_to_answer_ms']:.1f} ms", file=sys.stderr, flush=True)

metrics = [("api_ready_ms", "process start → API ready"), ("load_ms", "PUT /snapshot/load"),
           ("load_to_answer_ms", "load → first guest answer"),
           ("start_to_answer_ms", "process start → first guest answer")]
summary = {}
print(f"{runs} restores each; ms, median (min–max)\n")
print("| VMM | " + " | ".join(title for _, title in metrics) + " |")
print("|---|" + "---|" * len(metrics))
for vmm in vmms:
    cells = []
    summary[vmm] = {}
    for key, _ in metrics:
        values = [s[key] for s in samples if s["vmm"] == vmm]
        median = statistics.median(values)
        summary[vmm][key] = {"median": median, "min": min(values), "max": max(values)}
        cells.append(f"{median:.1f} ({min(values):.1f}–{max(values):.1f})")
    print(f"| {vmm} | " + " | ".join(cells) + " |")
if json_path:
    os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"runs": runs, "commands": {v: [os.path.basename(commands[v][0])] + commands[v][1:] + ["--api-sock", "PATH"] for v in vmms},
                   "loadavg": open("/proc/loadavg").read().split()[:3],
                   "summary": summary, "samples": samples}, f, indent=2)
        f.write("\n")
    print(f"\nsamples in {json_path}", file=sys.stderr)
PY
py=$!
pids=("$py" "${pids[@]}")
wait "$py"
