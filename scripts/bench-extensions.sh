#!/usr/bin/env bash
# Response streaming and extensions, measured side by side in one run:
#  1. time to first byte of a streamed response (two chunks 1 s apart, from the lambda_runtime
#     crate's streaming function and from our bootstrap's) read with boto3's
#     invoke_with_response_stream, in local mode and, with --microvm, through a microVM
#     (lambda-vm, the lambda_runtime function, its chunks over the host link);
#  2. the per-invoke cost of one registered extension in local mode: sequential invokes of the
#     echo function (lambda_runtime) with no extension, with one on our bootstrap library
#     registered for INVOKE, and with the same one subscribed to the Telemetry API.
# Release builds. Usage: scripts/bench-extensions.sh [--microvm] [--invokes N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

microvm=0
invokes=500
while [ $# -gt 0 ]; do
    case "$1" in
    --microvm) microvm=1; shift ;;
    --invokes) invokes=$2; shift 2 ;;
    *) die "unknown argument $1 (--microvm, --invokes N)" ;;
    esac
done

ensure_cargo
ensure_test_venv
step "building (release)"
cargo build --quiet --release -p lambda-local -p rust-stream -p rust-echo -p bootstrap-echo
target="$(cargo_target_dir)/release"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts a server in the background (its output in $work/NAME.log) and waits for its
# `listening invoke=ADDR` line; prints ADDR.
serve() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    local addr=""
    for _ in $(seq 600); do
        addr="$(sed -n 's/.*: listening invoke=\([^ ]*\).*/\1/p' "$work/$name.log" | head -n1)"
        [ -n "$addr" ] && break
        sleep 0.5
    done
    [ -n "$addr" ] || die "$name did not start: $(cat "$work/$name.log")"
    echo "$addr"
}

local_server() {
    local name=$1 runtime=$2
    shift 2
    serve "$name" "$target/lambda-local" --runtime "$runtime" --listen 127.0.0.1:0 \
        --runtime-api 127.0.0.1:0 --timeout 30 "$@"
}

step "time to first byte, local mode"
addr="$(local_server stream "$target/rust-stream")"
echo "local, lambda_runtime: $("$TEST_PYTHON" tests/streaming/ttfb.py "http://$addr" function 20 1000)"
addr="$(local_server bootstrap-stream "$target/bootstrap-stream")"
echo "local, bootstrap: $("$TEST_PYTHON" tests/streaming/ttfb.py "http://$addr" function 20 1000)"

step "per-invoke cost of one extension, local mode ($invokes invokes each)"
mkdir -p "$work/ext"
cp "$target/bootstrap-extension" "$work/ext/bootstrap-extension"
addr="$(local_server plain "$target/rust-echo")"
echo "no extension: $("$TEST_PYTHON" tests/extensions/roundtrip.py "$addr" "$invokes" 50)"
addr="$(local_server events "$target/rust-echo" --extensions-dir "$work/ext" --env EXTENSION_TELEMETRY=off)"
echo "one extension (INVOKE): $("$TEST_PYTHON" tests/extensions/roundtrip.py "$addr" "$invokes" 50)"
addr="$(local_server telemetry "$target/rust-echo" --extensions-dir "$work/ext")"
echo "one extension (INVOKE + telemetry): $("$TEST_PYTHON" tests/extensions/roundtrip.py "$addr" "$invokes" 50)"

if [ "$microvm" -eq 1 ]; then
    step "time to first byte, microVM"
    cargo build --quiet --release -p vmm -p lambda-vm
    kernel="$(scripts/build-kernel.sh | tail -n1)"
    function_dir="$(stage_stream_function)"
    rootfs="$(scripts/build-rootfs.sh "$function_dir" --ext4 | tail -n1)"
    addr="$(serve microvm "$target/lambda-vm" --kernel "$kernel" --rootfs "$rootfs" \
        --function-config "$function_dir/function.json" --init-timeout 300 --listen 127.0.0.1:0)"
    # The first invoke boots the VM; it is not measured.
    "$TEST_PYTHON" tests/streaming/ttfb.py "http://$addr" stream-ext 1 0 >/dev/null
    echo "microVM: $("$TEST_PYTHON" tests/streaming/ttfb.py "http://$addr" stream-ext 10 1000)"
fi
