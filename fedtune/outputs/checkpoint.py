"""Checkpoint folders that prove they are whole: a manifest of SHA-256 sums, checked on resume.

An atomic folder swap protects against a crash *during* the write, but not against what happens
afterwards (a full disk truncating a copy, a bad sector, a hand edit). Each checkpoint therefore
lists the checksum of every file in ``manifest.json``, written last; a checkpoint whose manifest is
missing or disagrees with its files is damaged, and resuming falls back to the one before it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from fedtune.atomic import follow_umask, replace_dir, write_json

MANIFEST = "manifest.json"


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


def read_meta(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())
