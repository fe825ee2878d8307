"""A quiet, informative console: library noise off, one line per round, a summary at the end.

Three parts, all light (stdlib only, plus the libraries being quietened, imported on demand):

- :func:`quiet_libraries`, which the ServerApp and the ClientApp call at the start of every
  handler: Hugging Face progress bars and info logs off, known-harmless warnings filtered, Flower's
  log lines printed once. ``FEDTUNE_VERBOSE=1`` (the launcher's ``--verbose``) keeps everything.
- :func:`round_line` and :func:`run_summary`: what a person reads about a round and about a run.
- :class:`ConsoleFilter`: turns the raw output of ``flwr run --stream`` into round lines, progress,
  real warnings and errors (the last line of a traceback), for the launcher.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERBOSE_ENV = "FEDTUNE_VERBOSE"
PROGRESS_ENV = "FEDTUNE_PROGRESS"  # set by the launcher: the server logs each client's reply

# Known and harmless here (regex on the message, category). Opacus's RNG note (secure_mode is a
# deployment choice); torch's note on full backward hooks over frozen inputs (LoRA); the RDP
# cross-check's note on its alpha range (the PRV accountant decides); a transformers rename
# inside PEFT/Opacus; Ray's announcement of a future default (Flower sets the GPU share).
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("Secure RNG turned off", UserWarning),
    ("Full backward hook is firing", UserWarning),
    ("Optimal order is the largest alpha", UserWarning),
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
    ("Tip: In future versions of Ray", FutureWarning),
)
# Harmless from one module only: the PRV accountant's np.where evaluates log(0) on grid points it
# then discards (the same message from anywhere else stays visible).
HARMLESS_MODULE_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    ("divide by zero encountered in log", RuntimeWarning, r"opacus\.accountants\.analysis\.prv"),
)
# Logged (not warned) and harmless: dp-accounting skips RDP orders it cannot evaluate.
HARMLESS_LOG_MESSAGES = ("_compute_log_a_frac failed to converge",)
# Flower's own warnings that say nothing about this run (the launcher's console drops them).
FLOWER_NOISE = (
    "Since flwr 1.32, default simulated SuperNodes changed",
    "Manually terminating ClientAppActor",
    "fraction_evaluate is set to 0.0",
)


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in str(record.msg) for m in HARMLESS_LOG_MESSAGES)


_DROP_HARMLESS = _DropHarmless()
_QUIET_LOGGERS = ("absl", "")  # dp-accounting logs through absl; anything else through root
_bars_disabled_here = False


def quiet_libraries(verbose: bool | None = None) -> bool:
    """Quieten the libraries of this process; returns whether verbose mode is on.

    Cheap and idempotent: the apps call it at the start of every handler (each ClientApp call
    may run in a fresh process). Real warnings and errors stay visible. Whatever the mode,
    Flower's log records are printed once: Opacus calls ``logging.basicConfig`` on import, which
    gives the root logger a second handler for every record of Flower's (propagating) logger.
    """
    global _bars_disabled_here
    if verbose is None:
        verbose = verbose_from_env()
    logging.getLogger("flwr").propagate = False
    hf = _hf_modules()
    quiet_warnings(verbose)
    if verbose:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).removeFilter(_DROP_HARMLESS)
        if _bars_disabled_here:
            for enable in hf["enable"]:
                enable()
            for set_level in hf["set_level"]:
                set_level(logging.WARNING)
            _bars_disabled_here = False
        return True
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_HARMLESS not in logger.filters:
            logger.addFilter(_DROP_HARMLESS)
    if not _bars_disabled_here:
        for disable in hf["disable"]:
            disable()
        for set_level in hf["set_level"]:
            set_level(logging.ERROR)  # "newly initialised weights" and the like
        _bars_disabled_here = True
    return False


def quiet_warnings(verbose: bool) -> None:
    """Only the warnings part of :func:`quiet_libraries`: no library import, so the launcher's
    checks stay fast."""
    harmless = [(message, category, None) for message, category in HARMLESS_WARNINGS]
    for message, category, module in [*harmless, *HARMLESS_MODULE_WARNINGS]:
        if verbose:
            _remove_filter(message, category, module)
        else:
            warnings.filterwarnings("ignore", message=re.escape(message), category=category,
                                    module=module or "")


def _remove_filter(message: str, category: type[Warning], module: str | None = None) -> None:
    pattern = re.escape(message)
    warnings.filters[:] = [f for f in warnings.filters
                           if not (f[0] == "ignore" and f[1] is not None
                                   and f[1].pattern == pattern and f[2] is category
                                   and (f[3].pattern if f[3] is not None else None) == module)]


def _hf_modules() -> dict[str, list]:
    """The switches of huggingface_hub, transformers and datasets that are installed."""
    out: dict[str, list] = {"disable": [], "enable": [], "set_level": []}
    try:
        import huggingface_hub.utils as hub

        out["disable"].append(lambda: hub.disable_progress_bars())
        out["enable"].append(lambda: hub.enable_progress_bars())
    except ImportError:
        pass
    try:
        from transformers.utils import logging as tf_logging

        out["disable"].append(tf_logging.disable_progress_bar)
        out["enable"].append(tf_logging.enable_progress_bar)
        out["set_level"].append(tf_logging.set_verbosity)
    except ImportError:
        pass
    try:
        from datasets.utils import logging as ds_logging

        out["disable"].append(ds_logging.disable_progress_bar)
        out["enable"].append(ds_logging.enable_progress_bar)
        out["set_level"].append(ds_logging.set_verbosity)
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# One line per round, a summary per run.

def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


def round_line(line: dict[str, Any], num_rounds: int) -> str:
    """One ``metrics.jsonl`` line as one short line for people, e.g.
    ``round 2/3  accuracy 0.7910  loss 0.4512  max epsilon 5.31  clients 10/10  41.2 s``."""
    r = int(line["round"])
    width = len(str(num_rounds))
    parts = [f"round {r:>{width}}/{num_rounds}"]
    for key in ("accuracy", "perplexity", "loss"):
        if line.get(key) is not None:
            parts.append(f"{key} {_num(line[key])}")
    if r == 0:
        parts.append("(before training)")
    else:
        if line.get("epsilon_max") is not None:
            parts.append(f"max epsilon {_num(line['epsilon_max'], 2)}")
        if "clients" in line:
            parts.append(f"clients {line['clients']}/{line.get('sampled', '?')}")
        for key in ("failures", "refused", "rejected"):
            if line.get(key):
                parts.append(f"{key} {len(line[key])}")
    if line.get("resumed"):
        parts.append("(resumed)")
    if line.get("wall_s") is not None:
        parts.append(f"{float(line['wall_s']):.1f} s")
    return "  ".join(parts)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_metrics(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for raw in reversed(text.splitlines()):
        try:
            return json.loads(raw)
        except ValueError:
            continue  # a torn last line
    return None


def run_summary(run_root: str | Path) -> str:
    """What a run left behind, in a few lines: how far it got, its final scores and privacy
    spend, where the adapter and the reports are, and how to continue a stopped run."""
    root = Path(run_root).resolve()
    last = _last_metrics(root / "metrics.jsonl")
    report = _read_json(root / "privacy" / "report.json")
    failed = _read_json(root / "failed.json")
    config = _read_json(root / "config.json") or {}
    rounds = config.get("num-server-rounds")
    final = root / "final"
    done = final.is_dir() and failed is None
    if last is None:
        head = "run stopped before its first evaluation" if not done else "run finished"
    else:
        scores = [f"{k} {_num(last[k])}" for k in ("accuracy", "perplexity", "loss")
                  if last.get(k) is not None]
        state = "run finished" if done else "run stopped"
        head = f"{state} after round {last['round']}{f'/{rounds}' if rounds else ''}"
        if scores:
            head += ": " + ", ".join(scores)
    lines = [head]
    if report is not None:
        if report.get("max_epsilon") is not None:
            lines.append(f"  privacy        max epsilon {_num(report['max_epsilon'], 3)} at delta "
                         f"{report.get('delta', '?'):g} (sample-level, over "
                         f"{len(report.get('clients', []))} clients)")
        client_level = report.get("client_level") or {}
        if client_level.get("epsilon") is not None:
            lines.append(f"  privacy        client-level epsilon "
                         f"{_num(client_level['epsilon'], 3)}")
    elif config.get("dp") == "off":
        lines.append("  privacy        dp = off: no privacy guarantee")
    lines.append(f"  run folder     {root}")
    if final.is_dir():
        lines.append(f"  final adapter  {final}")
    if (root / "privacy" / "report.md").is_file():
        lines.append(f"  privacy report {root / 'privacy' / 'report.md'}")
    if (root / "samples.md").is_file():
        lines.append(f"  samples        {root / 'samples.md'}")
    if failed is not None:
        lines.append(f"  error          {failed.get('error', '?')}")
        if failed.get("resume"):
            lines.append(f"  to continue    {failed['resume']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The launcher's view of `flwr run --stream`.

PROGRESS_PREFIX = "fedtune progress:"


def progress_line(server_round: int, num_rounds: int, phase: str, done: int, total: int) -> str:
    """The marker the server logs (under ``FEDTUNE_PROGRESS``) whenever replies come in."""
    return f"{PROGRESS_PREFIX} round {server_round}/{num_rounds} {phase} {done}/{total}"


@dataclass(frozen=True)
class Progress:
    server_round: int
    num_rounds: int
    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class Event:
    """One thing for the console: ``round`` (a round line), ``progress`` (with ``progress``
    set), ``warning`` or ``error`` (text to show as is)."""

    kind: str
    text: str = ""
    progress: Progress | None = None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ACTOR = re.compile(r"^\((?:\w+) pid=\d+(?:, ip=[\d.]+)?\)\s?")
_BAR = re.compile(r"\d+%\|[^|]*\|| \d+/\d+ \[\d|it/s\]|examples/s\]|\[\d\d:\d\d<")
_FLOWER = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*(?:\d{4}-\d\d-\d\d[ T][\d:.,]+)?"
                     r"\s*:\s?(.*)$")
_BASIC = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:(DEBUG|INFO|WARNING|ERROR|CRITICAL):(.*)$")
_RAY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                  r"\s+(.*)$")
_PYWARN = re.compile(r"^(\S.*?):(\d+): (\w*Warning): (.*)$")
_ROUND = re.compile(r"^round\s+\d+/\d+\b")
_PROGRESS = re.compile(re.escape(PROGRESS_PREFIX) +
                       r" round (\d+)/(\d+) (\w+) (\d+)/(\d+)")
_EXIT_CODE = re.compile(r"^Exit Code: \d+")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*"
                        r"(?:Error|Exception|Exit|Interrupt|Failure)(?::.*)?$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _harmless(text: str) -> bool:
    return (any(m in text for m, _ in HARMLESS_WARNINGS)
            or any(m in text for m in HARMLESS_LOG_MESSAGES)
            or any(m in text for m in FLOWER_NOISE))


def clean(raw: str) -> str:
    """A raw output line without colours, carriage-return redraws or a Ray actor prefix."""
    text = _ANSI.sub("", raw.rstrip("\n"))
    if "\r" in text:
        segments = [s for s in text.split("\r") if s.strip()]
        text = segments[-1] if segments else ""
    return _ACTOR.sub("", text).rstrip()


class ConsoleFilter:
    """Round lines, progress, real warnings and errors out of ``flwr run --stream`` output.

    Works on log records: a record starts with a prefixed line (Flower's ``INFO :``, a logging
    or Ray line, a Python warning) or a bare traceback, and its unprefixed lines follow it. A
    warning's lines are shown with it; an error record (with the traceback Flower logs after
    "Simulation raised an exception") is held until it ends and shown as its last exception line,
    which names the actual error. Each distinct warning or error is shown once, not once per
    client per round.
    """

    MAX_ERROR_LINES = 8

    def __init__(self) -> None:
        self._mode = "drop"  # what to do with a record's following lines: drop | show | collect
        self._kind = "warning"
        self._head: str | None = None  # the error record being collected
        self._body: list[str] = []
        self._seen: set[str] = set()

    def feed(self, raw: str) -> list[Event]:
        text = clean(raw)
        if _BAR.search(text) and not _FLOWER.match(text):
            return []  # a progress bar, whoever drew it
        out: list[Event] = []
        if self._starts_record(text):
            if self._mode == "collect":
                out += self._finish()
            out += self._begin(text)
        elif self._mode == "collect":
            self._body.append(text)
        elif self._mode == "show" and text.strip():
            out.append(Event(self._kind, f"  {text.strip()}"))
        return self._once(out)

    def close(self) -> list[Event]:
        return self._once(self._finish() if self._mode == "collect" else [])

    def _starts_record(self, text: str) -> bool:
        if text.startswith("Traceback (most recent call last):"):
            return self._mode != "collect"
        return bool(_FLOWER.match(text) or _BASIC.match(text) or _RAY.match(text)
                    or _PYWARN.match(text))

    def _begin(self, text: str) -> list[Event]:
        self._mode = "drop"
        if text.startswith("Traceback"):
            self._mode, self._head, self._body = "collect", None, [text]
            return []
        if m := _FLOWER.match(text) or _BASIC.match(text) or _RAY.match(text):
            return self._record(m.group(1), m.group(2).strip())
        m = _PYWARN.match(text)  # its following line is the source line: dropped
        if _harmless(m.group(4)):
            return []
        where = f"{Path(m.group(1)).name}:{m.group(2)}"
        return [Event("warning", f"warning: {m.group(3)}: {m.group(4)} ({where})")]

    def _record(self, level: str, msg: str) -> list[Event]:
        if m := _PROGRESS.search(msg):
            server_round, num_rounds, phase, done, total = m.groups()
            return [Event("progress", progress=Progress(int(server_round), int(num_rounds),
                                                        phase, int(done), int(total)))]
        if _ROUND.match(msg):
            return [Event("round", msg)]
        if level == "WARNING":
            if _harmless(msg):
                return []
            self._mode, self._kind = "show", "warning"
            return [Event("warning", f"warning: {msg}")]
        if level in ("ERROR", "CRITICAL"):
            if not _EXIT_CODE.match(msg):  # Flower's exit-code explanation: not news
                self._mode, self._head, self._body = "collect", msg, []
            return []
        if msg.startswith(("aggregate_train", "aggregate_evaluate")) and \
                not re.search(r"\b0 failures", msg):
            return [Event("warning", f"warning: {msg}")]
        return []

    def _finish(self) -> list[Event]:
        head, body = self._head, [x for x in self._body if x.strip()]
        self._mode, self._head, self._body = "drop", None, []
        exceptions = [x for x in body if _EXCEPTION.match(x)]
        if exceptions:  # the outermost exception of the chain is printed last
            name, _, message = exceptions[-1].partition(":")
            return [Event("error", f"error: {name.rsplit('.', 1)[-1]}:{message}".rstrip(":"))]
        lines = ([head] if head else []) + [f"  {x.strip()}" for x in body]
        if not lines:
            return []
        if len(lines) > self.MAX_ERROR_LINES:
            lines = lines[:self.MAX_ERROR_LINES] + ["  ... (the rest is in the full log)"]
        return [Event("error", "error: " + "\n".join(lines))]

    def _once(self, events: list[Event]) -> list[Event]:
        kept = []
        for e in events:
            if e.kind in ("warning", "error") and not e.text.startswith("  "):
                # Warnings differing only in numbers (retry counts, alphas) are one warning.
                key = _NUMBER.sub("#", e.text) if e.kind == "warning" else e.text
                if key in self._seen:
                    if self._mode == "show":
                        self._mode = "drop"  # nor its following lines
                    continue
                self._seen.add(key)
            kept.append(e)
        return kept
