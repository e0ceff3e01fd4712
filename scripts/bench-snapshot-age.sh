#!/usr/bin/env bash
# What a snapshot's age costs its restore (issue 23, BENCHMARKS.md): two SnapStart snapshots of
# the echo function (networking off) taken one after the other by lambda-vm, one with the guest
# on kvm-clock (the vmm's default command line) and one on the TSC (the same command line with
# `clocksource=tsc`), then, at each age, the bare vmm's restores of each: a fresh `vmm` process,
# `PUT /snapshot/load` with `resume_vm`, and the restored guest's first output (its init's
# hello), medians of --runs (benches/src/bin/coldstart.rs --vmm-only). A snapshot's age is the
# time between taking and restoring it, so the script waits: --ages 60,3600 takes an hour.
#
# Usage: scripts/bench-snapshot-age.sh [--ages 60,3600] [--runs N] [--out DIR]
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ages=60,3600
runs=5
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ages) ages="${2:?}"; shift ;;
        --runs) runs="${2:?}"; shift ;;
        --out) out="$(cd "$caller" && realpath -m "${2:?}")"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
[ "$(id -u)" -eq 0 ] || die "run as root: lambda-vm jails every vmm"
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
step "building vmm, lambda-vm and the coldstart benchmark (release)"
cargo build --quiet --release -p vmm -p lambda-vm -p benches --bins
target="$(cargo_target_dir)"
work="$(mktemp -d)"
[ -n "$out" ] || out="$work/results"
mkdir -p "$out"
trap 'stop_server; rm -rf "$work"' EXIT

stage_snapstart_echo_image "$work" >/dev/null

# The vmm's default command line for this host (vmm/src/builder.rs), with `init=/init` for an
# ext4 root; the TSC run appends `clocksource=tsc`, which wins over the earlier kvm-clock.
defaults="console=ttyS0 reboot=k panic=1 rodata=off clocksource=kvm-clock"
if [ -d /sys/module/kvm_pvm ]; then
    defaults="$defaults noxsave nosmap nofsgsbase nopku clearcpuid=cx16,popcnt,rdrand,rdseed,fsgsbase,smap,smep,pku,ospke,invpcid,pcid,rdtscp,3dnowprefetch,clflushopt,clwb,rdpid,avx,avx2 pvm_no_int3_selftest pvm_no_fwait pvm_syscall_fixup"
fi
for clock in kvm-clock tsc; do
    args="$defaults init=/init"
    [ "$clock" = tsc ] && args="$args clocksource=tsc"
    step "taking the $clock snapshot (a boot: tens of seconds here)"
    start_server lambda-vm "$target/release/lambda-vm" --kernel "$kernel" --rootfs "$work/snap.ext4" \
        --function-config "$work/src/function.json" --state-dir "$work/$clock" \
        --work-dir "$work/host" --listen 127.0.0.1:0 --ready-vmms 0 --boot-args "$args" \
        --console "$work/$clock.console"
    addr=$(sed -n 's/^lambda-vm: listening invoke=//p' "$SERVER_LOG")
    curl -sf -d '{}' "http://$addr/2015-03-31/functions/function/invocations" >/dev/null ||
        { tail -n 40 "$SERVER_LOG" >&2; die "the first invoke failed"; }
    stop_server
    grep -q "Switched to clocksource $clock" "$work/$clock.console" ||
        die "the guest is not on $clock: $(grep clocksource "$work/$clock.console" | tail -n1)"
done
taken=$(date +%s)

echo "| age | clock | process start to the guest's first output (median, min–max) |"
echo "|---|---|---|"
for age in ${ages//,/ }; do
    now=$(date +%s)
    [ $((taken + age)) -le "$now" ] || sleep $((taken + age - now))
    for clock in kvm-clock tsc; do
        snapshot="$(find "$work/$clock/snapshots" -name state.manifest.json -printf '%h\n' | head -n1)"
        "$target/release/coldstart" --vmm-only --vmm "$target/release/vmm" --snapshot "$snapshot" \
            --work "$work/bench" --runs "$runs" --json "$out/age-$age-$clock.json" >/dev/null
        python3 - "$out/age-$age-$clock.json" "$age" "$clock" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["vmm"]["spawn_to_first_output"]
print(f"| {sys.argv[2]} s | {sys.argv[3]} | {v['median']:.1f} ms ({v['min']:.1f}–{v['max']:.1f}, n={v['n']}) |")
PY
    done
done
