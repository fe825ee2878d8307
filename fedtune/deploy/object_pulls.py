"""Retry an object that has not arrived yet after 0.05 s, not Flower 1.42's 1 s.

Flower moves a message as a tree of objects, pulled one by one, and a receiver that asks for an
object too early waits 1 s, then 2 s, 4 s (to 10 s) before asking again. On real hosts each
message is early somewhere: a SuperNode lists its task before it has pulled the message's objects
from the SuperLink, so the ClientApp's first pull missed and it waited 1-3 s; the ServerApp
likewise asked for a reply's objects as the SuperNode was still pushing them. Measured with
``python -m fedtune.deploy.bench_message`` (one SuperNode on 127.0.0.1, the tiny BERT, warm
mode): 5.0 s per message before; 4.3 s with the ClientApp and SuperNode retrying sooner (and the
lazy epsilon of ``privacy/budget.py``); 3.7 s once the ServerApp did too.

Every process that pulls calls :func:`shorten_object_pulls` once: the SuperNode
(``supernode_main``), the warm ClientApp (``warm_clientapp``) and the ServerApp
(``server/server_app.py``). A work-around, not a fork: Flower binds its backoff as keyword
defaults, with no setting.
"""

from __future__ import annotations

import math

RETRY_S = 0.05  # Flower 1.42: 1 s, doubling
RETRY_CAP_S = 0.5  # Flower 1.42: 10 s


def shorten_object_pulls(initial_s: float = RETRY_S, cap_s: float = RETRY_CAP_S) -> None:
    """Retry after ``initial_s``, doubling to ``cap_s``, in this process. The tries per object
    grow so that the longest wait is still Flower's ``max_time`` (2 hours), not fewer tries'
    worth: a slow link gets as long as before."""
    from flwr.supercore.inflatable import inflatable_utils

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = dict(fn.__kwdefaults__)
        defaults.update(initial_backoff=initial_s, backoff_cap=cap_s,
                        max_tries_per_object=math.ceil(defaults["max_time"] / cap_s) + 1)
        fn.__kwdefaults__ = defaults
