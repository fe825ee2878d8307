"""The layering contract in pyproject.toml (import-linter): imports only go down.

App folders (simulations > server > client | strategies) sit on the fedtune library, and inside
fedtune the entry points sit on the sub-packages, which sit on the ground floor. The second test
plants an import that runs back up in a copy of the tree, so the check is shown to bite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedtune", "server", "client", "strategies", "simulations")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # import-linter finds the packages on sys.path: put the tree under test first.
    code = ("import sys; sys.path.insert(0, '.'); "
            "from importlinter.cli import lint_imports_command; lint_imports_command()")
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_imports_only_go_down():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_import_that_runs_back_up_is_caught(tmp_path):
    for name in (*PACKAGES, "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    config = tmp_path / "fedtune" / "config.py"
    config.write_text(config.read_text() + "\nfrom fedtune.privacy import budget  # noqa\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "fedtune.config -> fedtune.privacy.budget" in out.stdout
