"""Drives a function service's invoke endpoint with the real AWS clients, boto3 and the AWS CLI,
the way users do (`--endpoint-url`), and fails loudly when the service does not answer as
Lambda's API does: modeled exceptions raised, headers the clients read, the documented shapes.

Usage: check.py ENDPOINT_URL FUNCTION_NAME AWS_CLI [--reserved-concurrency]
The function is the conformance echo function (tests/functions/README.md). With
--reserved-concurrency the service can reserve concurrency (lambda-vm); without, it refuses to
(lambda-local runs one environment).
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
RESERVES = "--reserved-concurrency" in sys.argv[4:]
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


ARN = f"arn:aws:lambda:us-east-1:012345678912:function:{NAME}"


@check("boto3 invokes by name:$LATEST, full and partial ARN, and Qualifier $LATEST")
def _():
    for name, qualifier in [
        (f"{NAME}:$LATEST", None),
        (ARN, None),
        (f"{ARN}:$LATEST", None),
        (f"012345678912:function:{NAME}", None),
        (NAME, "$LATEST"),
        (f"{NAME}:$LATEST", "$LATEST"),
    ]:
        extra = {"Qualifier": qualifier} if qualifier else {}
        reply = client.invoke(FunctionName=name, Payload=b'{"by": "name"}', **extra)
        assert reply["StatusCode"] == 200, (name, qualifier, reply)
        assert json.loads(reply["Payload"].read()) == {"by": "name"}, (name, qualifier)


@check("boto3 another qualifier raises ResourceNotFoundException naming it")
def _():
    message = expect_exception(
        client.exceptions.ResourceNotFoundException, FunctionName=NAME, Qualifier="1", Payload=b"{}"
    )
    assert f"function:{NAME}:1" in message, message
    message = expect_exception(
        client.exceptions.ResourceNotFoundException, FunctionName=f"{ARN}:live", Payload=b"{}"
    )
    assert f"function:{NAME}:live" in message, message


@check("boto3 list_functions and get_function describe the function")
def _():
    functions = client.list_functions()["Functions"]
    listed = [f for f in functions if f["FunctionName"] == NAME]
    assert len(listed) == 1, functions
    assert listed[0]["FunctionArn"] == ARN, listed
    assert listed[0]["Version"] == "$LATEST", listed
    assert listed[0]["MemorySize"] >= 128, listed
    described = client.get_function(FunctionName=f"{NAME}:$LATEST")["Configuration"]
    assert described["FunctionName"] == NAME and described["Timeout"] >= 1, described
    try:
        client.get_function(FunctionName=NAME, Qualifier="2")
        raise AssertionError("get_function of version 2 did not fail")
    except client.exceptions.ResourceNotFoundException as error:
        assert f"{NAME}:2" in error.response["Error"]["Message"], error.response


@check("boto3 the concurrency calls at the SDK's paths")
def _():
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=NAME)
    if not RESERVES:
        try:
            client.put_function_concurrency(FunctionName=NAME, ReservedConcurrentExecutions=2)
            raise AssertionError("put_function_concurrency was accepted by a one-environment server")
        except client.exceptions.InvalidParameterValueException as error:
            assert "does not apply" in error.response["Error"]["Message"], error.response
        return
    reply = client.put_function_concurrency(FunctionName=ARN, ReservedConcurrentExecutions=3)
    assert reply["ReservedConcurrentExecutions"] == 3, reply
    assert client.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 3
    assert client.get_function(FunctionName=NAME)["Concurrency"]["ReservedConcurrentExecutions"] == 3
    try:
        client.put_function_concurrency(FunctionName=NAME, ReservedConcurrentExecutions=100000)
        raise AssertionError("a reservation beyond the host was accepted")
    except client.exceptions.InvalidParameterValueException as error:
        assert "100000" in error.response["Error"]["Message"], error.response
    client.delete_function_concurrency(FunctionName=NAME)
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=NAME)


def aws_cli(*args):
    env = dict(os.environ, **CREDENTIALS)
    return subprocess.run(
        [AWS_CLI, "--endpoint-url", ENDPOINT, "lambda", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


def aws(*args):
    return aws_cli("invoke", *args)


@check("AWS CLI list-functions and the concurrency commands")
def _():
    run = aws_cli("list-functions")
    assert run.returncode == 0, run.stderr
    names = [f["FunctionName"] for f in json.loads(run.stdout)["Functions"]]
    assert NAME in names, run.stdout
    run = aws_cli("get-function-concurrency", "--function-name", NAME)
    assert run.returncode == 0, run.stderr
    if RESERVES:
        run = aws_cli("put-function-concurrency", "--function-name", NAME,
                      "--reserved-concurrent-executions", "2")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["ReservedConcurrentExecutions"] == 2, run.stdout
        run = aws_cli("delete-function-concurrency", "--function-name", NAME)
        assert run.returncode == 0, run.stderr
    run = aws_cli("invoke", "--function-name", NAME, "--qualifier", "7", "/dev/null")
    assert run.returncode != 0 and "(ResourceNotFoundException)" in run.stderr, run.stderr
    assert f"{NAME}:7" in run.stderr, run.stderr


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
