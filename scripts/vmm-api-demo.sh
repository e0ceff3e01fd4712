#!/usr/bin/env bash
# Boots a microVM, pauses it, snapshots it and restores it in a second `vmm` process, with
# nothing but `curl --unix-socket` on the vmm's Firecracker API: the vmm/README.md example,
# run as written by vmm/tests/api_peers.rs.
#
# Usage: scripts/vmm-api-demo.sh KERNEL [INITRD]
#   VMM       the vmm binary (default target/release/vmm, else target/debug/vmm)
#   WORK      a directory for the sockets, snapshot and consoles (default: a new temporary one)
#   MEM_MIB   guest memory (default 128)
#   BOOT_ARGS the kernel command line (default: the vmm's)
#   WAIT_FOR  a console line (grep -E) that shows the guest is up (default "Linux version")
#   BOOT_WAIT_S  how long to wait for it (default 300: a Linux boot under this machine's
#             emulated KVM takes 20-40 s idle, minutes when the machine is busy)
#   EXCHANGES a file to append every request and response to, as JSON lines (for the
#             OpenAPI check in vmm/api/check_exchanges.py)
set -euo pipefail
cd "$(dirname "$0")/.."

kernel="${1:?usage: scripts/vmm-api-demo.sh KERNEL [INITRD]}"
initrd="${2:-}"
vmm="${VMM:-}"
if [ -z "$vmm" ]; then
    vmm=target/release/vmm
    [ -x "$vmm" ] || vmm=target/debug/vmm
fi
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
mem="${MEM_MIB:-128}"
wait_for="${WAIT_FOR:-Linux version}"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# api SOCKET METHOD PATH [BODY]: one request; fails (printing the fault) unless it succeeds.
api() {
    local socket="$1" method="$2" path="$3" body="${4:-}" out status
    local args=(--silent --show-error --unix-socket "$socket" -X "$method" -o "$work/reply" -w '%{http_code}')
    [ -z "$body" ] || args+=(-H 'Content-Type: application/json' -d "$body")
    status=$(curl "${args[@]}" "http://localhost$path")
    out=$(cat "$work/reply" 2>/dev/null || true)
    rm -f "$work/reply"
    if [ -n "${EXCHANGES:-}" ]; then
        python3 -c 'import json, sys; m, p, b, s, r = sys.argv[1:]; print(json.dumps({"method": m, "path": p, "request_body": b or None, "status": int(s), "response_body": r or None}))' \
            "$method" "$path" "$body" "$status" "$out" >>"$EXCHANGES"
    fi
    printf '%s %s -> %s %s\n' "$method" "$path" "$status" "$out" >&2
    case "$status" in 200 | 204) [ "$method" != GET ] || printf '%s\n' "$out" ;; *) return 1 ;; esac
}

# wait_until SECONDS COMMAND...: polls COMMAND every 10 ms until it succeeds.
wait_until() {
    local tries=$(($1 * 100)) _
    shift
    for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.01; done
    return 1
}

# start_vmm NAME: a vmm serving the API on $work/NAME.sock, its console in $work/NAME.console.
start_vmm() {
    rm -f "$work/$1.sock"
    "$vmm" --api-sock "$work/$1.sock" --serial-out "$work/$1.console" 2>"$work/$1.stderr" &
    pids+=($!)
    wait_until 10 test -S "$work/$1.sock" || { cat "$work/$1.stderr" >&2; exit 1; }
}

step() { printf '==> %s\n' "$*" >&2; }

step "first vmm: configure and boot"
start_vmm first
sock="$work/first.sock"
api "$sock" GET / >/dev/null
api "$sock" PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": $mem}"
boot="{\"kernel_image_path\": \"$kernel\""
[ -z "$initrd" ] || boot+=", \"initrd_path\": \"$initrd\""
[ -z "${BOOT_ARGS:-}" ] || boot+=", \"boot_args\": \"$BOOT_ARGS\""
api "$sock" PUT /boot-source "$boot}"
api "$sock" PUT /entropy '{}'
api "$sock" PUT /actions '{"action_type": "InstanceStart"}'
wait_until "${BOOT_WAIT_S:-300}" grep -qE "$wait_for" "$work/first.console" || {
    echo "the guest never printed '$wait_for':" >&2
    cat "$work/first.console" >&2
    exit 1
}

step "pause and snapshot"
api "$sock" PATCH /vm '{"state": "Paused"}'
api "$sock" PUT /snapshot/create \
    "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$work/vm.state\", \"mem_file_path\": \"$work/vm.mem\"}"
api "$sock" GET /ext/status >/dev/null
kill "${pids[0]}"

step "second vmm: restore and run"
start_vmm second
sock="$work/second.sock"
api "$sock" PUT /snapshot/load \
    "{\"snapshot_path\": \"$work/vm.state\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$work/vm.mem\"}, \"resume_vm\": true}"
state=$(api "$sock" GET /)
case "$state" in *'"state":"Running"'*) ;; *) echo "restored vmm is not running: $state" >&2; exit 1 ;; esac
status=$(api "$sock" GET /ext/status)
echo "restored: $status"
