"""Crash-safe writes: a reader sees the old file or the new one, never a torn one.

Write to a temporary file in the same folder, fsync it, then ``os.replace`` it over the target
(atomic on POSIX) and fsync the folder so the rename itself survives a power cut.

Files get the mode an ordinary ``open`` would give them, ``0o666`` less the process's umask, so a
teammate on the same host can read a run's report and adapter when the umask says so (``mkstemp``
alone would leave every file ``0o600``). ``private=True`` keeps a file ``0o600`` whatever the
umask, for anything secret.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc``): setting it
    to probe it would briefly give files created by other threads the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once, the shortest window there is
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    """Permission bits for a new file: what ``open`` would give it, or ``0o600`` if private."""
    return 0o600 if private else 0o666 & ~current_umask()


def follow_umask(folder: str | Path) -> None:
    """Give ``folder`` and everything in it the modes the umask asks for (folders ``0o777``,
    files ``0o666``, less the umask): libraries that write through their own temp files
    (``safetensors`` makes ``0o600`` files) would otherwise keep a teammate out."""
    mask = current_umask()
    folder = Path(folder)
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode(private))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), private=private)


def write_json(path: str | Path, obj: Any, *, private: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n",
               private=private)


def append_line(path: str | Path, line: str) -> None:
    """Append one complete line with a single write + fsync (a reader never sees half a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_dir(tmp_dir: str | Path, target: str | Path) -> None:
    """Move a fully written folder into place; an older ``target`` is swapped out, then removed.

    ``tmp_dir`` keeps its mode: make it with ``Path.mkdir`` (which honours the umask), not
    ``tempfile.mkdtemp`` (always ``0o700``)."""
    tmp_dir, target = Path(tmp_dir), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp_dir, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
