#!/usr/bin/env bash
# Runtime init time (process start to the runtime's first `GET /next`) for our `bootstrap` beside
# the `lambda_runtime` crate, and the deployment package size of each example, in one run.
#
#   scripts/bench-init.sh [RUNS]      (RUNS per runtime, default 20)
#
# Each sample starts the runtime afresh with the reserved Lambda environment, pointed at a
# Runtime API socket of this script's own, and times from just before the process is created
# to the arrival of its first request, `GET /next` (then the runtime is killed). That is init as
# Lambda bills it for a function whose init does nothing, without a server's own latency in it.
# The runtimes take turns, so a slow moment of a shared machine falls on all of them alike.
# Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

runs="${1:-20}"
case $runs in '' | *[!0-9]*) die "RUNS must be a number, got $runs" ;; esac

ensure_cargo
step "release builds: bootstrap-echo (our library), rust-echo (lambda_runtime)"
cargo build --quiet --release -p rust-echo -p bootstrap-echo
BOOTSTRAP_BIN="$(build_static_bootstrap)"
export BOOTSTRAP_BIN

out="$(cargo_target_dir)/bench-init"
rm -rf "$out"
mkdir -p "$out"
sizes=()
for example in rust-handler shell-worker python-worker; do
    zip="$(scripts/package-lambda.sh "bootstrap/examples/$example" -o "$out/$example.zip" | tail -n1)"
    mkdir -p "$out/$example"
    python3 - "$zip" "$out/$example" <<'PY'
import os, sys, zipfile
# Unpacks with the modes the zip records, as Lambda does (zipfile's extract drops them).
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        os.chmod(path, info.external_attr >> 16 & 0o777)
PY
    sizes+=("$example" "$(stat -c %s "$zip")" \
        "$(python3 -c 'import sys,zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$zip")")
done

step "init time, $runs runs per runtime, taking turns"
python3 - "$runs" "$(cargo_target_dir)/release" "$out" "${sizes[@]}" <<'PY'
import os, signal, socket, statistics, subprocess, sys, time

runs, release, packages = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sizes = sys.argv[4:]
functions = os.path.join(os.getcwd(), "tests", "functions")
runtimes = [
    ("our `bootstrap` library: tests/functions/bootstrap-echo (release build)",
     os.path.join(release, "bootstrap-echo"), "echo", os.path.join(functions, "bootstrap-echo")),
    ("`lambda_runtime` crate: tests/functions/rust-echo (release build)",
     os.path.join(release, "rust-echo"), "echo", os.path.join(functions, "rust-echo")),
    ("package rust-handler: its static `bootstrap` (`typed_fn`)",
     os.path.join(packages, "rust-handler", "bootstrap"), "greet",
     os.path.join(packages, "rust-handler")),
]
for name, handler in [("shell-worker", "worker.sh"), ("python-worker", "worker.py")]:
    task_root = os.path.join(packages, name)
    runtimes.append(("package %s: static `bootstrap` + `%s`" % (name, handler),
                     os.path.join(task_root, "bootstrap"), handler, task_root))

NEXT = b"GET /2018-06-01/runtime/invocation/next "


def sample(runtime, handler, task_root):
    """Seconds from just before the runtime's process is created to the moment its first
    request, which must be `GET /next`, has fully arrived on the Runtime API socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    env = dict(os.environ,
               AWS_LAMBDA_RUNTIME_API="127.0.0.1:%d" % listener.getsockname()[1],
               _HANDLER=handler, LAMBDA_TASK_ROOT=task_root, AWS_REGION="us-east-1",
               AWS_LAMBDA_FUNCTION_NAME="bench", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
               AWS_LAMBDA_FUNCTION_VERSION="$LATEST", AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/bench",
               AWS_LAMBDA_LOG_STREAM_NAME="bench", AWS_LAMBDA_INITIALIZATION_TYPE="on-demand")
    start = time.perf_counter()
    child = subprocess.Popen([runtime], cwd=task_root, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        listener.settimeout(30)
        connection, _ = listener.accept()
        connection.settimeout(30)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                raise SystemExit("%s hung up before its first request" % runtime)
            request += chunk
        elapsed = time.perf_counter() - start
        if not request.startswith(NEXT):
            raise SystemExit("%s: the first request is not /next: %r" % (runtime, request[:80]))
        connection.close()
        return elapsed
    finally:
        # The whole session: a worker goes with its runtime.
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        listener.close()


samples = {label: [] for label, *_ in runtimes}
for _ in range(runs):
    for label, runtime, handler, task_root in runtimes:
        samples[label].append(sample(runtime, handler, task_root) * 1000)

print("| runtime | process start to first `/next`, median | middle half (p25-p75) | min | max | runs |")
print("|---|---|---|---|---|---|")
for label, *_ in runtimes:
    s = samples[label]
    q1, median, q3 = statistics.quantiles(s, n=4)
    print("| %s | %.2f ms | %.2f-%.2f ms | %.2f ms | %.2f ms | %d |"
          % (label, median, q1, q3, min(s), max(s), len(s)))
print()
print("| package | zip | unzipped |")
print("|---|---|---|")
for i in range(0, len(sizes), 3):
    name, zipped, unzipped = sizes[i], int(sizes[i + 1]), int(sizes[i + 2])
    print("| %s | %d bytes (%.2f MiB) | %d bytes (%.2f MiB) |"
          % (name, zipped, zipped / 2**20, unzipped, unzipped / 2**20))
PY
