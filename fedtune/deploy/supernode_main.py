"""``flower-supernode`` with a shorter idle poll: ``python -m fedtune.deploy.supernode_main ...``
takes the same arguments.

An idle Flower 1.42 SuperNode asks the SuperLink for a message, and when there is none sleeps
a fixed 3 s (``time.sleep(3)`` in ``flwr.supernode.start_client_internal``, not configurable),
so each message waited 1.5 s on average before its node even saw it; it then waits for the
ClientApp's reply in steps of 0.5 s. This entry point runs Flower's own SuperNode with the idle
sleep cut to ``FEDTUNE_SUPERNODE_POLL_S`` (default 0.5 s) and the reply waits to 0.05 s;
everything else is Flower's. It also declares a 10 s heartbeat (``FEDTUNE_SUPERNODE_HEARTBEAT_S``;
Flower's fixed 30 s is also the SuperLink's only clue that a host died, and with its patience of
two missed beats a crashed host held its round for up to a minute; 10 s is the SuperLink's
minimum). And it retries an object that has not arrived yet sooner (``object_pulls.py``). A
work-around, not a fork: when Flower makes the intervals settings, use them and drop this
module.
"""

from __future__ import annotations

import os
import sys
import time

IDLE_SLEEP_S = 3  # Flower 1.42's fixed idle wait
POLL_ENV = "FEDTUNE_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.5
REPLY_WAIT_S = 0.05  # Flower's 0.5 s waits for a reply (or its content) to be ready
HEARTBEAT_ENV = "FEDTUNE_SUPERNODE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10  # the SuperLink refuses intervals below 10 s (HEARTBEAT_MIN_INTERVAL)


class _ShortIdle:
    """The ``time`` module as ``start_client_internal`` sees it, but its waits are short."""

    def __init__(self, poll_s: float):
        self.poll_s = poll_s

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.poll_s if seconds == IDLE_SLEEP_S else min(seconds, REPLY_WAIT_S))


def shorten_heartbeat(interval_s: float) -> None:
    """The interval the SuperNode declares and the one its heartbeat thread keeps: both read
    Flower's module-level constant, imported by name into each module."""
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = interval_s
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = interval_s


def main() -> None:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    from fedtune.deploy.object_pulls import shorten_object_pulls

    start_client_internal.time = _ShortIdle(float(os.environ.get(POLL_ENV, DEFAULT_POLL_S)))
    shorten_heartbeat(float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)))
    shorten_object_pulls()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
