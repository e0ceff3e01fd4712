#!/usr/bin/env bash
# The main job: build the guest kernel (cached after the first run) and the example function's
# ext4 image, start the function service `lambda-vm`, which boots the function in a KVM microVM,
# and invoke it with curl: a success and a handler error. With --serve, keep the service in the
# foreground for your own invokes.
#
# Usage: scripts/run-microvm.sh [--serve] [--port N] [--function DIR]
#   --function DIR  a function directory with function.json (default: the echo function on our
#                   `bootstrap` library, tests/functions/bootstrap-echo, built statically)
#
# The guest console (kernel messages) goes to target/microvm-console.log. On this project's
# emulated KVM the first boot takes tens of seconds (BENCHMARKS.md); hardware KVM is far faster.
set -euo pipefail
# Paths given on the command line are the caller's, relative to where it ran this from.
caller="$PWD"
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

serve=false
port=8080
function_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --serve) serve=true ;;
        --port) port="${2:?--port needs a value}"; shift ;;
        --function) function_dir="$(cd "$caller" && cd "${2:?--function needs a value}" && pwd)"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[ -e /dev/kvm ] || die "/dev/kvm is missing: the microVM needs KVM (scripts/local.sh runs the same function without a VM)"
ensure_apt_packages curl ca-certificates nftables iproute2
ensure_cargo
kernel="$(scripts/build-kernel.sh | tail -n1)"
[ -n "$function_dir" ] || function_dir="$(stage_rust_echo_function)"
rootfs="$(scripts/build-rootfs.sh "$function_dir" --ext4 | tail -n1)"
step "building vmm and lambda-vm"
cargo build --quiet --release -p vmm -p lambda-vm --bins
target="$(cargo_target_dir)"
console="$target/microvm-console.log"
: >"$console"
url="http://127.0.0.1:$port/2015-03-31/functions/function/invocations"
args=(--kernel "$kernel" --rootfs "$rootfs" --function-config "$function_dir/function.json"
      --listen "127.0.0.1:$port" --console "$console")

if $serve; then
    step "serving $url (Ctrl-C stops; guest console in $console)"
    # --eager: one environment is booted and initialised up front (provisioned concurrency).
    exec "$target/release/lambda-vm" "${args[@]}" --eager
fi

start_server lambda-vm "$target/release/lambda-vm" "${args[@]}"

step "booting the microVM and invoking: curl -d '{\"hello\":\"microvm\"}' $url"
start=$(date +%s%N)
curl -sS -i --max-time 600 -d '{"hello":"microvm"}' "$url"
echo
echo "(first invoke, microVM boot included: $(( ($(date +%s%N) - start) / 1000000 )) ms)"
step "invoke with a handler error"
curl -sS -i --max-time 600 -d '{"action":"error","message":"something broke"}' "$url"
echo
step "stopping: the guest powers off through the i8042 reset"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
step "service log (function output, START/END/REPORT lines from the guest)"
cat "$SERVER_LOG"
