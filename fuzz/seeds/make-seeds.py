#!/usr/bin/env python3
"""Writes the hand-made part of the seed corpora (fuzz/corpus/TARGET/seed-*): the host-link
frames, Runtime API and invoke requests, function.json files and vmm configurations that the
project's tests use. The cpio and snapshot seeds are real outputs, made as fuzz/README.md says.
Run from the repository root."""
import base64
import json
import os
import struct

ROOT = "fuzz/corpus"


def write(target, name, data):
    os.makedirs(f"{ROOT}/{target}", exist_ok=True)
    with open(f"{ROOT}/{target}/seed-{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def frame(message):
    body = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def b64(data):
    return base64.b64encode(data).decode()


# Host-link frames, as proto/src/host_link.rs's tests and the two ends send them.
hello_init = {"hello": {"version": 2, "agent": "init 0.1.0"}}
hello_vmm = {"hello": {"version": 2, "agent": "vmm 0.1.0"}}
invoke = {"invoke": {"request_id": "req-1", "event": b64(b'{"a":1}'), "trace_id": "Root=1-abc",
                     "client_context": '{"custom":{"k":"v"}}', "cognito_identity": '{"id":"x"}'}}
guest_frames = [
    hello_init,
    {"log": {"line": "START RequestId: fuzz-request Version: $LATEST"}},
    {"response": {"request_id": "stale", "body": b64(b"old")}},
    {"error": {"request_id": "fuzz-request", "body": b64(b'{"errorType":"E"}'), "reset": "timeout"}},
    {"error": {"request_id": "fuzz-request", "body": b64(b"{}"),
               "reset": {"runtime_exit": {"reason": "exit status 3"}}}},
    {"response": {"request_id": "fuzz-request", "body": b64(bytes([0, 1, 2, 255]))}},
    {"init_done": {"init_duration_ms": 12}},
]
host_frames = [
    hello_vmm,
    invoke,
    {"restore": {"entropy": b64(bytes(range(64))), "wall_clock_ms": 1700000000000}},
    "shutdown",
]
for i, message in enumerate(guest_frames + host_frames):
    write("host_link_frame", f"frame-{i}", frame(message))
write("host_link_frame", "stream", b"".join(frame(m) for m in guest_frames + host_frames))
write("host_link_host", "invoke-success",
      frame(hello_init) + frame(guest_frames[1]) + frame(guest_frames[5]) + frame(guest_frames[6]))
write("host_link_host", "invoke-errors", b"".join(frame(m) for m in guest_frames))
write("host_link_host", "old-version", frame({"hello": {"version": 1, "agent": "old init"}}))
write("host_link_guest", "conversation", b"".join(frame(m) for m in host_frames))
write("host_link_guest", "restore", frame(hello_vmm) + frame(host_frames[2]) + frame(invoke))

# Runtime API requests, as bootstrap's client, awslambdaric and the conformance tests send them.
API = "/2018-06-01/runtime"


def request(method, path, body=b"", headers=()):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


next_ = request("GET", f"{API}/invocation/next")
write("runtime_api", "next-response", next_ + request(
    "POST", f"{API}/invocation/REQID/response", b'{"ok":true}', [("Content-Type", "application/json")]))
write("runtime_api", "next-error", next_ + request(
    "POST", f"{API}/invocation/REQID/error",
    b'{"errorMessage":"boom","errorType":"Boom","stackTrace":["a"]}',
    [("Lambda-Runtime-Function-Error-Type", "Unhandled")]))
write("runtime_api", "init-error", request(
    "POST", f"{API}/init/error", b'{"errorMessage":"bad","errorType":"Init"}',
    [("Lambda-Runtime-Function-Error-Type", "Runtime.Init")]))
write("runtime_api", "restore", request("GET", f"{API}/restore/next") + request(
    "POST", f"{API}/restore/error", b"", [("Lambda-Runtime-Function-Error-Type", "Restore")]))
write("runtime_api", "unknown-id", request("POST", f"{API}/invocation/nope/response", b"{}"))
write("runtime_api", "chunked", next_ + (
    f"POST {API}/invocation/REQID/response HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\nhello\r\n0\r\n\r\n").encode())

# Invoke requests, as the emulator's clients (curl, the tests, the AWS SDK) send them.
INVOKE = "/2015-03-31/functions/function/invocations"
write("invoke_api", "sync", request("POST", INVOKE, b'{"hello":"world"}'))
write("invoke_api", "tail-context", request("POST", INVOKE, b"{}", [
    ("X-Amz-Log-Type", "Tail"), ("X-Amz-Client-Context", b64(b'{"custom":{"a":"b"}}'))]))
write("invoke_api", "event", request("POST", "/2015-03-31/functions/function:$LATEST/invocations",
                                     b"{}", [("X-Amz-Invocation-Type", "Event")]))
write("invoke_api", "dry-run", request("POST", INVOKE, b"", [("X-Amz-Invocation-Type", "DryRun")]))
write("invoke_api", "arn", request(
    "POST", "/2015-03-31/functions/arn:aws:lambda:us-east-1:012345678912:function:function/invocations",
    b"[1,2]"))
write("invoke_api", "too-large", b"POST " + INVOKE.encode() +
      b" HTTP/1.1\r\nContent-Length: 7000000\r\n\r\n{}")
write("invoke_api", "wrong-method", request("GET", INVOKE))

# function.json, as the examples and scripts/lib/common.sh write it.
for name in ["shell-worker", "rust-handler", "python-worker"]:
    with open(f"bootstrap/examples/{name}/function.json", "rb") as f:
        write("function_json", name, f.read())
write("function_json", "rust-echo-snap-start", json.dumps({
    "function_name": "rust-echo-snap-start", "handler": "echo", "runtime": "/var/task/bootstrap-echo",
    "memory_mb": 128, "timeout_secs": 10, "initialization_type": "snap-start"}, indent=2))
write("function_json", "everything", json.dumps({
    "function_name": "f", "handler": "h", "runtime": "/var/runtime/bootstrap", "memory_mb": 256,
    "timeout_secs": 30, "tmp_size_mb": 64, "initialization_type": "provisioned-concurrency",
    "environment": {"A": "1", "B": "two"}, "reserved_concurrency": 4,
    "provisioned_concurrency": 1, "maximum_retry_attempts": 0, "maximum_event_age_secs": 60}))

# vmm configurations: a config file, a NUL, then NUL-separated flags (fuzz_targets/vmm_config.rs).
config = {
    "boot-source": {"kernel_image_path": "/etc/hostname", "initrd_path": "/etc/hostname",
                    "boot_args": "console=ttyS0 reboot=k panic=1"},
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False,
                       "track_dirty_pages": False, "cpu_template": "Pvm"},
    "drives": [{"drive_id": "rootfs", "path_on_host": "/etc/hostname", "is_root_device": True,
                "is_read_only": True}],
    "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
    "entropy": {},
    "serial": {"serial_out_path": "/tmp/console"},
}
write("vmm_config", "file", json.dumps(config, indent=1))
write("vmm_config", "flags", "\0".join([
    "", "--kernel", "/etc/hostname", "--vcpus", "2", "--mem-mib", "128", "--drive",
    "path=/etc/hostname,id=root,root,ro", "--vsock-uds", "/tmp/v.sock", "--vsock-cid", "5",
    "--entropy", "--cpu-template", "none"]))
write("vmm_config", "file-and-flags", json.dumps(config) + "\0--vcpus\0" + "4\0--drive\0path=/etc/passwd")
write("vmm_config", "unsupported", '{"boot-source":{"kernel_image_path":"k"},"balloon":{}}')

# vmm API requests: raw bytes of one connection, requests back to back (fuzz_targets/vmm_api.rs).
def api_request(method, path, body=None, extra=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n".encode() + extra
    if body is None:
        return head + b"\r\n"
    data = json.dumps(body).encode()
    return head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


write("vmm_api", "boot", b"".join([
    api_request("GET", "/"),
    api_request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}),
    api_request("PATCH", "/machine-config", {"mem_size_mib": 256}),
    api_request("PUT", "/boot-source", {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"}),
    api_request("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "r.ext4",
                                          "is_root_device": True, "is_read_only": True}),
    api_request("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0",
                                                    "guest_mac": "06:00:ac:10:00:02"}),
    api_request("PUT", "/vsock", {"guest_cid": 3, "uds_path": "v.sock"}),
    api_request("PUT", "/entropy", {}),
    api_request("PUT", "/logger", {"level": "Info", "log_path": "log", "show_level": True}),
    api_request("PUT", "/metrics", {"metrics_path": "metrics"}),
    api_request("PUT", "/actions", {"action_type": "InstanceStart"}),
]))
write("vmm_api", "snapshot", b"".join([
    api_request("PATCH", "/vm", {"state": "Paused"}),
    api_request("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": "s", "mem_file_path": "m"}),
    api_request("GET", "/ext/status"),
    api_request("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"},
                                          "resume_vm": True, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}],
                                          "vsock_override": {"uds_path": "v2.sock"}}),
    api_request("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"}),
]))
write("vmm_api", "continue", api_request("PUT", "/actions", {"action_type": "FlushMetrics"}, b"Expect: 100-continue\r\n"))
write("vmm_api", "bad", b"GET /vm/config HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}PUT /drives/a-b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")


# Event store segments (front-door/src/event_store/record.rs): a header, then records, each
# MARKER | len | body CRC | head CRC | state (8 bytes) | body.
def event_record(request_id, event, accepted_ms=1_700_000_000_000, done=False, trace=None):
    import zlib
    body = struct.pack("<Q", accepted_ms)
    rid = request_id.encode()
    body += struct.pack("<H", len(rid)) + rid
    for field in (trace, None, None):
        if field is None:
            body += struct.pack("<I", 0xFFFFFFFF)
        else:
            body += struct.pack("<I", len(field)) + field.encode()
    body += event
    lengths = struct.pack("<II", len(body), zlib.crc32(body))
    head = bytes([0xFE, 0xFF, 0xEE, 0x01]) + lengths + struct.pack("<I", zlib.crc32(lengths))
    state = bytes([0x3C] * 8) if done else bytes([0xA5] * 8)
    return head + state + body


segment_header = b"lambda-events\n" + struct.pack("<H", 1)
write("event_store", "empty", segment_header)
write("event_store", "three", segment_header
      + event_record("8f0c0c6e-1b1a-4f51-9d7c-1a2b3c4d5e6f", b'{"n":1}', trace="Root=1-abc")
      + event_record("0b5e6f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b", b'{"n":2}', done=True)
      + event_record("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", b'"\xff\xfe not utf-8"'))
write("event_store", "cut", (segment_header
      + event_record("8f0c0c6e-1b1a-4f51-9d7c-1a2b3c4d5e6f", b'{"n":1}')
      + event_record("0b5e6f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b", b'{"n":2}'))[:-5])
