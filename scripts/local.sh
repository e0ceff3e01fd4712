#!/usr/bin/env bash
# The main job in local mode: build `lambda-local` and the static `bootstrap`, start local mode
# with the example shell worker function, and invoke it with curl (a success and a handler
# error). With --serve, keep the server in the foreground for your own invokes.
#
# Usage: scripts/local.sh [--serve] [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

serve=false
port=8080
while [ $# -gt 0 ]; do
    case "$1" in
        --serve) serve=true ;;
        --port) port="${2:?--port needs a value}"; shift ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

ensure_apt_packages curl ca-certificates
ensure_cargo
step "building lambda-local"
cargo build --quiet --release -p lambda-local
bootstrap="$(build_static_bootstrap)"
server="$(cargo_target_dir)/release/lambda-local"
function_dir="$PWD/bootstrap/examples/shell-worker"
url="http://127.0.0.1:$port/2015-03-31/functions/function/invocations"

args=(--runtime "$bootstrap" --handler worker.sh --task-root "$function_dir"
      --listen "127.0.0.1:$port" --runtime-api 127.0.0.1:0)
if $serve; then
    step "serving $url (Ctrl-C stops)"
    exec "$server" "${args[@]}"
fi

start_server lambda-local "$server" "${args[@]}"

step "invoke: curl -d '{\"hello\":\"world\"}' $url"
curl -sS -i -d '{"hello":"world"}' "$url"
echo
step "invoke with a handler error"
curl -sS -i -d '{"action":"error","message":"something broke"}' "$url"
echo
# Each REPORT line follows its invoke's answer: wait for both before showing the log.
for _ in $(seq 50); do
    [ "$(grep -c '^REPORT' "$SERVER_LOG")" -ge 2 ] && break
    sleep 0.1
done
step "server log (function output and START/END/REPORT lines)"
cat "$SERVER_LOG"
