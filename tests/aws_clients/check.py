"""Drives a function service's invoke endpoint with the real AWS clients, boto3 and the AWS CLI,
the way users do (`--endpoint-url`), and fails loudly when the service does not answer as
Lambda's API does: modeled exceptions raised, headers the clients read, the documented shapes.

Usage: check.py ENDPOINT_URL FUNCTION_NAME AWS_CLI
The function is the conformance echo function (tests/functions/README.md).
"""

import base64
import json
import os
import subprocess
import sys
import tempfile

import boto3
import botocore.config

ENDPOINT, NAME, AWS_CLI = sys.argv[1], sys.argv[2], sys.argv[3]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
client = boto3.client(
    "lambda",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    # One attempt: a retried request would hide what the service answered the first time.
    config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=300),
)
checked = []


def check(name):
    def run(test):
        test()
        checked.append(name)
        print(f"ok: {name}", flush=True)
    return run


def expect_exception(exception, **kwargs):
    try:
        client.invoke(**kwargs)
    except exception as error:
        message = error.response["Error"]["Message"]
        assert message, f"{exception.__name__} without a message"
        return message
    raise AssertionError(f"{exception.__name__} was not raised")


@check("boto3 success, ExecutedVersion")
def _():
    reply = client.invoke(FunctionName=NAME, Payload=b'{"hello": "sdk"}')
    assert reply["StatusCode"] == 200, reply
    assert "FunctionError" not in reply, reply
    assert json.loads(reply["Payload"].read()) == {"hello": "sdk"}
    assert reply["ExecutedVersion"] == "$LATEST", reply


@check("boto3 handler error is FunctionError")
def _():
    payload = json.dumps({"action": "error", "message": "broken on purpose"}).encode()
    reply = client.invoke(FunctionName=NAME, Payload=payload)
    assert reply["StatusCode"] == 200, reply
    assert reply["FunctionError"] == "Unhandled", reply
    body = json.loads(reply["Payload"].read())
    assert body["errorMessage"] == "broken on purpose", body


@check("boto3 unknown function raises ResourceNotFoundException")
def _():
    message = expect_exception(
        client.exceptions.ResourceNotFoundException, FunctionName="no-such-function", Payload=b"{}"
    )
    assert "no-such-function" in message, message


@check("boto3 invalid payload raises InvalidRequestContentException")
def _():
    expect_exception(
        client.exceptions.InvalidRequestContentException, FunctionName=NAME, Payload=b"{not json"
    )


@check("boto3 oversized payload raises RequestTooLargeException")
def _():
    payload = json.dumps({"pad": "x" * (7 * 1024 * 1024)}).encode()
    message = expect_exception(
        client.exceptions.RequestTooLargeException, FunctionName=NAME, Payload=payload
    )
    assert "6291557" in message, message


@check("boto3 Event is accepted with 202")
def _():
    reply = client.invoke(FunctionName=NAME, InvocationType="Event", Payload=b'{"async": true}')
    assert reply["StatusCode"] == 202, reply


@check("boto3 DryRun answers 204")
def _():
    reply = client.invoke(FunctionName=NAME, InvocationType="DryRun", Payload=b"{}")
    assert reply["StatusCode"] == 204, reply


@check("boto3 LogType Tail returns the log up to REPORT")
def _():
    reply = client.invoke(FunctionName=NAME, LogType="Tail", Payload=b'{"tail": 1}')
    log = base64.b64decode(reply["LogResult"]).decode()
    request_id = reply["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {request_id}" in log, log
    assert f"REPORT RequestId: {request_id}" in log, log


def aws(*args):
    env = dict(os.environ, **CREDENTIALS)
    return subprocess.run(
        [AWS_CLI, "--endpoint-url", ENDPOINT, "lambda", "invoke", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


@check("AWS CLI invoke prints StatusCode and ExecutedVersion")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        run = aws("--function-name", NAME, "--payload", '{"cli": true}', out)
        assert run.returncode == 0, run.stderr
        printed = json.loads(run.stdout)
        assert printed["StatusCode"] == 200, printed
        assert printed["ExecutedVersion"] == "$LATEST", printed
        with open(out) as f:
            assert json.load(f) == {"cli": True}


@check("AWS CLI with a wrong function name shows ResourceNotFoundException and a message")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        run = aws("--function-name", "wrong-name", "--payload", "{}", os.path.join(tmp, "o"))
        assert run.returncode != 0, run.stdout
        assert "(ResourceNotFoundException)" in run.stderr, run.stderr
        assert "wrong-name" in run.stderr, run.stderr


print(f"all {len(checked)} checks passed")
