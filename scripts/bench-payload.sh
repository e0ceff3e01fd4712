#!/usr/bin/env bash
# Large payloads in a microVM, side by side in one run (BENCHMARKS.md): for each size, the
# vsock device's own rate (the echo function connects to a host vsock port, the host sends N
# bytes, the guest reads them all and sends them back: no host link, no Runtime API), then
# the same N bytes as an invoke of the echo function through lambda-vm (host link over that
# vsock device, guest init, the Runtime API in the guest, the runtime, and back). The ratio of
# the two is what the host link and the guest's Runtime API path cost on top of the device.
#
# Usage: scripts/bench-payload.sh [--sizes "1 5"] [--runs N]   (sizes in MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

sizes="1 5"
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="${2:?}"; shift ;;
        --runs) runs="${2:?}"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
function_dir="$(stage_rust_echo_function snap-start)"
rootfs="$(scripts/build-rootfs.sh "$function_dir" --ext4 | tail -n1)"
step "building vmm and lambda-vm (release)"
cargo build --quiet --release -p vmm -p lambda-vm --bins
target="$(cargo_target_dir)"
work="$(mktemp -d)"
log="$work/service.log"
# Unjailed, so this script may put its own socket beside the environment's; no network, which
# the benchmark does not use. The function's timeout is raised so a slow path is measured
# rather than cut off.
config="$work/function.json"
sed 's/"timeout_secs": [0-9]*/"timeout_secs": 300/' "$function_dir/function.json" >"$config"
"$target/release/lambda-vm" --kernel "$kernel" --rootfs "$rootfs" --function-config "$config" \
    --listen 127.0.0.1:0 --no-jail --no-network --work-dir "$work" --state-dir "$work/state" \
    >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q "lambda-vm: ready" "$log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "lambda-vm exited"; }
    sleep 0.1
done
addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$log")
step "first invoke: boot, SnapStart snapshot, restore"
curl -sS --max-time 900 -o /dev/null -d '{}' "http://$addr/2015-03-31/functions/function/invocations"

python3 - "$addr" "$work" "$runs" $sizes <<'PY'
import glob, json, os, socket, statistics, sys, threading, time, urllib.request

addr, work, runs, sizes = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4:]]
url = f"http://{addr}/2015-03-31/functions/function/invocations"
PORT = 5555

def invoke(body):
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=900) as reply:
        return reply.read()

def raw(n):
    """The host sends n bytes over the environment's vsock device, the guest reads them and
    sends them back; seconds from the guest's connection to the last byte back."""
    (uds,) = glob.glob(os.path.join(work, "lambda-vm-*", "0", "env-*", "vsock.sock"))
    path = f"{uds}_{PORT}"
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    event = json.dumps({"action": "vsock", "port": PORT, "bytes": n}).encode()
    answer = {}
    caller = threading.Thread(target=lambda: answer.update(body=invoke(event)))
    caller.start()
    conn, _ = listener.accept()
    data = os.urandom(n)
    start = time.monotonic()
    sender = threading.Thread(target=conn.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < n:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise SystemExit("the guest closed early")
        got += chunk
    elapsed = time.monotonic() - start
    sender.join()
    caller.join()
    conn.close()
    listener.close()
    os.unlink(path)
    assert bytes(got) == data, "the guest sent back other bytes"
    assert json.loads(answer["body"]).get("echoed") == n, answer
    return elapsed

def link(n):
    """An invoke of the echo function whose event is n bytes of JSON, echoed back."""
    body = json.dumps({"pad": "x" * (n - 11)}).encode()
    start = time.monotonic()
    back = invoke(body)
    elapsed = time.monotonic() - start
    assert back == body, f"echo differs ({len(back)} bytes back for {len(body)})"
    return elapsed

print(f"{'size':>6} {'vsock device, both ways':>24} {'echo invoke':>12} {'ratio':>6}")
for mib in sizes:
    n = mib << 20
    device = statistics.median(raw(n) for _ in range(runs))
    echo = statistics.median(link(n) for _ in range(runs))
    print(f"{mib:>4}MB {device:>20.2f} s {2 * n / device / 1e6:5.1f} MB/s "
          f"{echo:>7.2f} s {echo / device:>5.1f}x", flush=True)
PY
grep -E "REPORT" "$log" | tail -n 2 | sed 's/^/   /'
