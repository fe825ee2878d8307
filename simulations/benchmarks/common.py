"""What every benchmark shares: where results go, the machine they ran on, the RESULT line.

A benchmark's figures mean little without the machine and the exact command, so each result JSON
carries both, captured at run time. Full runs write ``docs/results/<name>.json`` (what the results
page is built from); ``--quick`` runs write ``docs/results/quick/`` so that they never overwrite a
full result.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fedtune.atomic import write_json
from fedtune.project import PROJECT_ROOT

RESULTS_DIR = PROJECT_ROOT / "docs" / "results"
QUICK_DIR = RESULTS_DIR / "quick"
SST2 = PROJECT_ROOT.parent / "shared" / "data" / "sst2"
RESULT_PREFIX = "RESULT "


def default_dataset() -> str:
    """The local SST-2 copy when there is one (offline), else the hub id."""
    for candidate in (PROJECT_ROOT / "data" / "sst2", SST2):
        if candidate.is_dir():
            return str(candidate)
    return "stanfordnlp/sst2"


def result_dir(quick: bool, out: str = "") -> Path:
    return Path(out).resolve() if out else (QUICK_DIR if quick else RESULTS_DIR)


def runs_dir(name: str) -> Path:
    """Run folders of a benchmark's federated arms (``runs/`` is gitignored)."""
    return PROJECT_ROOT / "runs" / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine and software a figure was measured on, and how busy the machine was."""
    import flwr
    import opacus
    import peft
    import psutil
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else _version("flwr"),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "opacus": opacus.__version__,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def command_line() -> str:
    """The command as typed, ``python -m simulations.bench ...``."""
    args = sys.argv[1:] if sys.argv and sys.argv[0].endswith(("bench.py", "__main__.py")) else []
    return "python -m simulations.bench " + " ".join(shlex.quote(a) for a in args)


def result_line(result: dict[str, Any]) -> str:
    """One line, ``RESULT {json}``, for machines; always the last line a benchmark prints."""
    return RESULT_PREFIX + json.dumps(result, separators=(",", ":"), allow_nan=False)


def parse_result_line(stdout: str) -> dict[str, Any]:
    """The RESULT JSON of a benchmark's stdout: its last line, which must be one."""
    last = stdout.rstrip("\n").rsplit("\n", 1)[-1]
    if not last.startswith(RESULT_PREFIX):
        raise ValueError(f"the last line is not a RESULT line: {last[:80]!r}")
    return json.loads(last[len(RESULT_PREFIX):])


def save(result: dict[str, Any], folder: Path) -> Path:
    """Write ``<folder>/<benchmark>.json`` atomically (also after each row of a long run)."""
    path = folder / f"{result['benchmark']}.json"
    write_json(path, result)
    return path


def finish(result: dict[str, Any], folder: Path, ok: bool = True) -> int:
    """Save the result, then print the RESULT line last; the exit code says whether it ran."""
    result["complete"] = True
    path = save(result, folder)
    print(f"\nresult saved to {path}", flush=True)
    print(result_line(result), flush=True)
    return 0 if ok else 1


def header(name: str, quick: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """The start of every result: what ran, with which settings, where and when."""
    return {
        "benchmark": name,
        "quick": quick,
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": settings,
        "complete": False,
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, right-aligned numbers, for the terminal."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
