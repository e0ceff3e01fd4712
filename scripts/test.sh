#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party test peers (awslambdaric from PyPI, the
# lambda_runtime crate), builds everything (the guest kernel and an example initramfs included),
# checks formatting and lints, then runs the tests. The microVM tests need /dev/kvm; where it
# is absent they say so and skip.
# Nothing is skipped under CI=true: a missing peer is a failure there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_apt_packages curl ca-certificates cpio e2fsprogs gcc libc6-dev binutils unzip nftables iproute2
ensure_cargo

ensure_test_venv

step "formatting"
cargo fmt --all -- --check

step "building the workspace"
cargo build --workspace --all-targets
BOOTSTRAP_BIN="$(build_static_bootstrap)"
export BOOTSTRAP_BIN

step "guest kernel (scripts/build-kernel.sh; cached after the first build)"
GUEST_VMLINUX="$(scripts/build-kernel.sh | tail -n1)"
step "the shell worker example's images (scripts/build-rootfs.sh; vmm/README.md's examples)"
shell_images="$(scripts/build-rootfs.sh bootstrap/examples/shell-worker --ext4)"
GUEST_INITRAMFS="$(head -n1 <<<"$shell_images")"
GUEST_SHELL_ROOTFS="$(tail -n1 <<<"$shell_images")"
export GUEST_SHELL_ROOTFS
step "the echo function's ext4 image, for the microVM tests"
echo_function="$(stage_rust_echo_function)"
GUEST_ROOTFS="$(scripts/build-rootfs.sh "$echo_function" --ext4 | tail -n1)"
GUEST_FUNCTION_CONFIG="$echo_function/function.json"
snapstart_function="$(stage_rust_echo_function snap-start)"
GUEST_SNAPSTART_ROOTFS="$(scripts/build-rootfs.sh "$snapstart_function" --ext4 | tail -n1)"
GUEST_SNAPSTART_FUNCTION_CONFIG="$snapstart_function/function.json"
export GUEST_VMLINUX GUEST_INITRAMFS GUEST_ROOTFS GUEST_FUNCTION_CONFIG
export GUEST_SNAPSTART_ROOTFS GUEST_SNAPSTART_FUNCTION_CONFIG
step "the streaming function's ext4 image, with an extension layer (tests/microvm.rs)"
stream_function="$(stage_stream_function)"
GUEST_STREAM_ROOTFS="$(scripts/build-rootfs.sh "$stream_function" --ext4 | tail -n1)"
GUEST_STREAM_FUNCTION_CONFIG="$stream_function/function.json"
export GUEST_STREAM_ROOTFS GUEST_STREAM_FUNCTION_CONFIG
step "the networking test function's ext4 images (tests/network.rs)"
net_function="$(stage_net_function)"
GUEST_NET_ROOTFS="$(scripts/build-rootfs.sh "$net_function" --ext4 | tail -n1)"
GUEST_NET_FUNCTION_CONFIG="$net_function/function.json"
# The address tests/network.rs gives the SnapStart test's first environment link.
net_snapstart_function="$(stage_net_function snap-start 100.64.201.1:47001)"
GUEST_NET_SNAPSTART_ROOTFS="$(scripts/build-rootfs.sh "$net_snapstart_function" --ext4 | tail -n1)"
GUEST_NET_SNAPSTART_FUNCTION_CONFIG="$net_snapstart_function/function.json"
export GUEST_NET_ROOTFS GUEST_NET_FUNCTION_CONFIG
export GUEST_NET_SNAPSTART_ROOTFS GUEST_NET_SNAPSTART_FUNCTION_CONFIG

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "no import circles between the vmm's files (scripts/import-cycles.py)"
scripts/import-cycles.py vmm/src

step "tests"
cargo test --workspace

step "fuzzing: every target for a short while (scripts/fuzz.sh; longer runs in BENCHMARKS.md)"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
