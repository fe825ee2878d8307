"""Issue 13 item 8: what a client releases outside epsilon is only what is public by design.

Before: every training reply carried ``train-loss`` (the raw loss on private batches) under DP,
a run with ``fraction-evaluate`` > 0 had every sampled client send metrics of its private
holdout without being asked to opt in, and report.md listed neither.
"""

from __future__ import annotations

import json
import math

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from strategy_helpers import FakeGrid, adapter, meta, sent_arrays, start, train_like

from client import client_app
from client.trainer import LocalResult
from fedtune.arrays import to_record
from fedtune.config import ConfigError, from_run_config
from fedtune.outputs.privacy_report import render, write_human_report
from fedtune.privacy.budget import ClientBudget
from server.round_end import round_fields
from strategies.fedavg import LoraFedAvg
from strategies.validation import REQUIRED_METRICS

RESULT = LocalResult(train_loss=0.6931, steps=3, num_examples=40)


def _reply_metrics(dp: str) -> dict:
    cfg = from_run_config({"dp": dp, "delta": 1e-3})
    privacy = ClientBudget.open(cfg, None, 40)
    return dict(client_app._metrics(cfg, privacy, 0, 4, RESULT, 1.0))


@pytest.mark.parametrize("dp", ["sample", "both", "client"])
def test_no_train_loss_leaves_a_client_under_dp(dp):
    assert "train-loss" not in _reply_metrics(dp)  # before: 0.6931, the private batches' loss
    assert "train-loss" not in REQUIRED_METRICS


def test_without_dp_the_train_loss_is_still_sent():
    assert _reply_metrics("off")["train-loss"] == pytest.approx(0.6931)


def _reply(node: int, arrays: dict, metrics: dict) -> Message:
    return Message(content=RecordDict({"arrays": to_record(arrays),
                                       "metrics": MetricRecord(metrics)}), metadata=meta(node))


def test_replies_without_a_loss_are_averaged_and_logged_as_null():
    strategy = LoraFedAvg(min_replies=2)
    messages = start(strategy, adapter(4), FakeGrid([1, 2]))
    replies = [_reply(n, train_like(sent_arrays(messages[n]), n),
                      {"num-examples": 10, "epsilon": 1.0}) for n in (1, 2)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    log = strategy.rounds[1]
    assert arrays is not None and log.rejected == [] and log.clients == 2
    assert log.train_loss is None and "train-loss" not in metrics
    assert round_fields(log)["train_loss"] is None  # metrics.jsonl: the same key, null
    # A loss that is sent must still be a finite number.
    strategy2 = LoraFedAvg(min_replies=1)
    sent = start(strategy2, adapter(4), FakeGrid([1, 2]))
    good = _reply(2, train_like(sent_arrays(sent[2]), 2), {"num-examples": 10, "epsilon": 1.0})
    bad = _reply(1, train_like(sent_arrays(sent[1]), 1),
                 {"num-examples": 10, "epsilon": 1.0, "train-loss": math.inf})
    strategy2.aggregate_train(1, [bad, good])
    assert strategy2.rounds[1].rejected == [{"node": 1,
                                             "reason": "non-finite metric 'train-loss' (inf)"}]


def test_client_evaluation_is_opt_in():
    with pytest.raises(ConfigError, match="fraction-evaluate.*client-evaluate = true"):
        from_run_config({"fraction-evaluate": 0.5})  # before: accepted silently
    cfg = from_run_config({"fraction-evaluate": 0.5, "client-evaluate": True})
    assert cfg.client_evaluate and cfg.fraction_evaluate == 0.5
    assert not from_run_config({}).client_evaluate


def _report(dp: str = "sample") -> dict:
    client = {"partition_id": 0, "num_examples": 40, "noise_multiplier": 1.1,
              "sample_rate": 0.4, "steps": 6, "rounds_trained": 2, "epsilon": 3.0}
    return {"dp": dp, "accountant": "prv", "target_epsilon": 8.0, "delta": 1e-3,
            "max_grad_norm": 1.0, "max_epsilon": 3.0, "rounds": 2, "clients": [client]}


def test_report_lists_every_released_value(tmp_path):
    text = render(_report())
    section = text[text.index("## What each client released"):]  # before: no such section
    for key in ("adapter update", "num-examples", "dataset-size", "sample-rate",
                "noise-multiplier", "epsilon", "delta", "steps", "partition-id", "lora-r",
                "train-loss", "client evaluation"):
        assert key in section, key
    assert "`train-loss`: not sent" in section
    assert "a DP output" in section
    assert "sent, **unprotected**" in render(_report("off"))
    (tmp_path / "config.json").write_text(json.dumps({"client-evaluate": True}))
    privacy = tmp_path / "privacy"
    privacy.mkdir()
    write_human_report(privacy, _report())
    written = (privacy / "report.md").read_text()
    assert "released (`client-evaluate = true`), **without DP**" in written
