#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party test peers (awslambdaric from PyPI, the
# lambda_runtime crate), builds everything, checks formatting and lints, then runs the tests.
# Nothing is skipped under CI=true: a missing peer is a failure there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_apt_packages curl ca-certificates
ensure_cargo

step "python virtualenv with awslambdaric (tests/requirements.txt)"
if [ ! -x .venv/bin/python3 ]; then
    python3 -m venv .venv 2>/dev/null || { ensure_apt_packages python3-venv; python3 -m venv .venv; }
fi
.venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "formatting"
cargo fmt --all -- --check

step "building the workspace"
cargo build --workspace --all-targets
BOOTSTRAP_BIN="$(build_static_bootstrap)"
export BOOTSTRAP_BIN
export TEST_PYTHON="$PWD/.venv/bin/python3"

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tests"
cargo test --workspace
