#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party test peers (awslambdaric from PyPI, the
# lambda_runtime crate), builds everything (the guest kernel and an example initramfs included),
# checks formatting and lints, then runs the tests.
# Nothing is skipped under CI=true: a missing peer is a failure there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_apt_packages curl ca-certificates cpio e2fsprogs gcc libc6-dev
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
step "example initramfs (scripts/build-rootfs.sh)"
GUEST_INITRAMFS="$(scripts/build-rootfs.sh bootstrap/examples/shell-worker | tail -n1)"
export GUEST_VMLINUX GUEST_INITRAMFS

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tests"
cargo test --workspace
