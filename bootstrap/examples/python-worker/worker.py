#!/usr/bin/env python3
"""The conformance function (tests/functions/README.md) as a worker of the `bootstrap` binary.

Python 3 standard library only. The protocol is in bootstrap/WORKER_PROTOCOL.md: frames arrive on
stdin and answers go to stdout, so everything else this process prints must go to stderr.
"""

import json
import os
import sys
import time

MAX_LINE = 8 * 1024

# The protocol owns the real stdout; a stray print() must not corrupt it, so it goes to the log.
_wire_in = sys.stdin.buffer
_wire_out = sys.stdout.buffer
sys.stdout = sys.stderr


class ProtocolError(Exception):
    pass


def read_frame():
    """Returns (verb, headers, body), or None when the runtime closed our stdin."""
    verb = b""
    while not verb:
        line = _wire_in.readline(MAX_LINE + 2)
        if not line:
            return None
        verb = line.rstrip(b"\r\n")
    headers = {}
    while True:
        line = _wire_in.readline(MAX_LINE + 2)
        if not line:
            return None
        line = line.rstrip(b"\r\n").decode("utf-8")
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError("bad header line %r" % line)
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = _wire_in.read(length)
    if len(body) != length:
        return None
    return verb.decode("ascii"), headers, body


def write_frame(verb, body=b"", **headers):
    head = [verb]
    for name, value in headers.items():
        head.append("%s: %s" % (name.replace("_", "-"), value))
    head.append("Content-Length: %d" % len(body))
    _wire_out.write(("\n".join(head) + "\n\n").encode("utf-8"))
    _wire_out.write(body)
    _wire_out.flush()


def handle(event, headers):
    """The conformance contract; returns the response value or raises."""
    action = event.get("action") if isinstance(event, dict) else None
    if action is None:
        return event
    if action == "error":
        raise RuntimeError(event.get("message", "failed"))
    if action == "sleep":
        ms = int(event.get("ms", 0))
        time.sleep(ms / 1000.0)
        return {"slept": ms}
    if action == "crash":
        os._exit(3)
    if action == "context":
        memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        deadline = headers.get("deadline-ms")
        return {
            "request_id": headers.get("request-id"),
            "function_arn": headers.get("invoked-function-arn"),
            "deadline_ms": int(deadline) if deadline is not None else None,
            "trace_id": headers.get("trace-id"),
            "env_trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "function_name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            "memory_mb": int(memory) if memory is not None else None,
        }
    if action == "big":
        return "a" * int(event.get("bytes", 0))
    raise ValueError("unknown action %s" % action)


def invoke(headers, body):
    # X-Ray SDKs read the trace id from the environment, as they would under any other runtime.
    trace_id = headers.get("trace-id")
    if trace_id is None:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    else:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    try:
        event = json.loads(body)
        action = event.get("action") if isinstance(event, dict) else None
        if action is None:
            # Echo the bytes as they came, not a re-serialization of them.
            write_frame("RESPONSE", body)
            return
        result = json.dumps(handle(event, headers), separators=(",", ":"))
    except Exception as e:  # noqa: BLE001 - every failure is the invocation's error
        error = {"errorType": type(e).__name__, "errorMessage": str(e), "stackTrace": []}
        write_frame(
            "ERROR",
            json.dumps(error).encode("utf-8"),
            Error_Type=type(e).__name__,
            Content_Type="application/json",
        )
        return
    write_frame("RESPONSE", result.encode("utf-8"))


def main():
    if os.environ.get("ECHO_FAIL_INIT") == "1":
        write_frame("INIT_ERROR", b"init failed on purpose (ECHO_FAIL_INIT=1)", Error_Type="EchoInitError")
        return 1
    write_frame("READY", Protocol="1")
    while True:
        frame = read_frame()
        if frame is None:
            return 0
        verb, headers, body = frame
        if verb == "INVOKE":
            invoke(headers, body)
        elif verb == "BEFORE_SNAPSHOT":
            print("conformance: before_snapshot", file=sys.stderr, flush=True)
            write_frame("OK")
        elif verb == "AFTER_RESTORE":
            print("conformance: after_restore", file=sys.stderr, flush=True)
            write_frame("OK")
        else:
            write_frame("ERROR", ("unknown verb %s" % verb).encode("utf-8"), Error_Type="WorkerError")


if __name__ == "__main__":
    sys.exit(main())
