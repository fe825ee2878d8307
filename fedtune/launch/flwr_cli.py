"""Talking to the ``flwr`` CLI: run-config arguments, a connection config, a run's final status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10: the backport Flower depends on
    import tomli as tomllib

from fedtune.config import ConfigError


def toml_value(value: Any) -> str:
    """One run-config value as ``flwr run --run-config`` parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


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


def runs_completed(env: dict, project: Path, connection: str = "fedtune",
                   quiet: bool = False) -> bool:
    """``flwr run --stream`` exits 0 even when the ServerApp raised: ask the SuperLink instead.
    A run that did not complete is reported on stderr unless ``quiet`` (its error was shown)."""
    out = subprocess.run(["flwr", "ls", connection, "--format", "json"], env=env, cwd=str(project),
                         capture_output=True, text=True, check=False)
    try:
        runs = json.loads(out.stdout)["runs"]
    except (ValueError, KeyError):
        print(out.stdout, out.stderr, file=sys.stderr)
        return False
    for r in runs:
        if r.get("status") != "finished:completed" and not quiet:
            print(f"run {r.get('run-id')}: {r.get('status')}: {r.get('status-details')}",
                  file=sys.stderr)
    return bool(runs) and all(r.get("status") == "finished:completed" for r in runs)


# flwr.common.config.parse_config_args's own pattern: one `key=value` pair, quoted or not.
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def parse_run_config(text: str) -> dict[str, Any]:
    """``key=value key2='text'`` (or a ``.toml`` file) as ``flwr run --run-config`` takes it,
    parsed as TOML values, exactly as ``flwr.common.config.parse_config_args`` does (a test
    keeps the two in step) but without importing Flower: the launcher's checks take
    milliseconds."""
    if not text:
        return {}
    try:
        if text.endswith(".toml"):
            with Path(text).expanduser().open("rb") as f:
                return _flatten(tomllib.load(f))
        return _flatten(tomllib.loads("\n".join(f"{k} = {v}" for k, v in _PAIR.findall(text))))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--run-config {text!r}: {exc}; write it as \"key=123 key2=false "
                          "key3='text'\" (bool, int, float or quoted string values)") from None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
    return out
