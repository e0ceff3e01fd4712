"""Measures a streamed response with boto3's invoke_with_response_stream: the time to the first
PayloadChunk and to InvokeComplete, over N invokes of
{"chunks": ["first", "second"], "delay_ms": DELAY} (the function waits DELAY ms between them).
Prints the medians and the spread as one JSON object.

Usage: ttfb.py ENDPOINT_URL FUNCTION_NAME N DELAY_MS
"""

import json
import statistics
import sys
import time

import boto3
import botocore.config

endpoint, name, count, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    # One attempt (no retry: a retried invoke would run twice), and room for a microVM's first boot
    # on a loaded emulated host.
    config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=900),
)
payload = json.dumps({"chunks": ["first", "second"], "delay_ms": delay}).encode()
first, total = [], []
for _ in range(count):
    started = time.perf_counter()
    reply = client.invoke_with_response_stream(FunctionName=name, Payload=payload)
    seen_first = None
    for event in reply["EventStream"]:
        if "PayloadChunk" in event and event["PayloadChunk"]["Payload"].endswith(b"first"):
            seen_first = time.perf_counter()
        if "InvokeComplete" in event:
            assert "ErrorCode" not in event["InvokeComplete"], event
    ended = time.perf_counter()
    assert seen_first is not None
    first.append((seen_first - started) * 1000)
    total.append((ended - started) * 1000)


def summary(values):
    values = sorted(values)
    return {
        "median_ms": round(statistics.median(values), 2),
        "min_ms": round(values[0], 2),
        "max_ms": round(values[-1], 2),
    }


print(json.dumps({"invokes": count, "delay_ms": delay, "first_chunk": summary(first), "complete": summary(total)}))
