#!/usr/bin/env bash
# What the jail and the seccomp filters cost each `vmm` (vmm/README.md, "Seccomp and the
# jail"), measured side by side in one run, alternating, with fresh `lambda-vm` processes:
#   - boot: `lambda-vm --eager` start to the provisioned environment's host link (on-demand
#     echo function), then a median of warm invoke round trips on that environment;
#   - restore: `lambda-vm` start to the first response of the snap-start echo function, its
#     snapshot taken beforehand, with the VMM-side restore time `lambda-vm` logs.
#   - the `vmm` alone: process start to exit of a tiny guest that resets at its first
#     instruction, jailed (with seccomp) and not, 20 runs each, alternating;
# "on" is the default (jail and seccomp); "off" is `--no-jail --no-seccomp`. Needs root.
#
# Usage: scripts/bench-isolation.sh [--pairs N] [--invokes N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

pairs=3
invokes=20
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) pairs="${2:?}"; shift ;;
        --invokes) invokes="${2:?}"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
[ "$(id -u)" = 0 ] || die "the jail needs root"
ensure_apt_packages curl
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
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); printf "%s", a[m]}'; }
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo $(( 10#$t )); }
flags() { [ "$1" = off ] && echo "--no-jail --no-seccomp" || true; }

# Boot with --eager; prints "boot_ms warm_median_ms".
boot_and_invoke() {
    local mode="$1" log="$work/boot-$1.log" t0 addr url
    : >"$log" # before the start: the wait below must not find the previous run's lines
    t0=$(now_us)
    # shellcheck disable=SC2046
    "$target/release/lambda-vm" $(flags "$mode") --kernel "$kernel" --rootfs "$rootfs" \
        --function-config "$function_dir/function.json" --listen 127.0.0.1:0 \
        --work-dir "$work/boot-$mode" --state-dir "$work/boot-$mode/state" --eager >"$log" 2>&1 &
    pid=$!
    until grep -q "provisioned environment ready" "$log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "lambda-vm exited: $(cat "$log")"
        sleep 0.05
    done
    local boot=$(( ($(now_us) - t0) / 1000 ))
    addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$log")
    url="http://$addr/2015-03-31/functions/function/invocations"
    curl -sS --fail --max-time 600 -o /dev/null -d '{"bench":0}' "$url"
    for i in $(seq "$invokes"); do
        local t1; t1=$(now_us)
        curl -sS --fail --max-time 600 -o /dev/null -d "{\"bench\":$i}" "$url"
        echo $(( $(now_us) - t1 ))
    done >"$work/warm-$mode.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    echo "$boot $(( $(median <"$work/warm-$mode.txt") / 1000 ))"
}

# Restore of the prepared snapshot to first response; prints "first_response_ms vmm_restore_ms".
# A second argument "first" allows (takes) the snapshot.
restore_first_response() {
    local mode="$1" log="$work/restore-$1.log" t0 addr
    : >"$log"
    t0=$(now_us)
    # shellcheck disable=SC2046
    "$target/release/lambda-vm" $(flags "$mode") --kernel "$kernel" --rootfs "$snapstart_rootfs" \
        --function-config "$snapstart_dir/function.json" --listen 127.0.0.1:0 \
        --work-dir "$work/restore-$mode" --state-dir "$work/restore-$mode/state" --snapshot-dir "$work/snapshots" >"$log" 2>&1 &
    pid=$!
    until grep -q "lambda-vm: listening" "$log" 2>/dev/null; do sleep 0.01; done
    addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$log")
    curl -sS --fail --max-time 600 -o /dev/null -d '{"bench":"first"}' \
        "http://$addr/2015-03-31/functions/function/invocations" || die "invoke failed: $(cat "$log")"
    local first=$(( ($(now_us) - t0) / 1000 ))
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    if [ "${2:-}" != first ] && grep -q "SnapStart snapshot taken" "$log"; then
        die "a restore run took a new snapshot"
    fi
    echo "$first $(sed -n 's/.*microVM restored (.*VMM side \([0-9.]*\) ms.*/\1/p' "$log" | head -1)"
}

step "the vmm alone: a tiny guest that resets at once, 20 runs each, alternating"
as --64 -I vmm/tests/guests -o "$work/reset.o" vmm/tests/guests/reset.S
ld -static -nostdlib -N -Ttext=0x200000 -e _start --no-warn-rwx-segments -o "$work/reset.elf" "$work/reset.o"
mkdir -p "$work/tiny-root"
tiny=(--kernel "$work/reset.elf" --mem-mib 128 --boot-args console=ttyS0)
jail=(--jail-root "$work/tiny-root" --jail-bind "$work/reset.elf" --jail-dev /dev/kvm
    --jail-uid 1999999 --jail-gid 1999999)
for _ in $(seq 20); do
    t0=$(now_us); "$target/release/vmm" "${tiny[@]}" "${jail[@]}" >/dev/null
    echo $(( $(now_us) - t0 )) >>"$work/tiny-on.txt"
    t0=$(now_us); "$target/release/vmm" "${tiny[@]}" --no-seccomp >/dev/null
    echo $(( $(now_us) - t0 )) >>"$work/tiny-off.txt"
done
echo "   jailed, seccomp on: median $(median <"$work/tiny-on.txt") us; unjailed, --no-seccomp: median $(median <"$work/tiny-off.txt") us"

step "taking the SnapStart snapshot (jailed)"
restore_first_response on first >/dev/null
for mode in on off; do : >"$work/boot-$mode.txt"; : >"$work/restore-$mode.txt"; done
for _ in $(seq "$pairs"); do
    for mode in on off; do
        boot_and_invoke "$mode" >>"$work/boot-$mode.txt"
        restore_first_response "$mode" >>"$work/restore-$mode.txt"
    done
done
col() { awk -v c="$1" '{print $c}' "$2" | median; }
step "results, $pairs runs each, alternating (medians)"
printf '   %-44s %10s %10s\n' "" "on" "off"
printf '   %-44s %10s %10s\n' "boot to host link (ms)" "$(col 1 "$work/boot-on.txt")" "$(col 1 "$work/boot-off.txt")"
printf '   %-44s %10s %10s\n' "warm invoke round trip, median of $invokes (ms)" "$(col 2 "$work/boot-on.txt")" "$(col 2 "$work/boot-off.txt")"
printf '   %-44s %10s %10s\n' "restore to first response (ms)" "$(col 1 "$work/restore-on.txt")" "$(col 1 "$work/restore-off.txt")"
printf '   %-44s %10s %10s\n' "VMM-side restore (ms)" "$(col 2 "$work/restore-on.txt")" "$(col 2 "$work/restore-off.txt")"
for mode in on off; do
    echo "   $mode: $(tr '\n' ';' <"$work/boot-$mode.txt") | $(tr '\n' ';' <"$work/restore-$mode.txt")"
done
