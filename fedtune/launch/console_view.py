"""What the launcher prints while ``flwr run --stream`` runs: one line per round, real warnings
and errors, and a progress bar while a round runs (redrawn in place on a terminal; an occasional
plain line otherwise). ``verbose`` passes every line through unchanged.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from typing import TextIO

from fedtune.console import ConsoleFilter, Progress

BAR_WIDTH = 20
_ROUND_OF = re.compile(r"^round\s+(\d+)/(\d+)")


class ConsoleView:
    def __init__(self, out: TextIO | None = None, *, verbose: bool = False,
                 tty: bool | None = None, plain_every_s: float = 60.0) -> None:
        self.out = out or sys.stdout
        self.verbose = verbose
        self.tty = self.out.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self.filter = ConsoleFilter()
        self.rounds_shown = 0
        self.errors_shown = 0
        self._progress: Progress | None = None
        self._started = self._phase_started = self._last_plain = time.monotonic()
        self._bar_drawn = False
        self._stopping = False
        self._finished = False
        self._last_round = False

    # -- input -------------------------------------------------------------------------------
    def raw(self, line: str) -> None:
        """One line of ``flwr run`` output (decoded, with or without its newline)."""
        if self.verbose:
            self.out.write(line if line.endswith("\n") else line + "\n")
            self.out.flush()
            return
        for event in self.filter.feed(line):
            self._event(event)

    def tick(self) -> None:
        """Called about once a second: keeps the bar's clock moving on a terminal."""
        if not self.verbose:
            self._draw()

    def close(self) -> None:
        """The stream ended: show what the filter still held; the launcher's next line (the
        summary, after the processes are stopped) replaces the bar."""
        if not self.verbose:
            for event in self.filter.close():
                self._event(event)
            self._stopping = True
            self._draw()

    def finish(self) -> None:
        """Take the bar away for good: what follows is plain output."""
        self._clear()
        self._finished = True

    def say(self, text: str) -> None:
        """A line of the launcher's own, printed above the bar."""
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()
        self._draw()

    # -- output ------------------------------------------------------------------------------
    def _event(self, event) -> None:
        if event.kind == "progress":
            p = event.progress
            if self._progress is None or (p.server_round, p.phase) != (
                    self._progress.server_round, self._progress.phase):
                self._phase_started = time.monotonic()
            self._progress = p
            if self.tty:
                self._draw()
            elif time.monotonic() - self._last_plain >= self.plain_every_s:
                self.say(self._bar_text())
            return
        if event.kind == "round":
            self.rounds_shown += 1
            self._progress = None
            self._phase_started = time.monotonic()
            m = _ROUND_OF.match(event.text)
            self._last_round = bool(m and m.group(1) == m.group(2))
        elif event.kind == "error":
            self.errors_shown += 1
        self.say(event.text)

    def _bar_text(self) -> str:
        now = time.monotonic()
        p = self._progress
        if self._stopping:
            return "stopping the SuperLink and Ray ..."
        if p is None:
            what = ("starting the SuperLink, Ray and the clients" if self.rounds_shown == 0 else
                    "saving the final adapter" if self._last_round else "between rounds")
            return f"{what} ... {now - self._phase_started:.0f} s"
        filled = round(BAR_WIDTH * p.done / p.total) if p.total else BAR_WIDTH
        return (f"round {p.server_round}/{p.num_rounds} {p.phase} "
                f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {p.done}/{p.total} clients  "
                f"{now - self._phase_started:.0f} s")

    def _draw(self) -> None:
        if not self.tty or self._finished:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        self.out.write("\r" + self._bar_text()[:width] + "\x1b[K")
        self.out.flush()
        self._bar_drawn = True

    def _clear(self) -> None:
        self._last_plain = time.monotonic()
        if self._bar_drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._bar_drawn = False
