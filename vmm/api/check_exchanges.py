#!/usr/bin/env python3
"""Checks recorded API exchanges against vmm/api/openapi.yaml with openapi-core.

Usage: check_exchanges.py SPEC EXCHANGES.jsonl...   (or: check_exchanges.py SPEC --self-test)

Each line of an exchanges file is one request and its response, as the vmm tests recorded
them: {"method", "path", "request_body", "status", "response_body"} (bodies as text or null).
The rules:
- the spec itself is a valid OpenAPI document;
- a path and method the spec has: the response must match the spec; a request that
  succeeded (200, 204) must match it too (a refused one may not: refusing bad input is the
  point);
- a path or method the spec does not have must have been refused: 400 with an Error body.
--self-test feeds exchanges that break each rule and fails unless every one is caught.
"""

import json
import sys

import jsonschema
import yaml
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec

HOST = "http://localhost"


def load(spec_path):
    with open(spec_path) as f:
        document = yaml.safe_load(f)
    validate_spec(document)
    return OpenAPI.from_dict(document), document


def request_of(exchange):
    body = exchange.get("request_body")
    return MockRequest(
        HOST,
        exchange["method"].lower(),
        exchange["path"],
        data=body.encode() if body is not None else None,
        content_type="application/json" if body is not None else None,
    )


def problems_of(api, document, exchange):
    """The rules `exchange` breaks (empty when it keeps them all)."""
    request = request_of(exchange)
    status = exchange["status"]
    body = exchange.get("response_body")
    response = MockResponse(
        (body or "").encode(),
        status_code=status,
        content_type="application/json" if body else None,
    )
    known = True
    try:
        api.validate_request(request)
        request_problem = None
    except (PathNotFound, OperationNotFound):
        known = False
        request_problem = None
    except Exception as e:  # any validation error of a known operation
        request_problem = f"request does not match the spec: {e!r} {e.__cause__}"
    if not known:
        if status != 400:
            return [f"unknown path or method answered {status}, not 400"]
        try:
            jsonschema.validate(json.loads(body or "null"), document["components"]["schemas"]["Error"])
        except Exception as e:
            return [f"unknown path or method: the 400 body is not an Error: {e!r}"]
        return []
    problems = []
    try:
        api.validate_response(request, response)
    except Exception as e:
        problems.append(f"response does not match the spec: {e!r} {e.__cause__}")
    if status in (200, 204) and request_problem:
        problems.append(f"succeeded, but {request_problem}")
    return problems


def check(api, document, exchanges):
    failures = []
    for exchange in exchanges:
        for problem in problems_of(api, document, exchange):
            failures.append(f"{exchange['method']} {exchange['path']} -> {exchange['status']}: {problem}\n    {json.dumps(exchange)}")
    return failures


SELF_TEST = [
    # A success whose request the spec forbids (a wrong type).
    {"method": "PUT", "path": "/machine-config", "request_body": '{"vcpu_count": "one", "mem_size_mib": 128}', "status": 204, "response_body": None},
    # A response body the spec does not allow (a field GET / does not have).
    {"method": "GET", "path": "/", "request_body": None, "status": 200, "response_body": '{"id": "a", "state": "Running", "vmm_version": "1", "app_name": "x", "extra": 1}'},
    # A state outside the enum.
    {"method": "GET", "path": "/", "request_body": None, "status": 200, "response_body": '{"id": "a", "state": "Dancing", "vmm_version": "1", "app_name": "x"}'},
    # An error without Firecracker's shape.
    {"method": "PUT", "path": "/actions", "request_body": '{"action_type": "InstanceStart"}', "status": 400, "response_body": '{"error": "no"}'},
    # An unknown path that was not refused.
    {"method": "GET", "path": "/balloon", "request_body": None, "status": 200, "response_body": "{}"},
]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    api, document = load(sys.argv[1])
    if sys.argv[2] == "--self-test":
        missed = [e for e in SELF_TEST if not problems_of(api, document, e)]
        if missed:
            sys.exit("self-test: these bad exchanges passed:\n" + "\n".join(map(json.dumps, missed)))
        print(f"self-test: all {len(SELF_TEST)} bad exchanges caught")
        return
    exchanges = []
    for path in sys.argv[2:]:
        with open(path) as f:
            exchanges.extend(json.loads(line) for line in f if line.strip())
    if not exchanges:
        sys.exit("no exchanges recorded")
    failures = check(api, document, exchanges)
    operations = sorted({f"{e['method']} {e['path']}" for e in exchanges})
    print(f"{len(exchanges)} exchanges, {len(operations)} method+path pairs checked against {sys.argv[1]}")
    if failures:
        sys.exit(f"{len(failures)} exchanges break the contract:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
