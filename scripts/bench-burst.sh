#!/usr/bin/env bash
# Burst benchmark of the function host (issue 11, item 7; BENCHMARKS.md): bursts of 1, 2, 4 and
# 8 concurrent first invokes, on-demand cold boot vs. SnapStart restore, in ONE lambda-vm that
# serves two builds of the echo function (`cold`: on-demand, `snap`: snap-start). For each
# burst it records the time until every response arrived and the host memory per environment
# (the environments' vmm processes, plus lambda-vm's own). The measuring and the chart are the
# `burst` binary of the benches crate (benches/src/bin/burst.rs): the table goes to stdout, the
# chart to benches/results/burst.svg.
#
# Usage: scripts/bench-burst.sh [--sizes 1,2,4,8] [--svg PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

sizes=1,2,4,8
svg=benches/results/burst.svg
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="${2:?}"; shift ;;
        --svg) svg="${2:?}"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
cold_dir="$(stage_rust_echo_function)"
cold_image="$(scripts/build-rootfs.sh "$cold_dir" --ext4 | tail -n1)"
snap_dir="$(stage_rust_echo_function snap-start)"
snap_image="$(scripts/build-rootfs.sh "$snap_dir" --ext4 | tail -n1)"
step "building vmm, lambda-vm and the burst benchmark (release)"
cargo build --quiet --release -p vmm -p lambda-vm -p benches --bins
target="$(cargo_target_dir)"
work="$(mktemp -d)"
trap 'stop_server; rm -rf "$work"' EXIT

# The functions dir: one subdirectory per function, its function.json (the staged one, renamed)
# and its image. The images are linked, not copied: they are read-only root drives.
for fn in cold snap; do
    if [ "$fn" = cold ]; then src="$cold_dir" image="$cold_image"; else src="$snap_dir" image="$snap_image"; fi
    mkdir -p "$work/functions/$fn"
    sed "s/\"function_name\": \"[^\"]*\"/\"function_name\": \"$fn\"/" "$src/function.json" \
        >"$work/functions/$fn/function.json"
    grep -q "\"function_name\": \"$fn\"" "$work/functions/$fn/function.json" ||
        die "could not rename the function in $src/function.json"
    ln -s "$image" "$work/functions/$fn/$fn.ext4"
done

# --idle-timeout 1: a burst's environments go soon after it, so the next burst starts from none
# (the benchmark waits for that through GET /status). --boot-timeout 900: 8 cold boots share 2
# emulated CPUs here, which can outlast the default 300 s.
step "starting lambda-vm with the functions cold and snap"
start_server lambda-vm "$target/release/lambda-vm" --kernel "$kernel" \
    --functions-dir "$work/functions" --work-dir "$work/host" --state-dir "$work/host/state" --listen 127.0.0.1:0 \
    --max-concurrency 8 --idle-timeout 1 --boot-timeout 900
addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$SERVER_LOG")
[ -n "$addr" ] || die "no address in lambda-vm's listening line: $(cat "$SERVER_LOG")"

mkdir -p "$(dirname "$svg")"
step "bursts of $sizes (the SnapStart snapshot is taken first)"
"$target/release/burst" --addr "$addr" --lambda-vm-pid "$SERVER_PID" --svg "$svg" \
    --sizes "$sizes" --cold cold --snap snap ||
    { tail -n 40 "$SERVER_LOG" >&2; die "the burst benchmark failed (lambda-vm's log above)"; }
grep -E "^lambda-vm: [^ ]+: SnapStart" "$SERVER_LOG" | sed 's/^/   /' >&2 || true
step "chart written to $svg"
