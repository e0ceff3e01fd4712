"""Times N synchronous invokes of {"n": 1}, one after another on one kept-alive connection (the
standard library's http.client, so the client adds little of its own), after W warm-up invokes.
Prints the mean, the median and the 99th percentile in milliseconds as one JSON object.

Usage: roundtrip.py HOST:PORT N W
"""

import http.client
import json
import statistics
import sys
import time

address, count, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = address.rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=300)
path = "/2015-03-31/functions/function/invocations"


def invoke():
    connection.request("POST", path, body=b'{"n": 1}')
    reply = connection.getresponse()
    body = reply.read()
    assert reply.status == 200 and reply.getheader("X-Amz-Function-Error") is None, body


for _ in range(warm):
    invoke()
times = []
for _ in range(count):
    started = time.perf_counter()
    invoke()
    times.append((time.perf_counter() - started) * 1000)
times.sort()
print(json.dumps({
    "invokes": count,
    "mean_ms": round(statistics.mean(times), 3),
    "median_ms": round(statistics.median(times), 3),
    "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
}))
