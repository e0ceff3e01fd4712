#!/usr/bin/env bash
# Invocations per second through local mode for each runtime under test, in one criterion run.
# Builds the peers first (the same ones the conformance suite uses). Extra args go to criterion,
# e.g. `scripts/bench-local.sh --measurement-time 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_cargo
ensure_test_venv

step "building the peers"
cargo build --quiet --release -p lambda-local -p rust-echo -p bootstrap-echo
export TEST_PROFILE=release
BOOTSTRAP_BIN="$(build_static_bootstrap)"
export BOOTSTRAP_BIN

step "benchmark: local_mode"
cargo bench -p benches --bench local_mode -- "$@"
