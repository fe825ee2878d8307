"""The checkpoint format, in one place: a PEFT adapter, the server's state, and a manifest of
SHA-256 sums that proves the folder is whole.

An atomic folder swap protects against a crash *during* the write, but not against what happens
afterwards (a full disk truncating a copy, a bad sector, a hand edit). Each checkpoint therefore
lists the checksum of every file in ``manifest.json``, written last; a checkpoint whose manifest is
missing or disagrees with its files is damaged, and resuming falls back to the one before it.

Beside the adapter a checkpoint holds the server's state (``server-state.json``: the round, the
round logs, Python's ``random`` state; ``server-arrays.safetensors``: the global adapter and the
strategy's own tensors), which a resumed run needs to continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedtune.atomic import follow_umask, replace_dir, write_json

MANIFEST = "manifest.json"
STATE_JSON = "server-state.json"
STATE_ARRAYS = "server-arrays.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(target: Path, fill: Callable[[Path], None], meta: dict) -> None:
    """``fill`` writes the files into a temp folder; add the manifest, then swap it in whole."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    follow_umask(tmp)  # safetensors writes 0o600 whatever the umask
    files = {p.relative_to(tmp).as_posix(): sha256_file(p)
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    write_json(tmp / MANIFEST, {**meta, "files": files})
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp, target)


def damage(folder: Path) -> str | None:
    """Why ``folder`` is not an intact checkpoint, or None when every checksum matches."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the checkpoint was never completed)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{manifest} is unreadable: {exc}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != expected:
            return f"{path} does not match its checksum in {MANIFEST}"
    return None


def write_server_state(folder: Path, server_round: int, arrays: dict[str, np.ndarray],
                       strategy_state: dict[str, np.ndarray], rounds: dict[str, dict],
                       random_state: tuple) -> None:
    tensors = {f"global/{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
    tensors.update({f"state/{k}": np.ascontiguousarray(v) for k, v in strategy_state.items()})
    save_file(tensors, str(folder / STATE_ARRAYS))
    (folder / STATE_JSON).write_text(json.dumps({
        "round": server_round, "random_state": _jsonable(random_state), "rounds": rounds,
    }, allow_nan=True))


def read_server_state(folder: Path) -> dict:
    """``round``, ``arrays`` (the global adapter), ``strategy_state``, ``rounds`` (the round logs
    as dicts, keyed by round) and ``random_state`` of an intact checkpoint."""
    data = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_ARRAYS))
    return {
        "round": int(data["round"]),
        "arrays": {k.removeprefix("global/"): v for k, v in tensors.items()
                   if k.startswith("global/")},
        "strategy_state": {k.removeprefix("state/"): v for k, v in tensors.items()
                           if k.startswith("state/")},
        "rounds": {int(r): x for r, x in data["rounds"].items()},
        "random_state": _tupled(data["random_state"]),
    }


def missing_server_state(folder: Path) -> str | None:
    for name in (STATE_JSON, STATE_ARRAYS):
        if not (folder / name).is_file():
            return f"{folder / name} is missing (a checkpoint from before resume support?)"
    return None


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
