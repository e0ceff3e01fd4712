#!/usr/bin/env bash
# System calls per invoke on the guest side, beside latency: the guest's `init` runs as an
# ordinary process on the host (`--host-link unix:PATH`, as its tests run it), with our echo
# function (tests/functions/bootstrap-echo) as its runtime; a small host written here in Python
# speaks the host-link frames (proto::host_link) and drives N sequential invokes through it.
#
#   1. latency: N invokes without strace; median and p99 of the host link round trip
#      (Invoke frame written to Response frame read).
#   2. system calls: the same under `strace -f -ttt`; the calls made while the N measured
#      invokes ran (start-up, warm-up and shutdown excluded by time) are counted per process
#      (init, and the runtime it spawned) and divided by N.
#
# Inside a microVM every guest system call runs through this machine's instruction emulator, so
# these counts are what the warm path pays there (BENCHMARKS.md, issue 13).
#
# Usage: scripts/bench-init-syscalls.sh [N]     (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

invokes="${1:-2000}"
ensure_apt_packages strace python3
ensure_cargo
step "building init and bootstrap-echo (release)"
cargo build --quiet --release -p init -p bootstrap-echo
target="$(cargo_target_dir)"
work="${KEEP_WORK:-$(mktemp -d)}"
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
cat >"$work/function.json" <<JSON
{"function_name": "bench", "handler": "echo", "runtime": "$target/release/bootstrap-echo",
 "memory_mb": 128, "timeout_secs": 10}
JSON

# Runs the host side: listens on $work/link, starts init (behind the wrapper words given), drives
# warm-up and measured invokes, writes the measured window and round trips, shuts init down.
drive() {
    python3 - "$work" "$invokes" "$target/release/init" "$@" <<'PY'
import base64, json, os, socket, struct, subprocess, sys, time
work, n, init, wrapper = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
path = os.path.join(work, "link")
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(1)
log = open(os.path.join(work, "init.log"), "w")
child = subprocess.Popen(
    wrapper + [init, "--config", os.path.join(work, "function.json"),
               "--host-link", "unix:" + path, "--runtime-api", "127.0.0.1:0",
               "--task-root", work],
    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
listener.settimeout(60)
conn, _ = listener.accept()
conn.settimeout(60)
reader = conn.makefile("rb")

def send(message):
    body = json.dumps(message).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)

def receive():
    (length,) = struct.unpack(">I", reader.read(4))
    return json.loads(reader.read(length))

send({"hello": {"version": 2, "agent": "bench-init-syscalls"}})
hello = receive()
assert "hello" in hello, hello

event = b'{"n":1}'
def invoke(i):
    request_id = f"bench-{i}"
    send({"invoke": {"request_id": request_id, "event": base64.b64encode(event).decode()}})
    while True:
        message = receive()
        answer = message.get("response") if isinstance(message, dict) else None
        if answer and answer["request_id"] == request_id:
            assert base64.b64decode(answer["body"]) == event, answer
            return
        if isinstance(message, dict) and "error" in message:
            raise SystemExit(f"invoke failed: {message}")

for i in range(50):
    invoke(f"warm-{i}")
round_trips = []
window_start = time.time()
for i in range(n):
    t0 = time.perf_counter()
    invoke(i)
    round_trips.append(time.perf_counter() - t0)
window_end = time.time()
send("shutdown")
child.wait(timeout=60)
with open(os.path.join(work, "window"), "w") as f:
    f.write(f"{window_start} {window_end}\n")
with open(os.path.join(work, "round-trips"), "w") as f:
    f.write("".join(f"{t * 1e6:.1f}\n" for t in round_trips))
PY
}

step "1. latency: $invokes invokes through init's host link, no tracing"
drive
python3 - "$work/round-trips" <<'PY'
import sys
times = sorted(float(line) for line in open(sys.argv[1]))
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"   round trip: median {pick(0.5) / 1000:.3f} ms, p99 {pick(0.99) / 1000:.3f} ms "
      f"({len(times)} invokes)")
PY

step "2. system calls per invoke under strace -f ($invokes invokes)"
drive strace -f -ttt -qq -o "$work/trace"
python3 - "$work/trace" "$work/window" "$invokes" <<'PY'
import collections, os, re, sys
trace, window, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
start, end = map(float, open(window).read().split())
# "PID TIME name(args..." starts a call; "PID TIME <... name resumed>..." ends a split one.
line_re = re.compile(r"^(\d+) +([\d.]+) +(?:<\.\.\. (\w+) resumed>|(\w+)\()")
process_of = {}          # tid -> process (the tid of its first thread)
name_of = {}             # process -> what it runs
pending_flags = {}       # tid -> flags of a clone not yet returned
counts = collections.defaultdict(collections.Counter)
first = None
for line in open(trace):
    m = line_re.match(line)
    if not m:
        continue
    tid, when = int(m.group(1)), float(m.group(2))
    resumed, call = m.group(3), m.group(4)
    if first is None:
        first = tid
        process_of[tid], name_of[tid] = tid, "init"
    process = process_of.setdefault(tid, tid)
    name = resumed or call
    if name in ("clone", "clone3", "fork", "vfork"):
        flags = pending_flags.pop(tid, "") + line
        done = re.search(r"= (\d+)$", line.rstrip())
        if done:
            child = int(done.group(1))
            process_of[child] = process if "CLONE_THREAD" in flags else child
        else:
            pending_flags[tid] = flags
    if name == "execve" and call and process != first:
        exe = re.match(r'\d+ +[\d.]+ +execve\("([^"]*)"', line)
        if exe:
            name_of[process] = os.path.basename(exe.group(1))
    if call and start <= when <= end:
        counts[process][call] += 1
total = 0
for process, counter in counts.items():
    calls = sum(counter.values())
    total += calls
    label = name_of.get(process, f"pid {process}")
    print(f"   {label}: {calls / n:.1f} per invoke")
    for call, k in counter.most_common():
        if k / n >= 0.05:
            print(f"      {call:<16} {k / n:6.2f}")
print(f"   total: {total / n:.1f} per invoke")
PY
