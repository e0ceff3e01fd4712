#!/usr/bin/env bash
# The first invokes after a SnapStart restore, our `vmm` beside Firecracker on the same function
# guest, in one run (issue 23; BENCHMARKS.md). The echo function (tests/functions/bootstrap-echo,
# SnapStart, networking off) is built as an ext4 image; each VMM boots it through the same
# Firecracker API calls, its init runs the function's init as under lambda-vm, and each VMM
# snapshots it (neither can load the other's snapshot). Then --runs restores of each in fresh
# processes, alternating, each followed by its first invoke and --warm more over the host link:
# load → the restored init's answer, load → the first response, and the function's part of the
# first invoke against a warm one's, as the guest timed them (benches/src/bin/first_invoke_vmms.rs
# does the measuring). A markdown table goes to stdout, every sample to --json.
#
# --ages 0,3600,86400 also simulates snapshot ages: each restore is taken at each age, the host's
# Restore telling the guest that the wall clock reads that much later. Both VMMs resume the
# guest's monotonic clock and TSC where the snapshot stopped them, so that time is all a restored
# guest learns of its snapshot's age.
#
# With FIRECRACKER=path (an executable, run with --no-seccomp: a build from source without its
# seccomp filters is fine) Firecracker is measured too; without it only our vmm.
#
# Usage: [FIRECRACKER=path] scripts/bench-first-invoke-vmms.sh [--runs N] [--warm N] [--ages LIST]
#                                                              [--json PATH]
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

runs=8
warm=5
ages=0
json=benches/results/first-invoke-vmms.json
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?}"; shift ;;
        --warm) warm="${2:?}"; shift ;;
        --ages) ages="${2:?}"; shift ;;
        --json) json="$(cd "$caller" && realpath -m "${2:?}")"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ -e /dev/kvm ] || die "/dev/kvm is missing"
firecracker="${FIRECRACKER:-}"
[ -z "$firecracker" ] || [ -x "$firecracker" ] || die "FIRECRACKER=$firecracker is not an executable"
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
step "building vmm and the benchmark (release)"
cargo build --quiet --release -p vmm -p benches --bin vmm --bin first_invoke_vmms
target="$(cargo_target_dir)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

image="$(stage_snapstart_echo_image "$work")"
mem_mib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["memory_mb"])' "$work/src/function.json")

step "booting the function in each VMM (tens of seconds each here), then $runs restores each (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
"$target/release/first_invoke_vmms" --vmm "$target/release/vmm" \
    ${firecracker:+--firecracker "$firecracker"} --kernel "$kernel" --rootfs "$image" \
    --mem-mib "$mem_mib" --work "$work/bench" --json "$(realpath -m "$json")" \
    --runs "$runs" --warm "$warm" --ages "$ages"
