"""Run fedtune as a Flower simulation with one command, and leave nothing running afterwards.

``flwr run .`` on its own starts a local SuperLink on fixed ports and leaves it running with the
environment it was first started with; a second project or a test then talks to the wrong one.
This launcher starts a private SuperLink (simulation mode, free ports, in-memory state, runtime
dependency installation off), submits the run with ``flwr run --stream`` through a connection in a
private ``FLWR_HOME``, and stops the SuperLink's whole process group by PID when the run ends.

    python -m simulations.launch --num-clients 10 --run-config "dataset='../shared/data/sst2'"
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config import ConfigError, from_run_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    """One run-config value as ``flwr run --run-config`` parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


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


def _raise_interrupt(signum, frame):
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


def write_connection(flwr_home: Path, name: str, port: int, *, host: str = "127.0.0.1",
                     root_certificates: Path | None = None) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection: TLS verified against
    ``root_certificates`` when given, plain HTTP otherwise (a local simulation)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = (f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n"
                if root_certificates else "insecure = true\n")
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n'
                    f'[superlink.{name}]\naddress = "{host}:{port}"\n{security}')
    return path


def runs_completed(env: dict, project: Path, connection: str = "fedtune") -> bool:
    """``flwr run --stream`` exits 0 even when the ServerApp raised: ask the SuperLink instead."""
    out = subprocess.run(["flwr", "ls", connection, "--format", "json"], env=env, cwd=str(project),
                         capture_output=True, text=True, check=False)
    try:
        runs = json.loads(out.stdout)["runs"]
    except (ValueError, KeyError):
        print(out.stdout, out.stderr, file=sys.stderr)
        return False
    for r in runs:
        if r.get("status") != "finished:completed":
            print(f"run {r.get('run-id')}: {r.get('status')}: {r.get('status-details')}",
                  file=sys.stderr)
    return bool(runs) and all(r.get("status") == "finished:completed" for r in runs)


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
) -> int:
    """Run the app to completion; return ``flwr run``'s exit code. Output goes to ``log_path``."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedtune-sim-"))
    flwr_home = workdir / "flwr-home"
    port = free_port()  # Flower 1.42 serves the Control, Fleet and Runtime APIs on one port
    write_connection(flwr_home, "fedtune", port)
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115
    # SIGTERM (a CI timeout, `kill`) must still run the cleanup below, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    superlink = subprocess.Popen(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"],
        env=env, cwd=str(project), stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, superlink)
        federation = f"num-supernodes={num_clients} client-resources-num-cpus={cpus_per_client}"
        if gpus_per_client > 0:  # Ray hides the GPUs from a ClientApp that asks for none
            federation += f" client-resources-num-gpus={gpus_per_client}"
        cmd = ["flwr", "run", str(project), "fedtune", "--stream",
               "--federation-config", federation]
        if run_config:
            cmd += ["--run-config", run_config_arg(run_config)]
        done = subprocess.run(cmd, env=env, cwd=str(project), stdout=log, stderr=log,
                              timeout=timeout_s, check=False)
        if done.returncode != 0:
            return done.returncode
        return 0 if runs_completed(env, project) else 1
    finally:
        stop_run_processes(port)
        stop_process_group(superlink)
        signal.signal(signal.SIGTERM, previous)
        if log:
            log.close()


def project_defaults(project: Path) -> dict[str, Any]:
    import tomllib

    with open(project / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def parse_run_config(text: str) -> dict[str, Any]:
    """``key=value key2='text'`` as ``flwr run --run-config`` takes it, parsed as TOML values."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text])) if text else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--run-config", default="", help="overrides, as for flwr run")
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="GPU share per simulated client (e.g. 0.5: two clients per GPU)")
    args = parser.parse_args(argv)
    overrides = parse_run_config(args.run_config)
    try:  # fail in a second, not after the SuperLink and Ray have started
        from_run_config(project_defaults(PROJECT_ROOT) | overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = run_simulation(overrides, args.num_clients, cpus_per_client=args.cpus_per_client,
                          gpus_per_client=args.gpus_per_client,
                          workdir=tempfile.mkdtemp(prefix="fedtune-sim-"))
    if code != 0:
        print(f"flwr run exited with code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
