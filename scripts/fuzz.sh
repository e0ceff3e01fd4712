#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (cargo-fuzz): each for SECONDS (default 60), all of
# them or the TARGETs named. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each run starts from the committed seed corpus fuzz/corpus/TARGET (read-only) and keeps what it
# finds in a scratch corpus; FUZZ_MERGE=1 merges the inputs that add coverage back into the
# committed corpus. Limits: 512 MiB of RSS, no single allocation over 64 MiB, 10 s per input
# (a hang). A crash, leak, out-of-memory or timeout fails the script and prints the reproducer's
# path; `cargo fuzz run TARGET PATH` (in fuzz/) replays it.
#
# Builds optimized with debug assertions and overflow checks on (`-O -a`): an arithmetic overflow a
# hostile input can cause is a finding, as it would panic in the debug builds the tests use.
# Builds with the nightly toolchain where rustup has one, else with the default (stable) one and
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly-only sanitizer flags). Installs cargo-fuzz if
# missing. FUZZ_LOG_DIR keeps libFuzzer's output (default: a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_cargo

seconds="${1:-60}"
[ $# -gt 0 ] && shift
case "$seconds" in '' | *[!0-9]*) die "SECONDS must be a whole number, got '$seconds'" ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

toolchain=()
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    step "no nightly toolchain: building with $(rustc --version) and RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo "${toolchain[@]}" fuzz list)
fi

step "building the fuzz targets"
(cd fuzz && cargo "${toolchain[@]}" fuzz build -O -a)

log_dir="${FUZZ_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
printf '%-16s %12s %8s %8s %6s  %s\n' target executions exec/s corpus secs result >"$log_dir/summary"
for target in "${targets[@]}"; do
    seeds="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    work="$scratch/$target"
    mkdir -p "$seeds" "$artifacts" "$work"
    log="$log_dir/$target.log"
    step "fuzzing $target for ${seconds}s (log: $log)"
    start=$(date +%s)
    result=ok
    (cd fuzz && cargo "${toolchain[@]}" fuzz run -O -a "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=512 -malloc_limit_mb=64 \
        -print_final_stats=1 -artifact_prefix="artifacts/$target/") >"$log" 2>&1 || result=FAILED
    elapsed=$(($(date +%s) - start))
    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ $result = ok ]; then
        (cd fuzz && cargo "${toolchain[@]}" fuzz run -O -a "$target" "corpus/$target" "$work" -- \
            -merge=1 -timeout=10 -rss_limit_mb=512 -malloc_limit_mb=64) >>"$log" 2>&1 || result=FAILED
    fi
    stat() { grep -o "stat::$1: *[0-9]*" "$log" | tail -n1 | grep -o '[0-9]*$' || echo '?'; }
    # The corpus libFuzzer ended with (seeds and new finds), or the committed one after a merge.
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        corpus=$(find "$seeds" -type f | wc -l)
    else
        corpus=$(find "$work" "$seeds" -type f | wc -l)
    fi
    printf '%-16s %12s %8s %8s %6s  %s\n' "$target" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$corpus" "$elapsed" "$result" >>"$log_dir/summary"
    if [ $result != ok ]; then
        failed+=("$target")
        tail -n 40 "$log" >&2
        reproducer=$(grep -o "Test unit written to [^ ]*" "$log" | tail -n1 | sed 's/Test unit written to //')
        printf 'fuzz target %s failed; reproducer: fuzz/%s\n' "$target" "${reproducer:-(none written, see $log)}" >&2
    fi
done
cat "$log_dir/summary"
[ ${#failed[@]} -eq 0 ] || die "fuzz targets failed: ${failed[*]}"
