"""Checks on a data file's raw bytes, so a bad row is named by file and line, not by a traceback.

``datasets`` reports a non-UTF-8 byte or a broken JSON line from deep inside its Arrow builder,
without the line number; reading the file once first costs well under a second for SST-2 and
turns either into an error that says where the problem is and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedtune.config import ConfigError

TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


def check_data_file(path: Path) -> None:
    """Raise :class:`ConfigError` for an empty file, undecodable bytes or a bad JSON line."""
    if path.stat().st_size == 0:
        raise ConfigError(f"data file {path} is empty; add rows or point 'dataset' elsewhere")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"data file {path}, line {line}: byte 0x{raw[exc.start]:02x} at offset {exc.start} is "
            "not valid UTF-8; re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or "
            "remove the line") from None
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"data file {path}, line {number}: not valid JSON ({exc}); "
                                  "fix or remove the line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"data file {path}, line {number}: expected a JSON object "
                                  f"with named fields, got {type(row).__name__}; fix the line")
