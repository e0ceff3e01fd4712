#!/usr/bin/env bash
# The cluster benchmark (BENCHMARKS.md, "Many hosts"), in one run:
#   - sync invokes per second and p50/p99 latency through 1, 2 and 3 local-mode hosts behind a
#     3-node NATS cluster (scripts/cluster.sh: each host in its own network namespace, one
#     environment each, one client per host, invokes spread over every host's endpoint), against
#     one `lambda-local` alone (no cluster, one environment, one client);
#   - the cost of one forwarded invoke: sequential invokes through a host when it runs them
#     itself, then while it is busy so that each is forwarded to the other host.
# The function is the conformance echo on our bootstrap library (tests/functions/bootstrap-echo),
# event `{}`. Needs root (network namespaces). Prints a markdown table.
#
# Usage: scripts/bench-cluster.sh [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

seconds=10
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="${2:?}"; shift ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || die "network namespaces need root"
ensure_cargo
ensure_nats_server
command -v python3 >/dev/null || ensure_apt_packages python3
step "building lambda-local, lambda-cluster, the echo function and the load client (release)"
cargo build --quiet --release -p lambda-local -p cluster -p bootstrap-echo -p benches --bins
bin="$(cargo_target_dir)/release"
work="$(mktemp -d)"
name=lbench subnet=10.77.250
cleanup() {
    stop_server
    scripts/cluster.sh down --name "$name" --state "$work/state" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The function: function.json and a package whose `bootstrap` is the echo function.
mkdir -p "$work/function"
cat >"$work/function/function.json" <<'JSON'
{ "function_name": "echo", "handler": "echo", "timeout_secs": 60 }
JSON
python3 - "$bin/bootstrap-echo" "$work/function/echo.zip" <<'PY'
import sys, zipfile
info = zipfile.ZipInfo("bootstrap")
info.external_attr = 0o100755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with zipfile.ZipFile(sys.argv[2], "w") as z:
    z.writestr(info, open(sys.argv[1], "rb").read())
PY

load() { "$bin/cluster_load" --seconds "$seconds" --warmup 2 "$@"; }
field() { python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 2))' "$1" "$2"; }
row() { echo "| $1 | $(field "$2" clients) | $(field "$2" invokes_per_s) | $(field "$2" p50_ms) | $(field "$2" p99_ms) | $(field "$2" not_200) |"; }

echo "| setup | clients | invokes/s | p50 ms | p99 ms | not 200 |"
echo "|---|---|---|---|---|---|"

step "one lambda-local alone"
start_server lambda-local "$bin/lambda-local" --runtime "$bin/bootstrap-echo" --handler echo \
    --listen 127.0.0.1:0 --runtime-api 127.0.0.1:0
trap cleanup EXIT # start_server set its own
addr="$(sed -n 's/.*listening invoke=\([^ ]*\).*/\1/p' "$SERVER_LOG" | head -n1)"
row "lambda-local alone (no cluster)" "$(load --clients 1 --urls "http://$addr/2015-03-31/functions/function/invocations")"
stop_server

for hosts in 1 2 3; do
    step "$hosts host(s) behind the cluster"
    scripts/cluster.sh up --name "$name" --subnet "$subnet" --hosts "$hosts" --max-concurrency 1 \
        --state "$work/state" --bin-dir "$bin" --function "$work/function" --detach >/dev/null
    urls=""
    for i in $(seq "$hosts"); do
        urls+="${urls:+,}$(cat "$work/state/hosts/h$i/url")/2015-03-31/functions/echo/invocations"
    done
    row "$hosts host(s), cluster" "$(load --clients "$hosts" --urls "$urls")"
    if [ "$hosts" = 2 ]; then
        h1="$(cat "$work/state/hosts/h1/url")/2015-03-31/functions/echo/invocations"
        local_run="$(load --clients 1 --urls "$h1")"
        # Host 1's only environment busy for the whole measurement: each invoke is forwarded.
        curl -s -o /dev/null -d "{\"action\":\"sleep\",\"ms\":$(((seconds + 10) * 1000))}" "$h1" &
        busy=$!
        sleep 1
        forwarded="$(load --clients 1 --urls "$h1")"
        kill "$busy" 2>/dev/null || true
        wait "$busy" 2>/dev/null || true
    fi
    scripts/cluster.sh down --name "$name" --state "$work/state" >/dev/null
done
echo
echo "| one client through host 1 | invokes/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
echo "| run by host 1 itself | $(field "$local_run" invokes_per_s) | $(field "$local_run" p50_ms) | $(field "$local_run" p99_ms) |"
echo "| forwarded to host 2 (host 1 busy) | $(field "$forwarded" invokes_per_s) | $(field "$forwarded" p50_ms) | $(field "$forwarded" p99_ms) |"
