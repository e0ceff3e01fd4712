"""The conformance function (tests/functions/README.md) for the unmodified awslambdaric client."""
import json
import os
import sys
import time

from snapshot_restore_py import register_after_restore, register_before_snapshot

if os.environ.get("ECHO_FAIL_INIT") == "1":
    raise RuntimeError("init failed on purpose (ECHO_FAIL_INIT=1)")


@register_before_snapshot
def _before_snapshot():
    print("conformance: before_snapshot", file=sys.stderr, flush=True)


@register_after_restore
def _after_restore():
    print("conformance: after_restore", file=sys.stderr, flush=True)


def handler(event, context):
    action = event.get("action") if isinstance(event, dict) else None
    if action is None:
        return event
    if action == "error":
        raise ValueError(event.get("message", "failed"))
    if action == "sleep":
        time.sleep(event.get("ms", 0) / 1000.0)
        return {"slept": event.get("ms", 0)}
    if action == "crash":
        os._exit(3)
    if action == "context":
        return {
            "request_id": context.aws_request_id,
            "function_arn": context.invoked_function_arn,
            "deadline_ms": context.get_remaining_time_in_millis() + int(time.time() * 1000),
            "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "env_trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "function_name": context.function_name,
            "memory_mb": int(context.memory_limit_in_mb),
        }
    if action == "big":
        return "a" * int(event.get("bytes", 0))
    raise ValueError("unknown action %s" % action)
