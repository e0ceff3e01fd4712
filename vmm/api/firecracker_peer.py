#!/usr/bin/env python3
"""Drives our vmm with a published Firecracker API client, unmodified: the `Api` class of the
firecracker-python package from PyPI (vmm/api/requirements.txt). Boots the tiny counting guest,
pauses it, snapshots it, restores the snapshot in a second vmm process, and checks a refusal
comes back as the client's APIError with Firecracker's fault message.

Usage: firecracker_peer.py VMM KERNEL WORK_DIR   (run by vmm/tests/api_peers.rs)
"""

import os
import subprocess
import sys
import time

from firecracker.api import Api
from firecracker.exceptions import APIError

WAIT_S = 30


def wait_until(what, condition):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_vmm(vmm, work, name):
    socket = os.path.join(work, f"{name}.sock")
    console = os.path.join(work, f"{name}.console")
    process = subprocess.Popen(
        [vmm, "--api-sock", socket, "--serial-out", console],
        stdin=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"{name}.stderr"), "w"),
    )
    wait_until(f"{socket}", lambda: os.path.exists(socket))
    return process, Api(socket), console


def ticks(console):
    try:
        with open(console) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [int(line.split()[1], 16) for line in complete.splitlines() if line.startswith("tick ")]


def main():
    vmm, kernel, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    first, api, console = start_vmm(vmm, work, "peer-first")
    second = None
    try:
        assert api.describe.get().json()["state"] == "Not started"
        api.machine_config.put(vcpu_count=1, mem_size_mib=32)
        api.boot.put(kernel_image_path=kernel)
        api.actions.put(action_type="InstanceStart")
        assert api.describe.get().json()["state"] == "Running"
        assert api.machine_config.get().json()["mem_size_mib"] == 32
        wait_until("a tick", lambda: ticks(console))
        try:
            api.boot.put(kernel_image_path=kernel)
            sys.exit("a boot source after boot was accepted")
        except APIError as e:
            assert "not supported after starting" in str(e), e
        api.vm.patch(state="Paused")
        assert api.describe.get().json()["state"] == "Paused"
        state = os.path.join(work, "peer.state")
        memory = os.path.join(work, "peer.mem")
        api.create_snapshot.put(snapshot_type="Full", snapshot_path=state, mem_file_path=memory)
        last = ticks(console)[-1]
        first.kill()
        first.wait()

        second, api2, console2 = start_vmm(vmm, work, "peer-second")
        api2.load_snapshot.put(
            snapshot_path=state,
            mem_backend={"backend_type": "File", "backend_path": memory},
            resume_vm=True,
        )
        assert api2.describe.get().json()["state"] == "Running"
        wait_until("a tick after the restore", lambda: ticks(console2))
        first_restored = ticks(console2)[0]
        assert first_restored in (last + 1, last + 2), (last, first_restored)
        print(f"firecracker-python drove the vmm: boot, pause, snapshot, restore (tick {last} -> {first_restored})")
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
