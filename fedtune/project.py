"""Where the Flower app lives, and the run-config defaults its ``pyproject.toml`` declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_defaults(project: Path = PROJECT_ROOT) -> dict[str, Any]:
    import tomllib

    with open(project / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
