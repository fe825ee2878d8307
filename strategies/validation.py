"""Checks on every training reply before it is averaged in.

One NaN, one tensor of the wrong shape or one runaway update would poison the global adapter for
every client; a reply that fails a check is dropped with a reason instead. A reply must hold
exactly one ArrayRecord with the keys and shapes of what the server sent that node, finite floating
values, an update (reply minus what was sent) within ``max-update-norm`` in L2 over all its
tensors, and one MetricRecord with a positive example count and the metrics the round log reads.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from fedtune.protocol import EPSILON, NUM_EXAMPLES, TRAIN_LOSS, Reply

REQUIRED_METRICS = (EPSILON,)
# Sent only without DP (a loss on private batches is no DP output); when sent, a finite number.
OPTIONAL_METRICS = (TRAIN_LOSS,)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _check_metrics(metrics: Mapping, weighted_by_key: str) -> str | None:
    weight = _number(metrics.get(weighted_by_key))
    if weight is None or not math.isfinite(weight) or weight <= 0:
        return f"metric '{weighted_by_key}' must be a positive number, got " \
               f"{metrics.get(weighted_by_key)!r}"
    for key in REQUIRED_METRICS:
        value = _number(metrics.get(key))
        if value is None or math.isnan(value):
            return f"metric '{key}' missing or not a number ({metrics.get(key)!r})"
    for key in OPTIONAL_METRICS:
        if key not in metrics:
            continue
        value = _number(metrics[key])
        if value is None or math.isnan(value):
            return f"metric '{key}' not a number ({metrics[key]!r})"
        if not math.isfinite(value):
            return f"non-finite metric '{key}' ({metrics[key]})"
    return None


def _short(keys: list[str]) -> str:
    return str(keys[:3])[:-1] + (", ...]" if len(keys) > 3 else "]")


def check_reply(reply: Reply, sent: Mapping[str, np.ndarray] | None, *,
                max_update_norm: float = 0.0, weighted_by_key: str = NUM_EXAMPLES,
                layout: Mapping[str, tuple] | None = None) -> str | None:
    """The reason to reject ``reply``, or None if it may be averaged in.

    ``sent`` is what the server sent this node: the expected keys and shapes, and the reference
    of the update whose norm is bounded. Without it (a strategy used outside ``configure_train``)
    ``layout`` gives keys and shapes and the norm bound cannot be checked.
    """
    if reply.records != (1, 1):
        return (f"malformed: expected one ArrayRecord and one MetricRecord, got "
                f"{reply.records[0]} and {reply.records[1]}")
    reason = _check_metrics(reply.metrics, weighted_by_key)
    if reason:
        return reason
    if reply.error is not None or reply.arrays is None:
        return reply.error or "no arrays"
    arrays = reply.arrays
    expected = {k: tuple(v.shape) for k, v in sent.items()} if sent is not None else layout
    if expected is not None:
        missing = [k for k in expected if k not in arrays]
        extra = [k for k in arrays if k not in expected]
        if extra:
            return f"unexpected keys {_short(extra)}"
        if missing:
            return f"missing keys {_short(missing)}"
        for key, shape in expected.items():
            if tuple(arrays[key].shape) != tuple(shape):
                return (f"wrong shape for '{key}': {tuple(arrays[key].shape)}, "
                        f"expected {tuple(shape)}")
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            return f"non-float dtype {value.dtype} for '{key}'"
        if not np.all(np.isfinite(value)):
            return f"non-finite values (NaN/inf) in '{key}'"
    if max_update_norm > 0 and sent is not None:
        norm = math.sqrt(sum(
            float(np.sum((arrays[k].astype(np.float64) - np.asarray(v, np.float64)) ** 2))
            for k, v in sent.items()
        ))
        if norm > max_update_norm:
            return f"update L2 norm {norm:.4g} exceeds max-update-norm {max_update_norm:g}"
    return None


def common_layout(replies: list[Reply]) -> dict[str, tuple] | None:
    """The keys and shapes most replies agree on (first seen wins a tie); None if none is
    readable. Only for replies the strategy has no record of sending."""
    layouts = [tuple((k, tuple(v.shape)) for k, v in r.arrays.items())
               for r in replies if r.records[0] == 1 and r.arrays is not None]
    if not layouts:
        return None
    return dict(Counter(layouts).most_common(1)[0][0])
