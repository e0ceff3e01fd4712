#!/usr/bin/env python3
"""Per-invoke latency of lambda-local beside the AWS Runtime Interface Emulator, same function,
alternating runs; then lambda-local on a quiet host, with 2,000 idle processes, and quiet again.

Usage: scripts/bench-local-vs-rie.py RIE_BINARY
  (release builds first: cargo build --release -p lambda-local -p bootstrap-echo)
The emulator is not part of the project; pass the path of one built from its public source.
Results and how they were obtained: BENCHMARKS.md."""

import http.client
import statistics
import subprocess
import sys
import time

ECHO = "target/release/bootstrap-echo"


def run(addr, n):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port))
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("POST", "/2015-03-31/functions/function/invocations", body=b'{"n":1}')
        reply = conn.getresponse()
        reply.read()
        if reply.status != 200:
            raise SystemExit(f"{addr}: status {reply.status}")
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000


def start(kind, rie):
    if kind == "rie":
        command = [rie, "--runtime-interface-emulator-address", "127.0.0.1:18091",
                   "--runtime-api-address", "127.0.0.1:19091", ECHO]
        env = {"AWS_LAMBDA_FUNCTION_TIMEOUT": "3", "_HANDLER": "echo", "PATH": "/usr/bin:/bin"}
        addr = "127.0.0.1:18091"
    else:
        command = ["target/release/lambda-local", "--runtime", ECHO, "--handler", "echo",
                   "--listen", "127.0.0.1:18092", "--runtime-api", "127.0.0.1:19092"]
        env = None
        addr = "127.0.0.1:18092"
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            run(addr, 50)  # the first invokes run the function's init
            return server, addr
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    results = {"AWS Runtime Interface Emulator": [], "lambda-local": []}
    for _ in range(3):
        for name, kind in [("AWS Runtime Interface Emulator", "rie"), ("lambda-local", "local")]:
            server, addr = start(kind, sys.argv[1])
            results[name].append(run(addr, 2000))
            server.terminate()
            server.wait()
    for name, runs in results.items():
        print(f"{name}: " + "; ".join(f"median {m:.3f} ms, p99 {p:.2f} ms" for m, p in runs))
    server, addr = start("local", None)
    print(f"lambda-local, quiet host: median {run(addr, 1000)[0]:.3f} ms")
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(2000)]
    try:
        print(f"lambda-local, 2,000 idle processes: median {run(addr, 1000)[0]:.3f} ms")
    finally:
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()
    print(f"lambda-local, quiet again: median {run(addr, 1000)[0]:.3f} ms")
    server.terminate()
    server.wait()


main()
