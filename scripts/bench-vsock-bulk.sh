#!/usr/bin/env bash
# Bulk bytes over virtio-vsock between the host and a guest, our `vmm` side by side with
# Firecracker (the reference VMM), in one run: is the device's rate ours, or this machine's?
#
# Both VMMs boot the same vmlinux (scripts/build-kernel.sh), the same initramfs, the same
# kernel command line (our vmm's default for this host, vmm/src/builder.rs), with the same vCPU
# count and memory, from the same Firecracker-style configuration file (`--config-file`;
# Firecracker with `--no-api`). The initramfs holds one static program as /init
# (benches/src/bin/vsock_bulk_guest.rs): it listens on vsock port 5000 and, per connection,
# reads an 8-byte little-endian length N, reads N bytes, writes them back and closes. Nothing
# else runs in the guest. The host connects through the VMM's vsock Unix socket (`CONNECT
# 5000`), sends the length and N bytes while reading the N bytes back, and times from the first
# byte sent to the last byte received. The runs alternate between the VMMs, both booted at once,
# so a change in the machine's load falls on both. MB/s counts both directions (2 N bytes), as
# scripts/bench-payload.sh does.
#
# Without FIRECRACKER, only our vmm is measured.
#
# Usage: [FIRECRACKER=/path/to/firecracker] scripts/bench-vsock-bulk.sh [--sizes "1 5"] [--runs N]
#                                                                         [--mem-mib 128]
#        (sizes in MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

sizes="1 5"
runs=3
mem_mib=128
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="${2:?}"; shift ;;
        --runs) runs="${2:?}"; shift ;;
        --mem-mib) mem_mib="${2:?}"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
. scripts/lib/vsock-guest.sh

# Writes NAME.json, a Firecracker-style configuration with NAME.vsock as the vsock socket.
write_config() {
    cat >"$work/$1.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "$kernel",
    "initrd_path": "$initramfs",
    "boot_args": "$boot_args"
  },
  "drives": [],
  "machine-config": {"vcpu_count": 1, "mem_size_mib": $mem_mib},
  "vsock": {"guest_cid": 3, "uds_path": "$work/$1.vsock"}
}
JSON
}

# Boots NAME with COMMAND..., its console in NAME.console.
boot() {
    local name="$1"
    shift
    write_config "$name"
    "$@" --config-file "$work/$name.json" >"$work/$name.console" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}

vmms=(vmm)
boot vmm "$target/release/vmm"
if [ -n "$firecracker" ]; then
    vmms+=(firecracker)
    # No API socket; seccomp off (a gnu build has no filter of its own for it to install).
    boot firecracker "$firecracker" --no-api --no-seccomp
fi
for name in "${vmms[@]}"; do
    step "booting $name (a Linux boot: tens of seconds here)"
    pid_var="pid_$name"
    wait_listening "$name" "${!pid_var}" "$work/$name.console"
done

step "measuring: ${vmms[*]}, sizes $sizes MiB, $runs runs each (runs alternate between the VMMs)"
python3 - "$work" "$runs" "$sizes" "${vmms[@]}" <<'PY'
import os, socket, statistics, struct, sys, threading, time

work, runs, sizes, vmms = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split()], sys.argv[4:]
PORT = 5000

def exchange(vmm, n):
    """Seconds from the first byte sent to the last byte received, for n bytes each way."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(1800)
    conn.connect(os.path.join(work, f"{vmm}.vsock"))
    conn.sendall(f"CONNECT {PORT}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise SystemExit(f"{vmm}: the vsock socket closed before its OK line")
        line += byte
    if not line.startswith(b"OK "):
        raise SystemExit(f"{vmm}: CONNECT answered {line!r}")
    data = os.urandom(n)
    failure = []
    def send():
        try:
            conn.sendall(struct.pack("<Q", n) + data)
        except OSError as e:
            failure.append(e)
    start = time.monotonic()
    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    while len(got) < n:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise SystemExit(f"{vmm}: the guest closed after {len(got)} of {n} bytes")
        got += chunk
    elapsed = time.monotonic() - start
    sender.join()
    if failure:
        raise SystemExit(f"{vmm}: sending failed: {failure[0]}")
    if bytes(got) != data:
        raise SystemExit(f"{vmm}: the guest sent back other bytes")
    # The guest closes after its answer; wait for that so the next connection is served at once.
    conn.recv(1)
    conn.close()
    return elapsed

times = {(vmm, mib): [] for vmm in vmms for mib in sizes}
for mib in sizes:
    for run in range(runs):
        for vmm in vmms:
            elapsed = exchange(vmm, mib << 20)
            times[(vmm, mib)].append(elapsed)
            print(f"  {vmm} {mib} MiB run {run + 1}: {elapsed:.2f} s", file=sys.stderr, flush=True)

print(f"| VMM | size | runs (s) | median (s) | MB/s (2 N / median) |")
print(f"|---|---|---|---|---|")
for mib in sizes:
    for vmm in vmms:
        samples = times[(vmm, mib)]
        median = statistics.median(samples)
        listed = ", ".join(f"{t:.2f}" for t in samples)
        print(f"| {vmm} | {mib} MiB | {listed} | {median:.2f} | {2 * (mib << 20) / median / 1e6:.3f} |")
PY
