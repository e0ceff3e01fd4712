#!/usr/bin/env bash
# The microVM warm invoke path, broken down (BENCHMARKS.md, issue 13). The echo function
# (tests/functions/bootstrap-echo, static, ext4 image) in a provisioned microVM of `lambda-vm
# --eager`; a keep-alive Python client sends N sequential invokes after a warm-up.
#
#   1. plain: timing off. Client round trip, the guest's REPORT Duration, and the two's
#      difference (what the platform adds to the function), medians.
#   2. timed: the same with `lambda-vm --log-level debug`, which logs one timing line per invoke
#      (host_link.rs) and boots the guest with INIT_TIMING=1, so that init sends its own
#      intervals (init/src/timing.rs). Each interval is measured on one clock:
#        host (wall clock, client and lambda-vm alike): request sent → Invoke frame written →
#          answer frame read → response received;
#        guest (its monotonic clock): Invoke frame read → /next answered → outcome ready →
#          answer frame written; and REPORT's Duration (/next answered → response posted).
#      "vsock and VMM" is the host's frame-out-to-frame-back less the guest's frame-in-to-out.
#   3. with --compare DIR (repeatable): step 1 with the lambda-vm binary and echo image of
#      another checkout built in DIR (target/release/lambda-vm, target/rootfs/rust-echo.ext4
#      and target/functions/rust-echo/function.json, as its own scripts build them), taking
#      turns with step 1 (R rounds), so that all are measured in one run on the same machine.
#
# Usage: scripts/bench-warm-path.sh [--invokes N] [--rounds R] [--compare DIR]...
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

invokes=30
rounds=1
compare=()
while [ $# -gt 0 ]; do
    case "$1" in
        --invokes) invokes="${2:?}"; shift ;;
        --rounds) rounds="${2:?}"; shift ;;
        --compare) compare+=("$(cd "$caller" && cd "${2:?}" && pwd)"); shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
ensure_apt_packages python3
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
function_dir="$(stage_rust_echo_function)"
rootfs="$(scripts/build-rootfs.sh "$function_dir" --ext4 | tail -n1)"
step "building vmm and lambda-vm (release)"
cargo build --quiet --release -p vmm -p lambda-vm --bins
target="$(cargo_target_dir)"
for dir in "${compare[@]}"; do
    for f in target/release/lambda-vm target/rootfs/rust-echo.ext4 target/functions/rust-echo/function.json; do
        [ -e "$dir/$f" ] || die "--compare $dir: $f is missing"
    done
done
work="$(mktemp -d)"
server=""
stop() { [ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; server=""; }; }
trap 'stop; rm -rf "$work"' EXIT

# measure NAME LAMBDA_VM IMAGE CONFIG [FLAG...]: boots a provisioned environment, runs the
# client, and leaves NAME.client (request id, client start and end in epoch us), NAME.out
# (REPORT lines) and NAME.err (lambda-vm's own lines) in $work.
measure() {
    local name="$1" binary="$2" image="$3" config="$4"
    shift 4
    step "$name: booting a provisioned microVM"
    "$binary" --kernel "$kernel" --rootfs "$image" --function-config "$config" \
        --listen 127.0.0.1:0 --eager --work-dir "$work" --console "$work/$name.console" "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    server=$!
    # The current lambda-vm says its environment is ready; the one of 42e0d8e said "microVM up".
    until cat "$work/$name.out" "$work/$name.err" 2>/dev/null |
        grep -qE "provisioned environment ready|microVM up"; do
        kill -0 "$server" 2>/dev/null || { cat "$work/$name.err" >&2; die "lambda-vm exited"; }
        sleep 0.1
    done
    local addr
    addr=$(cat "$work/$name.out" "$work/$name.err" | sed -n 's/^lambda-vm: listening invoke=//p')
    step "$name: $invokes invokes"
    python3 - "$addr" "$invokes" >"$work/$name.client" <<'PY'
import http.client, sys, time
host, port = sys.argv[1].split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=600)
def invoke(i):
    t0 = time.time()
    conn.request("POST", "/2015-03-31/functions/function/invocations", body=f'{{"n":{i}}}')
    reply = conn.getresponse()
    body = reply.read()
    t1 = time.time()
    if reply.status != 200 or body != f'{{"n":{i}}}'.encode():
        raise SystemExit(f"invoke {i}: {reply.status} {body!r}")
    return reply.getheader("X-Amzn-RequestId"), t0, t1
for i in range(5):
    invoke(i)
for i in range(int(sys.argv[2])):
    request_id, t0, t1 = invoke(i)
    print(request_id, int(t0 * 1e6), int(t1 * 1e6))
PY
    stop
}

report() {
    python3 - "$work" "$@" <<'PY'
import re, statistics, sys
work, names = sys.argv[1], sys.argv[2:]
def median(xs):
    return statistics.median(xs) if xs else float("nan")
def load(name):
    client = {}
    for line in open(f"{work}/{name}.client"):
        rid, t0, t1 = line.split()
        client[rid] = (int(t0), int(t1))
    duration = {}
    for line in open(f"{work}/{name}.out"):
        m = re.match(r"REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms", line)
        if m and m.group(1) in client:
            duration[m.group(1)] = float(m.group(2))
    timing = {}
    for line in open(f"{work}/{name}.err"):
        m = re.search(r"timing (\S+) host_sent_us=(\d+) host_back_us=(\d+) "
                      r"guest_next_outcome_sent_us=(\d+) (\d+) (\d+)", line)
        if m and m.group(1) in client:
            timing[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    return client, duration, timing
for name in names:
    client, duration, timing = load(name)
    rt = [(t1 - t0) / 1000 for t0, t1 in client.values()]
    d = [duration[r] for r in client if r in duration]
    gap = [(client[r][1] - client[r][0]) / 1000 - duration[r] for r in client if r in duration]
    print(f"   {name}: {len(rt)} invokes; medians: round trip {median(rt):.2f} ms, "
          f"REPORT Duration {median(d):.2f} ms, round trip minus Duration {median(gap):.2f} ms")
    if not timing:
        continue
    rows = {k: [] for k in ("in", "vsock", "next", "function", "bookkeeping", "write", "out")}
    for r, (sent, back, g_next, g_outcome, g_sent) in timing.items():
        t0, t1 = client[r]
        rows["in"].append(sent - t0)
        rows["out"].append(t1 - back)
        rows["vsock"].append((back - sent) - g_sent)
        rows["next"].append(g_next)
        if r in duration:
            rows["function"].append(duration[r] * 1000)
            rows["bookkeeping"].append(g_outcome - g_next - duration[r] * 1000)
        rows["write"].append(g_sent - g_outcome)
    labels = [
        ("in", "host: request sent → Invoke frame written (client, lambda-vm)"),
        ("vsock", "vsock and VMM, both ways (host frame out→back less guest frame in→out)"),
        ("next", "guest: Invoke frame read → /next answered (init, rapid)"),
        ("function", "guest: /next answered → response posted (REPORT Duration: runtime HTTP + function)"),
        ("bookkeeping", "guest: response posted → outcome ready (END, REPORT, memory sample)"),
        ("write", "guest: outcome ready → answer frame written (init)"),
        ("out", "host: answer frame read → response received (lambda-vm, client)"),
    ]
    print(f"   {'hop':<92} {'median':>9}")
    for key, label in labels:
        print(f"   {label:<92} {median(rows[key]) / 1000:>6.2f} ms")
PY
}

names=()
for round in $(seq "$rounds"); do
    measure "plain-$round" "$target/release/lambda-vm" "$rootfs" "$function_dir/function.json"
    names+=("plain-$round")
    for dir in "${compare[@]}"; do
        name="$(basename "$dir")-$round"
        measure "$name" "$dir/target/release/lambda-vm" "$dir/target/rootfs/rust-echo.ext4" \
            "$dir/target/functions/rust-echo/function.json"
        names+=("$name")
    done
done
measure timed "$target/release/lambda-vm" "$rootfs" "$function_dir/function.json" --log-level debug
names+=(timed)
step "results (medians; every interval on one clock)"
report "${names[@]}"
