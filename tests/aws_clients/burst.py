"""A burst of concurrent boto3 invokes whose read timeout is shorter than an environment takes
to start, with boto3's retries on: each caller gives up on its request, resends it, and so on
until an answer comes. Prints one JSON line: every caller's answer (or error) and attempts.

Usage: burst.py ENDPOINT_URL FUNCTION_NAME CALLERS READ_TIMEOUT_SECONDS MAX_ATTEMPTS
"""

import json
import sys
import threading

import boto3
import botocore.config

ENDPOINT, NAME = sys.argv[1], sys.argv[2]
CALLERS, READ_TIMEOUT, MAX_ATTEMPTS = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])

results = [None] * CALLERS


def call(n):
    client = boto3.client(
        "lambda",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=botocore.config.Config(
            read_timeout=READ_TIMEOUT,
            connect_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        ),
    )
    payload = json.dumps({"caller": n}).encode()
    try:
        reply = client.invoke(FunctionName=NAME, Payload=payload)
        results[n] = {
            "status": reply["StatusCode"],
            "error": reply.get("FunctionError"),
            "payload": json.loads(reply["Payload"].read()),
            "attempts": reply["ResponseMetadata"].get("RetryAttempts", 0) + 1,
        }
    except Exception as error:  # every failure is reported, none raised
        results[n] = {"exception": f"{type(error).__name__}: {error}"}


threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLERS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
