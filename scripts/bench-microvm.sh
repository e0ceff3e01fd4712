#!/usr/bin/env bash
# Cold-start benchmark of the microVM path, side by side in one run (BENCHMARKS.md):
#   1. VMM process start to guest entry and back: `vmm` booting a guest that resets at its
#      first instruction (VMM-side cost only: process, KVM VM, memory, boot path, exit).
#   2. VMM resident memory: `vmm` with a 128 MiB guest that halts at once.
#   3. Boot to init, and to the guest init's host-link connection (`lambda-vm --eager`).
#   4. First invoke (with --eager the environment is provisioned: its init ran at boot), then
#      warm invoke round trips.
#   5. Snapshots: a 128 MiB tiny guest's snapshot and `vmm --restore-from` latency (load call
#      to vCPUs running, VMM side only); then, alternating in fresh `lambda-vm` processes, the
#      echo function's cold boot to first response and the same function built as snap-start
#      restored to first response (after one run that takes the snapshot).
#
# Usage: scripts/bench-microvm.sh [--runs N] [--invokes N] [--pairs N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

runs=20
invokes=20
pairs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?}"; shift ;;
        --invokes) invokes="${2:?}"; shift ;;
        --pairs) pairs="${2:?}"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
ensure_apt_packages curl binutils
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
function_dir="$(stage_rust_echo_function)"
rootfs="$(scripts/build-rootfs.sh "$function_dir" --ext4 | tail -n1)"
snapstart_dir="$(stage_rust_echo_function snap-start)"
snapstart_rootfs="$(scripts/build-rootfs.sh "$snapstart_dir" --ext4 | tail -n1)"
step "building vmm and lambda-vm (release)"
cargo build --quiet --release -p vmm -p lambda-vm --bins
target="$(cargo_target_dir)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for guest in reset halt; do
    as --64 -I vmm/tests/guests -o "$work/$guest.o" "vmm/tests/guests/$guest.S"
    ld -static -nostdlib -N -Ttext=0x200000 -e _start --no-warn-rwx-segments -o "$work/$guest.elf" "$work/$guest.o"
done

median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); printf "%s", a[m]}'; }
# EPOCHREALTIME: a clock read without forking date(1), which would add milliseconds.
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo $(( 10#$t )); }

step "1. vmm start to guest entry and exit, $runs runs (128 MiB guest)"
for _ in $(seq "$runs"); do
    t0=$(now_us)
    "$target/release/vmm" --kernel "$work/reset.elf" --mem-mib 128 --boot-args console=ttyS0
    echo $(( $(now_us) - t0 ))
done >"$work/start.txt"
printf '   median %s us (min %s us)\n' "$(median <"$work/start.txt")" "$(sort -n "$work/start.txt" | head -1)"

step "2. vmm resident memory with an idle 128 MiB guest"
"$target/release/vmm" --kernel "$work/halt.elf" --mem-mib 128 --boot-args console=ttyS0 &
vmm_pid=$!
sleep 0.5
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$vmm_pid/status")
kill "$vmm_pid"; wait "$vmm_pid" 2>/dev/null || true
echo "   VmRSS ${rss_kb} kB"

step "3-4. boot the example function in a microVM, then invoke it"
console="$work/console.log"
log="$work/service.log"
t0=$(now_us)
"$target/release/lambda-vm" --kernel "$kernel" --rootfs "$rootfs" \
    --function-config "$function_dir/function.json" --listen 127.0.0.1:0 \
    --state-dir "$work/state-boot" --console "$console" --eager >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
t_init=""
until grep -q "provisioned environment ready" "$log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "lambda-vm exited"; }
    if [ -z "$t_init" ] && grep -q "Run /init" "$console" 2>/dev/null; then t_init=$(now_us); fi
    sleep 0.05
done
t_link=$(now_us)
[ -n "$t_init" ] || t_init=$t_link
addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$log")
url="http://$addr/2015-03-31/functions/function/invocations"
t1=$(now_us)
curl -sS --max-time 600 -o /dev/null -d '{"bench":0}' "$url"
t_first=$(( $(now_us) - t1 ))
for i in $(seq "$invokes"); do
    t1=$(now_us)
    curl -sS --max-time 600 -o /dev/null -d "{\"bench\":$i}" "$url"
    echo $(( $(now_us) - t1 ))
done >"$work/warm.txt"
rss_service=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
echo "   boot to init (\"Run /init\" on the console): $(( (t_init - t0) / 1000 )) ms"
echo "   boot to the init's host-link connection:      $(( (t_link - t0) / 1000 )) ms"
echo "   first invoke (init already ran: provisioned): $(( t_first / 1000 )) ms"
echo "   warm invoke round trip, median of $invokes:     $(( $(median <"$work/warm.txt") / 1000 )) ms"
echo "   lambda-vm VmRSS with the booted guest:        ${rss_service} kB"
grep -E "(] REPORT|^lambda-vm: [^ ]+: )" "$log" | head -3 | sed 's/^/   /'
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true

# Starts lambda-vm on ROOTFS with CONFIG (plus any further flags), invokes it once, and prints
# the microseconds from process start to the first response; the service log goes to LOG.
first_response() {
    local log="$1" image="$2" config="$3" t0 addr
    shift 3
    t0=$(now_us)
    "$target/release/lambda-vm" --kernel "$kernel" --rootfs "$image" \
        --function-config "$config" --listen 127.0.0.1:0 --work-dir "$work" --state-dir "$work/state" \
        --console "$work/first-response-console.log" "$@" >"$log" 2>&1 &
    pid=$!
    until grep -q "lambda-vm: listening" "$log" 2>/dev/null; do sleep 0.01; done
    addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$log")
    curl -sS --fail --max-time 600 -o /dev/null -d '{"bench":"first"}' \
        "http://$addr/2015-03-31/functions/function/invocations" || die "invoke failed: $(cat "$log")"
    echo $(( $(now_us) - t0 ))
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

# "median min max" of microseconds on stdin, in ms with one decimal.
summary_ms() {
    sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); printf "%.1f %.1f %.1f\n", a[m]/1000, a[1]/1000, a[NR]/1000}'
}

step "5a. snapshot and restore of a 128 MiB tiny guest (VMM side)"
as --64 -I vmm/tests/guests -o "$work/counter.o" vmm/tests/guests/counter.S
ld -static -nostdlib -N -Ttext=0x200000 -e _start --no-warn-rwx-segments -o "$work/counter.elf" "$work/counter.o"
"$target/release/vmm" --kernel "$work/counter.elf" --mem-mib 128 --boot-args x \
    --snapshot-dir "$work/tiny-snapshot" >/dev/null 2>"$work/tiny-snapshot.log" &
tiny=$!
sleep 1
kill -USR1 "$tiny"; wait "$tiny" || true
sed 's/^vmm: /   /' "$work/tiny-snapshot.log"
for _ in $(seq 5); do
    VMM_LOG=info timeout 1 "$target/release/vmm" --restore-from "$work/tiny-snapshot" 2>&1 >/dev/null |
        sed -n 's/^vmm: INFO restored in \([0-9.]*\) ms$/\1/p' || true
done >"$work/restore.txt"
echo "   vmm restore, load call to vCPUs running, median of 5: $(median <"$work/restore.txt") ms"

step "5b. cold boot vs SnapStart restore to first response, fresh lambda-vm processes, $pairs of each, alternating"
snapstart=(--snapshot-dir "$work/snapshots")
t_snap=$(first_response "$work/snapstart-first.log" "$snapstart_rootfs" "$snapstart_dir/function.json" "${snapstart[@]}")
grep -E "^lambda-vm: [^ ]+: SnapStart" "$work/snapstart-first.log" | sed 's/^/   /'
echo "   first SnapStart cold start (boot, init, snapshot, restore, invoke): $(( t_snap / 1000 )) ms"
: >"$work/cold.txt"; : >"$work/restored.txt"; : >"$work/vmm-restore.txt"
for _ in $(seq "$pairs"); do
    first_response "$work/cold.log" "$rootfs" "$function_dir/function.json" >>"$work/cold.txt"
    first_response "$work/restored.log" "$snapstart_rootfs" "$snapstart_dir/function.json" \
        "${snapstart[@]}" >>"$work/restored.txt"
    grep -q "SnapStart snapshot taken" "$work/restored.log" && die "a restore run took a new snapshot"
    sed -n 's/^lambda-vm: [^ ]*: microVM restored in \([0-9.]*\) ms (VMM side.*/\1/p' "$work/restored.log" >>"$work/vmm-restore.txt"
done
read -r cold_med cold_min cold_max < <(summary_ms <"$work/cold.txt")
read -r rest_med rest_min rest_max < <(summary_ms <"$work/restored.txt")
echo "   cold boot to first response:            median $cold_med ms (min $cold_min, max $cold_max)"
echo "   restore (fresh process) to first response: median $rest_med ms (min $rest_min, max $rest_max)"
awk -v c="$cold_med" -v r="$rest_med" 'BEGIN {printf "   ratio of medians: %.1fx\n", c / r}'
echo "   lambda-vm VMM-side restore (load call to vCPUs running), median: $(median <"$work/vmm-restore.txt") ms"
grep -E "(] REPORT|^lambda-vm: [^ ]+: microVM restored)" "$work/restored.log" | head -2 | sed 's/^/   /'
