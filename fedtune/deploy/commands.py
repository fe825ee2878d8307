"""The Flower command lines of a real deployment, built in one place from a few choices.

Secure by default: the SuperLink serves TLS with the certificate from ``fedtune.deploy.certs``
and admits only SuperNodes whose public key was registered (``--enable-supernode-auth``), and
keeps that registry and its runs in a state database. ``insecure=True`` (plain HTTP) exists for
debugging and always prints a warning. Runtime dependency installation (``uv sync`` on every
host) is off: each host installs fedtune itself, once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INSECURE_WARNING = ("WARNING: --insecure: traffic between SuperLink, SuperNodes and the flwr CLI "
                    "is plain HTTP, unencrypted, and any SuperNode may join (Flower authenticates "
                    "nodes only over TLS). Use it only to debug on a trusted network.")


def warn_insecure(insecure: bool) -> None:
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every Flower process of ours runs with."""
    env = dict(os.environ if base is None else base)
    env.update({"FLWR_HOME": str(Path(flwr_home).resolve()),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE"),
                "FLWR_TELEMETRY_ENABLED": env.get("FLWR_TELEMETRY_ENABLED", "0"),
                "TOKENIZERS_PARALLELISM": "false"})
    return env


def config_arg(values: Mapping[str, Any]) -> str:
    """``key=value ...`` as Flower parses ``--node-config`` (TOML values; strings JSON-quoted so
    that any path survives)."""
    def one(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))
    return " ".join(f"{k}={one(v)}" for k, v in values.items())


def superlink_argv(certs: Path, state_dir: Path, host: str, port: int,
                   insecure: bool = False) -> list[str]:
    """A SuperLink with TLS, node authentication and its state in ``state_dir/superlink.db``
    (Flower refuses node authentication without TLS, so ``insecure`` drops both)."""
    argv = ["flower-superlink", "--host", host, "--port", str(port),
            "--database", str(Path(state_dir).resolve() / "superlink.db"),
            "--disable-runtime-dependency-installation"]
    if insecure:
        return [*argv, "--insecure"]
    certs = Path(certs).resolve()
    return [*argv, "--enable-supernode-auth", "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"),
            "--ssl-ca-certfile", str(certs / "ca.crt")]


def supernode_argv(superlink: str, ca_cert: Path | None, private_key: Path | None,
                   node_config: Mapping[str, Any], runtime_port: int,
                   insecure: bool = False) -> list[str]:
    """A SuperNode that authenticates with ``private_key`` and verifies the SuperLink against
    ``ca_cert``. ``runtime_port`` is its local port for the ClientApp processes it starts (one
    per message); each SuperNode on a host needs its own."""
    # Flower's SuperNode, with its idle poll cut from 3 s (fedtune/deploy/supernode_main.py)
    argv = [sys.executable, "-m", "fedtune.deploy.supernode_main", "--superlink", superlink,
            "--node-config", config_arg(node_config),
            "--host", "127.0.0.1", "--port", str(runtime_port)]
    if insecure:
        return [*argv, "--insecure"]
    if ca_cert is None or private_key is None:
        raise ValueError("give the CA certificate (ca.crt) to verify the SuperLink and this "
                         "node's private key, or --insecure")
    return [*argv, "--root-certificates", str(Path(ca_cert).resolve()),
            "--auth-supernode-private-key", str(Path(private_key).resolve())]


def register_argv(public_key: Path, connection: str) -> list[str]:
    return ["flwr", "supernode", "register", str(Path(public_key).resolve()), connection,
            "--format", "json"]


def run_argv(app: Path, connection: str, run_config: str) -> list[str]:
    argv = ["flwr", "run", str(Path(app).resolve()), connection, "--stream"]
    return [*argv, "--run-config", run_config] if run_config else argv


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host, int(port)
