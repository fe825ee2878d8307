"""``logit-adjustment``: the client's label counts are drawn once per run under Gaussian noise,
planned, decided and charged with its first round, kept on the client, never sent; the loss adds
tau x log(prior) to the logits in training only."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message
from strategy_helpers import FakeGrid, meta
from test_client_modes import context, run_config

from client import client_app
from client.trainer import _loss_fn
from fedtune.arrays import to_record
from fedtune.config import ConfigError, from_run_config
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.budget import ClientBudget
from fedtune.privacy.label_counts import (
    check_count_release,
    count_release,
    label_counts,
    logit_offset,
)
from fedtune.protocol import ARRAYS, LABEL_COUNTS, PRIVACY, REFUSAL, PrivacyState
from fedtune.tasks.registry import task_for
from strategies.registry import build_strategy

NOISE = 3.0


def _rounds(overrides, rounds=2, ctx=None):
    """Node 1's replies to ``rounds`` rounds, the server sending the same adapter each time."""
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    arrays = to_record(adapter_state(task_for(cfg).seeded_model(cfg, len(labels))))
    strategy = build_strategy(cfg, num_clients=3)
    ctx = ctx or context(overrides, 0)
    replies, kept = [], []
    for rnd in range(1, rounds + 1):
        msgs = strategy.configure_train(rnd, arrays, ConfigRecord({"labels": labels}),
                                        FakeGrid([1, 2, 3]))
        msg = next(m for m in msgs if int(m.metadata.dst_node_id) == 1)
        replies.append(Message(content=client_app.train(msg, ctx).content, metadata=meta(1)))
        counts = ctx.state.get(LABEL_COUNTS)
        kept.append(None if counts is None else list(counts["counts"]))
    return replies, kept, ctx


def _overrides(base_config, **extra):
    return run_config(base_config, **{"logit-adjustment": 1.0, "label-count-noise": NOISE,
                                      "num-server-rounds": 2, **extra})


def test_counts_are_drawn_once_accounted_once_and_never_sent(base_config):
    replies, kept, ctx = _rounds(_overrides(base_config))
    assert kept[0] is not None and kept[0] == kept[1], "drawn in round 1, reused in round 2"
    assert any(c != round(c) for c in kept[0]), "under DP the counts carry Gaussian noise"
    state = PrivacyState.from_record(ctx.state[PRIVACY])
    assert [h for h in state.history if h[1] == 1.0] == [(NOISE, 1.0, 1)], "charged once"
    for reply in replies:
        assert LABEL_COUNTS not in reply.content
        text = json.dumps({k: str(v) for k, v in reply.content.items() if k != ARRAYS})
        assert "label-counts" not in text
    # the reported epsilon is the composition, counts included
    reported = float(replies[-1].content["metrics"]["epsilon"])
    steps_only = [h for h in state.history if h[1] != 1.0]
    assert reported == pytest.approx(epsilon(state.history, 1e-3, "rdp"))
    assert reported > epsilon(steps_only, 1e-3, "rdp")
    assert reported <= 8.0 + 1e-9


def test_the_ledger_charges_the_counts_before_training(base_config, tmp_path):
    overrides = _overrides(base_config, **{"ledger-dir": str(tmp_path / "ledger")})
    _rounds(overrides, rounds=1)
    (ledger,) = (tmp_path / "ledger").glob("*.json")
    charges = json.loads(ledger.read_text())["charges"]
    counts = [c for c in charges if c["id"].endswith("/release-0")]
    assert len(counts) == 1 and counts[0]["noise_multiplier"] == NOISE
    assert counts[0]["sample_rate"] == 1.0 and counts[0]["steps"] == 1
    assert charges.index(counts[0]) < len(charges) - 1, "charged with, before, the round's steps"


def test_a_restarted_node_takes_its_counts_from_its_ledger_and_pays_once(base_config,
                                                                         tmp_path):
    """The counts are paid for once per run: a restarted host (its state lost) or a resumed run
    of the same run key reads them from its ledger instead of drawing and paying again."""
    overrides = _overrides(base_config, **{"ledger-dir": str(tmp_path / "ledger")})
    _, first, _ = _rounds(overrides, rounds=1)
    _, again, _ = _rounds(overrides, rounds=1)  # a fresh context: the node restarted
    assert first == again
    (ledger,) = (tmp_path / "ledger").glob("*.json")
    charges = json.loads(ledger.read_text())["charges"]
    assert sum("/release-" in c["id"] for c in charges) == 1


def test_calibration_composes_the_counts_within_the_budget(base_config):
    cfg = from_run_config(_overrides(base_config))
    plain = ClientBudget(cfg, PrivacyState(), 200)
    plain.start("run")
    with_counts = ClientBudget(cfg, PrivacyState(), 200, releases=count_release(cfg))
    with_counts.start("run")
    assert with_counts.state.noise_multiplier > plain.state.noise_multiplier
    steps = with_counts.decide("run/round-1").steps
    planned = [*count_release(cfg), (with_counts.state.noise_multiplier, with_counts.q,
                                     steps * cfg.num_server_rounds)]
    assert epsilon(planned, cfg.delta, cfg.accountant) <= cfg.target_epsilon + 0.01


def test_a_server_cannot_make_the_counts_free(base_config):
    """Noise this small spends the whole budget on the counts alone: the client refuses to
    train (nothing drawn, nothing sent) instead of reporting less than it would spend."""
    replies, kept, _ = _rounds(_overrides(base_config, **{"label-count-noise": 0.05}), rounds=1)
    assert REFUSAL in replies[0].content and ARRAYS not in replies[0].content
    assert kept == [None]


def test_no_counts_are_drawn_or_charged_without_sample_level_dp(base_config):
    assert count_release(from_run_config(_overrides(base_config, dp="off"))) == []
    assert count_release(from_run_config(_overrides(base_config, dp="client"))) == []
    assert count_release(from_run_config(_overrides(base_config, **{"logit-adjustment": 0.0}))) \
        == []
    cfg = from_run_config(_overrides(base_config, dp="off"))
    assert label_counts([0, 1, 1, 2], 4, cfg, seed=1).tolist() == [1.0, 2.0, 1.0, 0.0]


def test_counts_noise_is_secret_unless_reproducible(base_config):
    labels = [0] * 30 + [1] * 5
    secret = from_run_config(_overrides(base_config))
    assert not torch.equal(label_counts(labels, 2, secret, 7), label_counts(labels, 2, secret, 7))
    fixed = from_run_config(_overrides(base_config, **{"reproducible-noise": True}))
    assert torch.equal(label_counts(labels, 2, fixed, 7), label_counts(labels, 2, fixed, 7))


def test_the_offset_enters_the_training_loss_only(base_config):
    cfg = from_run_config(_overrides(base_config))
    task = task_for(cfg)
    model = task.seeded_model(cfg, 2)
    batch = {"input_ids": torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.tensor([0, 1])}
    offset = logit_offset(torch.tensor([90.0, -4.0], dtype=torch.float64), 1.0)
    assert offset[1] == pytest.approx(torch.log(torch.tensor(1 / 91.0)), rel=1e-5), "floored"
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits.float()
        adjusted = _loss_fn(task, cfg, None, offset)(model, batch)
        plain = _loss_fn(task, cfg, None, None)(model, batch)
    expected = torch.nn.functional.cross_entropy(logits + offset, batch["labels"])
    assert adjusted == pytest.approx(float(expected), rel=1e-5)
    assert plain == pytest.approx(float(torch.nn.functional.cross_entropy(logits,
                                                                          batch["labels"])))
    assert abs(float(adjusted) - float(plain)) > 1e-3


def test_automatic_count_noise_keeps_the_counts_share_of_any_budget(base_config):
    """label-count-noise = 0 (auto): 3 at epsilon 8, larger for smaller budgets, so the default
    run also fits epsilon 1; a noise that alone spends the budget is named before round 1."""
    auto = {k: v for k, v in _overrides(base_config).items() if k != "label-count-noise"}
    for target in (8.0, 1.0, 0.5):
        cfg = from_run_config({**auto, "target-epsilon": target})
        ((sigma, q, steps),) = count_release(cfg)
        assert sigma == pytest.approx(3.0 * max(1.0, 8.0 / target)) and (q, steps) == (1.0, 1)
        assert epsilon(count_release(cfg), cfg.delta, cfg.accountant) < 0.6 * target
        check_count_release(cfg)
    tiny = from_run_config({**auto, "target-epsilon": 1.0, "label-count-noise": 1.0})
    with pytest.raises(ConfigError, match="'label-count-noise' = 1.*logit-adjustment = 0"):
        check_count_release(tiny)


def test_without_dp_sgd_the_loss_is_not_adjusted(base_config):
    """Without DP the model learns the label frequencies itself; the adjustment would only skew
    it (TREC-6 without DP at tau 2: macro-F1 0.928 -> 0.804), so no offset and no counts."""
    for dp in ("off", "client"):
        overrides = _overrides(base_config, dp=dp)
        cfg = from_run_config(overrides)
        ctx = context(overrides, 0)
        assert client_app._logit_offset(cfg, ctx, None, "run", None, 2, 1, None) is None
        assert LABEL_COUNTS not in ctx.state


def test_kept_counts_of_another_label_set_are_drawn_again_and_charged(base_config):
    overrides = _overrides(base_config)
    ctx = context(overrides, 0)
    ctx.state[LABEL_COUNTS] = ConfigRecord({"counts": [5.0, 5.0, 5.0]})  # 3 labels, toy has 2
    _, kept, ctx = _rounds(overrides, rounds=1, ctx=ctx)
    assert len(kept[0]) == 2
    state = PrivacyState.from_record(ctx.state[PRIVACY])
    assert [h for h in state.history if h[1] == 1.0] == [(NOISE, 1.0, 1)]
