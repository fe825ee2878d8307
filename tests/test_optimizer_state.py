"""``optimizer-state = keep``: a client's AdamW moments continue across rounds, stay on the client
(``context.state``) and never enter a reply."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message
from strategy_helpers import FakeGrid, meta
from test_client_modes import context, run_config

from client import client_app
from fedtune.arrays import to_record, to_tensors
from fedtune.config import from_run_config
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.protocol import ARRAYS, OPTIMIZER_STATE
from fedtune.tasks.registry import task_for
from strategies.registry import build_strategy


def _two_rounds(overrides):
    """Rounds 1 and 2 of node 1, the server sending the same global adapter both times."""
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    arrays = to_record(adapter_state(model))
    strategy = build_strategy(cfg, num_clients=3)
    ctx = context(overrides, 0)
    replies, kept = [], []
    for rnd in (1, 2):
        msgs = strategy.configure_train(rnd, arrays, ConfigRecord({"labels": labels}),
                                        FakeGrid([1, 2, 3]))
        msg = next(m for m in msgs if int(m.metadata.dst_node_id) == 1)
        reply = client_app.train(msg, ctx)
        replies.append(Message(content=reply.content, metadata=meta(1)))
        state = ctx.state.get(OPTIMIZER_STATE)
        kept.append(None if state is None else to_tensors(state))
    return replies, kept, set(adapter_state(model))


def _steps(state: dict) -> set[float]:
    return {float(v.reshape(-1)[0]) for k, v in state.items() if k.endswith("/step")}


def test_moments_survive_between_rounds_and_never_leave_the_client(base_config):
    overrides = run_config(base_config, **{"optimizer-state": "keep", "num-server-rounds": 2})
    replies, kept, adapter_keys = _two_rounds(overrides)
    first, second = kept
    assert first and second
    (steps_1,) = _steps(first)
    assert _steps(second) == {2 * steps_1}, "round 2 must continue round 1's Adam, not restart"
    moment_keys = {k for k in first if not k.endswith("/step")}
    for reply in replies:
        assert OPTIMIZER_STATE not in reply.content
        sent = set(to_tensors(reply.content[ARRAYS]))
        assert sent <= adapter_keys and not sent & moment_keys
        for record in reply.content.values():  # no moment tensor hides in any record
            if hasattr(record, "keys"):
                assert not any("exp_avg" in str(k) for k in record.keys())


def test_reset_starts_adam_afresh_every_round(base_config):
    overrides = run_config(base_config, **{"optimizer-state": "reset", "num-server-rounds": 2,
                                           "reproducible-noise": True})
    replies_reset, kept, _ = _two_rounds(overrides)
    assert kept == [None, None]
    replies_keep, _, _ = _two_rounds({**overrides, "optimizer-state": "keep"})
    # round 1 is the same either way; round 2 differs only by the kept moments
    a1, b1 = (to_tensors(r[0].content[ARRAYS]) for r in (replies_reset, replies_keep))
    assert all((a1[k] == b1[k]).all() for k in a1)
    a2, b2 = (to_tensors(r[1].content[ARRAYS]) for r in (replies_reset, replies_keep))
    assert any(not (a2[k] == b2[k]).all() for k in a2)
