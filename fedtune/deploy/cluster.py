"""A whole deployment on one machine, through the same ``python -m fedtune.deploy`` commands a
person types on each host: the demo and the integration tests use it.

Every "host" gets its own folder (``hosts/node-K/``: data, privacy ledger, ``FLWR_HOME``), the
SuperLink its own (``server/``), and every process its own session and log file. Processes are
stopped by PID, with the ClientApp processes each SuperNode started; nothing is found by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fedtune.deploy.cli import CONNECTION
from fedtune.deploy.commands import flower_env
from fedtune.launch.flwr_cli import write_connection
from fedtune.launch.processes import free_port, stop_process_group, wait_for_port
from fedtune.project import PROJECT_ROOT


class LocalCluster:
    def __init__(self, root: Path, insecure: bool = False, isolation: str = "warm"):
        self.root = Path(root).resolve()
        self.insecure, self.isolation = insecure, isolation
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = self.root / "server" / "certs"
        self.cli_home = self.root / "cli" / "flwr-home"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def host(self, k: int) -> Path:
        return self.root / "hosts" / f"node-{k}"

    def key(self, k: int) -> Path:
        return self.certs / "nodes" / f"node-{k}.key"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # --- the steps, each a `python -m fedtune.deploy` command ------------------------------

    def _deploy(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fedtune.deploy", *args]

    def _link_args(self) -> list[str]:
        return ["--superlink", self.address,
                *(["--insecure"] if self.insecure else ["--ca", str(self.certs / "ca.crt")])]

    def _run(self, name: str, argv: list[str], timeout_s: float) -> int:
        with open(self.log(name), "ab") as log:
            return subprocess.run(argv, cwd=str(PROJECT_ROOT), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout_s,
                                  check=False).returncode

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.log(name), "ab") as log:
            proc = subprocess.Popen(argv, cwd=str(PROJECT_ROOT), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def make_certs(self, num_nodes: int) -> None:
        code = self._run("certs", self._deploy("certs", "--out", str(self.certs), "--san",
                                               "127.0.0.1", "--san", "localhost",
                                               "--nodes", str(num_nodes)), 60)
        if code != 0:
            raise RuntimeError(f"deploy certs failed: {self.log('certs').read_text()[-2000:]}")

    def start_superlink(self) -> None:
        argv = self._deploy("superlink", "--certs", str(self.certs), "--state",
                            str(self.root / "server" / "state"), "--host", "127.0.0.1",
                            "--port", str(self.port), *(["--insecure"] if self.insecure else []))
        wait_for_port(self.port, self._start("superlink", argv), timeout_s=120)

    def register(self, nodes: list[int]) -> None:
        pubs = [str(self.certs / "nodes" / f"node-{k}.pub") for k in nodes]
        code = self._run("register", self._deploy("register", *self._link_args(), "--home",
                                                  str(self.cli_home), *pubs), 120)
        if code != 0:
            raise RuntimeError(f"deploy register failed: {self.log('register').read_text()}")

    def start_supernode(self, k: int, data_path: Path, key: Path | None = None,
                        node_config: str = "") -> subprocess.Popen:
        host = self.host(k)
        argv = self._deploy("supernode", *self._link_args(), "--key", str(key or self.key(k)),
                            "--data-path", str(data_path), "--ledger-dir", str(host / "ledger"),
                            "--home", str(host / "flwr-home"), "--port", str(free_port()),
                            "--node-config", node_config, "--isolation", self.isolation)
        return self._start(f"node-{k}", argv)

    def nodes(self) -> list[dict]:
        """The SuperLink's view of its registered nodes (``flwr supernode ls``)."""
        write_connection(self.cli_home, CONNECTION, self.port,
                         root_certificates=None if self.insecure else self.certs / "ca.crt")
        out = subprocess.run(["flwr", "supernode", "ls", CONNECTION, "--format", "json"],
                             env=flower_env(self.cli_home), capture_output=True, text=True,
                             timeout=60, check=False)
        try:
            return list(json.loads(out.stdout)["nodes"])
        except (ValueError, KeyError):
            return []

    def wait_online(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(n.get("status") == "online" for n in self.nodes()) >= count:
                return
            for name, proc in self.procs.items():
                if name.startswith("node-") and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}: "
                                       f"{self.log(name).read_text()[-2000:]}")
            time.sleep(1.0)
        raise RuntimeError(f"fewer than {count} SuperNodes online after {timeout_s:.0f}s")

    def submit(self, run_config: str, timeout_s: float = 600.0) -> int:
        argv = self._deploy("submit", *self._link_args(), "--home", str(self.cli_home),
                            "--app", str(PROJECT_ROOT), "--run-config", run_config)
        return self._run("submit", argv, timeout_s)

    # --- stopping, by PID --------------------------------------------------------------------

    def stop(self, name: str, kill: bool = False) -> None:
        """Stop one process with everything it started; ``kill`` = SIGKILL at once (a crash)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if kill:
            for p in [psutil.Process(proc.pid), *family]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
        else:
            stop_process_group(proc)
        for p in family:  # ClientApps and SuperExec may live in sessions of their own
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
