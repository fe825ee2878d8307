"""Start and stop Flower's processes by PID: free ports, waiting for a port, ending a process group.

``flwr run .`` leaves its SuperLink running and a simulation's Ray workers live outside the
SuperLink's process group; everything fedtune starts is ended by PID, so a test or a second
project never talks to a stale SuperLink.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0,
                  name: str = "flower-superlink") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not open 127.0.0.1:{port} within {timeout_s}s")


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def stop_run_processes(port: int, grace_s: float = 10.0) -> None:
    """End the simulation process that served our SuperLink, with its Ray processes.

    SuperExec starts ``flwr-simulation`` in a session of its own, so it survives the SuperLink's
    process group when a run is interrupted; it is found by the SuperLink address it was given.
    """
    import psutil

    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "flwr-simulation" in cmdline and f"127.0.0.1:{port}" in cmdline:
            try:
                victims += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
    for proc in victims:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the group (SuperLink, SuperExec), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
