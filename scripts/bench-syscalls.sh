#!/usr/bin/env bash
# System calls per invoke in local mode, so that a regression shows up as a number: lambda-local
# and its runtime (our bootstrap library, tests/functions/bootstrap-echo) under `strace -f -c`,
# N keep-alive invokes from a small Python client, the totals divided by N. Start-up and
# shutdown are in the totals too; with N in the thousands they are noise.
#
# Usage: scripts/bench-syscalls.sh [N]     (default 2000; results: BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

invokes="${1:-2000}"
ensure_apt_packages strace python3
ensure_cargo
step "building lambda-local and bootstrap-echo (release)"
cargo build --quiet --release -p lambda-local -p bootstrap-echo
target="$(cargo_target_dir)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

strace -f -c -o "$work/strace.txt" "$target/release/lambda-local" \
    --runtime "$target/release/bootstrap-echo" --handler echo \
    --listen 127.0.0.1:0 --runtime-api 127.0.0.1:0 --event-store "$work/events" \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    grep -q "lambda-local: listening" "$work/server.log" 2>/dev/null && break
    sleep 0.1
done
addr=$(sed -n 's/^lambda-local: listening invoke=\([^ ]*\).*/\1/p' "$work/server.log")
[ -n "$addr" ] || die "lambda-local did not start: $(cat "$work/server.log")"
python3 - "$addr" "$invokes" <<'PY'
import http.client, sys
host, port = sys.argv[1].split(":")
conn = http.client.HTTPConnection(host, int(port))
for _ in range(int(sys.argv[2])):
    conn.request("POST", "/2015-03-31/functions/function/invocations", body=b'{"n":1}')
    reply = conn.getresponse()
    reply.read()
    if reply.status != 200:
        raise SystemExit(f"status {reply.status}")
PY
# The server itself is strace's child; SIGTERM ends it cleanly and strace then writes its table
# (a background job of a script ignores SIGINT, so strace cannot be stopped that way).
pkill -TERM -P "$server" || true
wait "$server" || true
step "system calls per invoke (lambda-local and its runtime, $invokes invokes)"
awk -v n="$invokes" '
    $NF == "total" { printf "   total: %.1f per invoke\n", $(NF-2) / n; next }
    /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ {
        calls = $4; name = $NF
        if (calls / n >= 0.5) printf "   %-14s %6.1f\n", name, calls / n
    }' "$work/strace.txt"
