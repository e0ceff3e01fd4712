"""Reads one InvokeWithResponseStream answer with boto3, unmodified, as users do, and prints what
arrived as one JSON object: the response's fields, each PayloadChunk (base64, or only counted
with --count), and the InvokeComplete event.

Usage: read_stream.py ENDPOINT_URL FUNCTION_NAME PAYLOAD_JSON [--gate PATH] [--tail] [--count]

With --gate, PATH is created once the first chunk has arrived: a function that waits for it
before writing the rest proves that the first chunk reached the client while the function was
still running.
"""

import base64
import json
import pathlib
import sys

import boto3
import botocore.config

endpoint, name, payload = sys.argv[1], sys.argv[2], sys.argv[3]
flags = sys.argv[4:]
gate = pathlib.Path(flags[flags.index("--gate") + 1]) if "--gate" in flags else None
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
kwargs = {"FunctionName": name, "Payload": payload.encode()}
if "--tail" in flags:
    kwargs["LogType"] = "Tail"
reply = client.invoke_with_response_stream(**kwargs)
out = {
    "status": reply["StatusCode"],
    "executed_version": reply.get("ExecutedVersion"),
    "content_type": reply.get("ResponseStreamContentType"),
    "chunks": [],
    "chunk_count": 0,
    "bytes": 0,
    "complete": None,
}
for event in reply["EventStream"]:
    if "PayloadChunk" in event:
        data = event["PayloadChunk"]["Payload"]
        out["chunk_count"] += 1
        out["bytes"] += len(data)
        if "--count" not in flags:
            out["chunks"].append(base64.b64encode(data).decode())
        if gate is not None and not gate.exists():
            gate.touch()
    elif "InvokeComplete" in event:
        out["complete"] = event["InvokeComplete"]
print(json.dumps(out))
