"""Send a round's messages and collect the replies, saying how many came back as they arrive.

``Grid.send_and_receive`` returns only when every reply is in (or the timeout passed). The
launcher shows a progress bar while a round runs; under ``FEDTUNE_PROGRESS`` (which the launcher
sets for the processes it starts) this does the same push-and-pull loop and logs one marker line
whenever the count of replies changes. Without it, it is ``Grid.send_and_receive``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from fedtune.console import PROGRESS_ENV, progress_line

PULL_INTERVAL_S = 1.0


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float | None,
                     server_round: int, num_rounds: int, phase: str) -> list[Message]:
    if not os.environ.get(PROGRESS_ENV):
        return list(grid.send_and_receive(messages=messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    total = len(pending)
    if total == 0:
        return []
    log(INFO, progress_line(server_round, num_rounds, phase, 0, total))
    end = time.time() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while timeout is None or time.time() < end:
        got = list(grid.pull_messages(pending))
        if got:
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            log(INFO, progress_line(server_round, num_rounds, phase, total - len(pending), total))
        if not pending:
            break
        time.sleep(PULL_INTERVAL_S)
    return replies
