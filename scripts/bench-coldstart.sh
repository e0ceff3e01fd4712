#!/usr/bin/env bash
# The cold-start benchmark (issue 23; BENCHMARKS.md): everything a cold start costs, in ONE run
# on one machine, through `lambda-vm` and beside it the bare `vmm` on the same snapshot.
#
#   - the bare vmm: a fresh `vmm --api-sock` process, `PUT /snapshot/load` with `resume_vm`,
#     and the restored guest's first output (its init's hello, through hybrid vsock); one at a
#     time, then N at once;
#   - lambda-vm, SnapStart: a request that needs a new environment, to its response; the first
#     invoke's REPORT (Duration, Restore Duration) and the restore request to the restored
#     init's answer; then warm invokes of that environment (round trip, Duration, and the round
#     trip less the Duration); bursts of N first invokes;
#   - lambda-vm, on-demand: a cold boot to its first response;
#   - 1-byte vsock round trips between the host and a restored guest's function (the floor);
#   - the working set (memory.ws, recorded by lambda-vm after the snapshot's first restore's
#     first invoke): the same SnapStart restores through a second lambda-vm started with
#     --no-working-set on the same snapshot, and bare vmm restores without and with it (the
#     first invoke's round trip and host page faults). --no-working-set skips the second
#     lambda-vm;
#   - with FIRECRACKER=path (an executable; a build without its seccomp filters is fine, it runs
#     with --no-seccomp): at the end, scripts/bench-restore-vmms.sh --runs N: Firecracker's
#     restore → first guest answer beside the bare vmm's, each VMM restoring a snapshot it took
#     itself of the same tiny guest (Firecracker cannot load our format); its samples go to
#     restore-vmms.json beside --json; then scripts/bench-first-invoke-vmms.sh --runs N: the
#     same SnapStart function's guest booted, snapshotted and restored by each VMM, with its
#     first invoke and warm ones (first-invoke-vmms.json beside --json). Without FIRECRACKER
#     nothing of this runs.
#
# The echo function (tests/functions/bootstrap-echo) is built twice as an ext4 image, `cold`
# (on-demand) and `snap` (snap-start), both without networking (so the bare vmm restores the
# very snapshot lambda-vm restores, which then has no network device). Medians and min–max go
# to stdout, every sample to a JSON file, the bursts to an SVG chart (benches/src/bin/
# coldstart.rs does the measuring). It replaces bench-microvm.sh and bench-burst.sh;
# scripts/bench-warm-path.sh still breaks a warm invoke down hop by hop.
#
# Usage: [FIRECRACKER=path] scripts/bench-coldstart.sh [--runs N] [--cold-runs N] [--warm N]
#                                   [--bursts 1,2,4,8] [--ready N] [--json PATH] [--svg PATH]
#                                   [--no-working-set]
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

runs=10
cold_runs=1
warm=20
bursts=1,2,4,8
ready=2
json=benches/results/coldstart.json
svg=benches/results/coldstart.svg
compare_working_set=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?}"; shift ;;
        --cold-runs) cold_runs="${2:?}"; shift ;;
        --warm) warm="${2:?}"; shift ;;
        --bursts) bursts="${2:?}"; shift ;;
        --ready) ready="${2:?}"; shift ;;
        --json) json="$(cd "$caller" && realpath -m "${2:?}")"; shift ;;
        --svg) svg="$(cd "$caller" && realpath -m "${2:?}")"; shift ;;
        --no-working-set) compare_working_set=0 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
[ "$(id -u)" -eq 0 ] || die "run as root: lambda-vm jails every vmm"
firecracker="${FIRECRACKER:-}"
[ -z "$firecracker" ] || [ -x "$firecracker" ] || die "FIRECRACKER=$firecracker is not an executable"
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
cold_dir="$(stage_rust_echo_function)"
snap_dir="$(stage_rust_echo_function snap-start)"
step "building vmm, lambda-vm and the coldstart benchmark (release)"
cargo build --quiet --release -p vmm -p lambda-vm -p benches --bins
target="$(cargo_target_dir)"
work="$(mktemp -d)"
lazy_pid=""
stop_lazy() {
    if [ -n "$lazy_pid" ]; then
        kill -TERM "$lazy_pid" 2>/dev/null || true
        wait "$lazy_pid" 2>/dev/null || true
        lazy_pid=""
    fi
}
trap 'stop_lazy; stop_server; rm -rf "$work"' EXIT

# The functions dir: one subdirectory per function, its function.json (the staged one, renamed,
# networking off) and its image.
for fn in cold snap; do
    if [ "$fn" = cold ]; then src="$cold_dir"; else src="$snap_dir"; fi
    mkdir -p "$work/src/$fn" "$work/functions/$fn"
    cp -r "$src/." "$work/src/$fn/"
    sed -e "s/\"function_name\": \"[^\"]*\"/\"function_name\": \"$fn\"/" \
        -e 's/^{/{\n  "networking": false,/' "$src/function.json" >"$work/src/$fn/function.json"
    grep -q '"networking": false' "$work/src/$fn/function.json" ||
        die "could not turn networking off in $src/function.json"
    image="$(scripts/build-rootfs.sh "$work/src/$fn" --ext4 | tail -n1)"
    cp "$work/src/$fn/function.json" "$work/functions/$fn/function.json"
    cp "$image" "$work/functions/$fn/$fn.ext4"
done

# --idle-timeout 1: a run's environment goes soon after it, so the next run starts from none
# (the benchmark waits for that, and for the ready vmm processes, through GET /status).
step "starting lambda-vm (--ready-vmms $ready)"
start_server lambda-vm "$target/release/lambda-vm" --kernel "$kernel" \
    --functions-dir "$work/functions" --work-dir "$work/host" --state-dir "$work/state" \
    --listen 127.0.0.1:0 --max-concurrency 16 --idle-timeout 1 --boot-timeout 900 \
    --ready-vmms "$ready"
addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$SERVER_LOG")
[ -n "$addr" ] || die "no address in lambda-vm's listening line: $(cat "$SERVER_LOG")"

step "taking the SnapStart snapshot (a boot: tens of seconds here)"
curl -sf -d '{"action":"whoami"}' "http://$addr/2015-03-31/functions/snap/invocations" >/dev/null ||
    { tail -n 40 "$SERVER_LOG" >&2; die "the first invoke of snap failed"; }
snapshot="$(find "$work/state/snapshots/snap" -name state.manifest.json -printf '%h\n' | head -n1)"
[ -n "$snapshot" ] || die "no snapshot under $work/state/snapshots/snap"
lazy_args=()
if [ "$compare_working_set" = 1 ]; then
    # Recorded once that first invoke's answer has left: wait for it.
    for _ in $(seq 300); do [ -f "$snapshot/memory.ws" ] && break; sleep 0.1; done
    [ -f "$snapshot/memory.ws" ] || die "lambda-vm recorded no working set in $snapshot"
    # The same functions and the same snapshot (--snapshot-dir), restored without the working
    # set; its own state and work directories.
    step "starting a second lambda-vm with --no-working-set on the same snapshot"
    lazy_log="$work/lazy.log"
    "$target/release/lambda-vm" --kernel "$kernel" --functions-dir "$work/functions" \
        --work-dir "$work/host-lazy" --state-dir "$work/state-lazy" \
        --snapshot-dir "$work/state/snapshots" --no-working-set \
        --listen 127.0.0.1:0 --max-concurrency 16 --idle-timeout 1 --boot-timeout 900 \
        --ready-vmms "$ready" >"$lazy_log" 2>&1 &
    lazy_pid=$!
    for _ in $(seq 300); do
        grep -q "lambda-vm: listening" "$lazy_log" && break
        kill -0 "$lazy_pid" 2>/dev/null || { cat "$lazy_log" >&2; die "the second lambda-vm exited"; }
        sleep 0.1
    done
    lazy_addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$lazy_log")
    [ -n "$lazy_addr" ] || die "no address in the second lambda-vm's log: $(cat "$lazy_log")"
    lazy_args=(--lazy-addr "$lazy_addr" --lazy-log "$lazy_log")
fi

mkdir -p "$(dirname "$json")" "$(dirname "$svg")"
step "measuring (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
"$target/release/coldstart" --addr "$addr" --log "$SERVER_LOG" --vmm "$target/release/vmm" \
    --snapshot "$snapshot" --work "$work/bench" --json "$json" --svg "$svg" \
    --runs "$runs" --cold-runs "$cold_runs" --warm "$warm" --bursts "$bursts" --ready "$ready" \
    "${lazy_args[@]}" ||
    { tail -n 40 "$SERVER_LOG" >&2; die "the benchmark failed (lambda-vm's log above)"; }
step "results in $json, chart in $svg"
if [ -n "$firecracker" ]; then
    stop_lazy
    stop_server
    step "restore → first guest answer, the bare vmm beside Firecracker (scripts/bench-restore-vmms.sh)"
    FIRECRACKER="$firecracker" scripts/bench-restore-vmms.sh --runs "$runs" \
        --json "$(dirname "$json")/restore-vmms.json"
    step "the first invokes after a restore, the bare vmm beside Firecracker (scripts/bench-first-invoke-vmms.sh)"
    FIRECRACKER="$firecracker" scripts/bench-first-invoke-vmms.sh --runs "$runs" \
        --json "$(dirname "$json")/first-invoke-vmms.json"
fi
