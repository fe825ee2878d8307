"""Run the app as a Flower simulation on a private SuperLink, and leave nothing running afterwards.

``flwr run .`` on its own starts a local SuperLink on fixed ports and leaves it running with the
environment it was first started with; a second project or a test then talks to the wrong one.
This starts a private SuperLink (simulation mode, free ports, in-memory state, runtime dependency
installation off), submits the run with ``flwr run --stream`` through a connection in a private
``FLWR_HOME``, and stops the SuperLink's whole process group by PID when the run ends.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedtune.launch.console_view import ConsoleView
from fedtune.launch.flwr_cli import run_config_arg, runs_completed, write_connection
from fedtune.launch.processes import (
    free_port,
    raise_interrupt,
    stop_process_group,
    stop_run_processes,
    wait_for_port,
)
from fedtune.project import PROJECT_ROOT


def run_simulation(
    run_config: Mapping[str, Any],
    num_clients: int,
    *,
    workdir: str | Path | None = None,
    project: str | Path = PROJECT_ROOT,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    timeout_s: float = 3600.0,
    log_path: str | Path | None = None,
    console: ConsoleView | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run the app to completion; return ``flwr run``'s exit code.

    Output goes to ``log_path``; with a ``console``, ``flwr run``'s output is also shown through
    it as it arrives (the log keeps every line). ``extra_env`` reaches every process started,
    the ServerApp and (through Ray) the ClientApps included.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedtune-sim-"))
    flwr_home = workdir / "flwr-home"
    port = free_port()  # Flower 1.42 serves the Control, Fleet and Runtime APIs on one port
    write_connection(flwr_home, "fedtune", port)
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0", **(extra_env or {})}
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115
    # SIGTERM (a CI timeout, `kill`) must still run the cleanup below, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    superlink = subprocess.Popen(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"],
        env=env, cwd=str(project), stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL, start_new_session=True,
    )
    ended = False  # once a run has ended, its flwr-simulation idles through SIGTERM for 10 s
    try:
        wait_for_port(port, superlink)
        federation = f"num-supernodes={num_clients} client-resources-num-cpus={cpus_per_client}"
        if gpus_per_client > 0:  # Ray hides the GPUs from a ClientApp that asks for none
            federation += f" client-resources-num-gpus={gpus_per_client}"
        cmd = ["flwr", "run", str(project), "fedtune", "--stream",
               "--federation-config", federation]
        if run_config:
            cmd += ["--run-config", run_config_arg(run_config)]
        if console is None:
            code = subprocess.run(cmd, env=env, cwd=str(project), stdout=log, stderr=log,
                                  timeout=timeout_s, check=False).returncode
        else:
            code = _stream(cmd, env, project, log, console, timeout_s)
        ended = True
        if code != 0:
            return code
        shown = console is not None and not console.verbose and console.errors_shown > 0
        return 0 if runs_completed(env, project, quiet=shown) else 1
    finally:
        # ``flwr run --stream`` returns once the run has ended (completed or failed): its outputs
        # are on disk and nothing is left to end gracefully. An interrupted run's Ray workers
        # get the full grace period.
        stop_run_processes(port, grace_s=1.0 if ended else 10.0)
        stop_process_group(superlink)
        signal.signal(signal.SIGTERM, previous)
        if log:
            log.close()


def _stream(cmd: list[str], env: dict, project: str | Path, log, console: ConsoleView,
            timeout_s: float) -> int:
    """Run ``cmd``, copying its output to ``log`` and showing it through ``console``."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(project), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    ticked = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout_s)
            if now - ticked >= 1.0:
                console.tick()
                ticked = now
            try:
                raw = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if raw is None:
                break
            if log is not None:
                log.write(raw)
                log.flush()
            console.raw(raw.decode("utf-8", errors="replace"))
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        console.close()
