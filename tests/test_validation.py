"""Bad replies are dropped with their reason, never averaged in; the round goes on if it can."""

import json

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from strategy_helpers import FakeGrid, adapter, meta, reply, sent_arrays, start, train_like

from fedtune.arrays import to_record
from strategies.base import TooFewRepliesError
from strategies.fedavg import LoraFedAvg
from strategies.ffa import FfaLora
from strategies.round_log import RoundLog


def bad_replies(messages):
    """Node 1 is fine; 2 has a NaN, 3 a wrong shape, 4 an extra key, 5 a huge update."""
    out = {n: train_like(sent_arrays(m), n) for n, m in messages.items()}
    out[2]["enc.0.query.lora_B.weight"][0, 0] = np.nan
    out[3]["enc.1.value.lora_A.weight"] = np.zeros((3, 6), dtype=np.float32)
    out[4]["enc.9.key.lora_A.weight"] = np.zeros((4, 6), dtype=np.float32)
    out[5]["classifier.weight"] = out[5]["classifier.weight"] + 1e4
    return out


REASONS = {2: "non-finite values", 3: "wrong shape", 4: "unexpected keys", 5: "update L2 norm"}


def test_each_bad_reply_is_rejected_with_its_reason_and_never_averaged_in():
    strategy = LoraFedAvg(min_replies=1, max_update_norm=100.0)
    messages = start(strategy, adapter(4), FakeGrid([1, 2, 3, 4, 5]))
    out = bad_replies(messages)
    arrays, _ = strategy.aggregate_train(1, [reply(n, out[n], 10) for n in sorted(out)])
    log = strategy.rounds[1]
    assert [r["node"] for r in log.rejected] == [2, 3, 4, 5]
    for entry in log.rejected:
        assert REASONS[entry["node"]] in entry["reason"], entry
    assert log.clients == 1
    # Each rejection is also a failure of its round, marked as an invalid reply.
    assert [(f["node"], f["kind"]) for f in log.failures] == [(n, "invalid") for n in (2, 3, 4, 5)]
    for key, value in arrays.items():  # the mean of the one valid reply is that reply
        np.testing.assert_allclose(value.numpy(), out[1][key], atol=1e-7)
    assert len(log.rejected_replies) == 4  # their privacy spend is still on record


def test_too_few_valid_replies_still_stops_the_run_and_names_the_rejections():
    strategy = LoraFedAvg(min_replies=2, max_update_norm=100.0)
    messages = start(strategy, adapter(4), FakeGrid([1, 2, 3, 4, 5]))
    out = bad_replies(messages)
    with pytest.raises(TooFewRepliesError, match=r"1 valid replies.*node 2: non-finite"):
        strategy.aggregate_train(1, [reply(n, out[n], 10) for n in sorted(out)])


def test_norm_bound_is_off_at_zero_and_measures_the_update_not_the_weights():
    glob = {k: v + 50.0 for k, v in adapter(4).items()}  # large weights, small update
    strategy = LoraFedAvg(min_replies=1, max_update_norm=1.0)
    messages = start(strategy, glob, FakeGrid([1, 2]))
    small = {k: v + 0.001 for k, v in sent_arrays(messages[1]).items()}
    big = {k: v + 1.0 for k, v in sent_arrays(messages[2]).items()}
    strategy.aggregate_train(1, [reply(1, small, 1), reply(2, big, 1)])
    assert [r["node"] for r in strategy.rounds[1].rejected] == [2]
    off = LoraFedAvg(min_replies=2)
    messages = start(off, glob, FakeGrid([1, 2]))
    big = {k: v + 1e3 for k, v in sent_arrays(messages[2]).items()}
    off.aggregate_train(1, [reply(1, sent_arrays(messages[1]), 1), reply(2, big, 1)])
    assert off.rounds[1].rejected == []


def test_ffa_rejects_a_reply_that_sends_a():
    strategy = FfaLora(min_replies=1)
    glob = adapter(4)
    messages = start(strategy, glob, FakeGrid([1, 2]))
    with_a = {**sent_arrays(messages[2]), "enc.0.query.lora_A.weight": glob[
        "enc.0.query.lora_A.weight"]}
    strategy.aggregate_train(1, [reply(1, sent_arrays(messages[1]), 1), reply(2, with_a, 1)])
    assert strategy.rounds[1].rejected == [
        {"node": 2, "reason": "unexpected keys ['enc.0.query.lora_A.weight']"}]


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"num-examples": 0, "train-loss": 0.1, "epsilon": 1.0}, "'num-examples' must be a positive"),
    ({"num-examples": 5, "train-loss": float("nan"), "epsilon": 1.0}, "'train-loss'"),
    ({"num-examples": 5, "train-loss": 0.1}, "'epsilon' missing"),
])
def test_bad_metrics_are_rejected(metrics, reason):
    strategy = LoraFedAvg(min_replies=1)
    messages = start(strategy, adapter(4), FakeGrid([1, 2]))
    bad = Message(content=RecordDict({"arrays": to_record(sent_arrays(messages[2])),
                                      "metrics": MetricRecord(metrics)}), metadata=meta(2))
    strategy.aggregate_train(1, [reply(1, sent_arrays(messages[1]), 1), bad])
    assert reason in strategy.rounds[1].rejected[0]["reason"]


def test_rejections_reach_metrics_jsonl(tiny_model, toy_data, tmp_path):
    from fedtune.arrays import to_record
    from fedtune.config import from_run_config
    from fedtune.data.batching import TokenizedDataset
    from fedtune.model.adapter import adapter_state
    from fedtune.model.build import build_model, load_tokenizer
    from fedtune.outputs.run_folder import RunFolder
    from fedtune.tasks.registry import task_for
    from server.round_end import CentralEvaluation, RoundEnd

    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "output-dir": str(tmp_path / "run")})
    run = RunFolder.create(cfg)
    model = build_model(cfg, 2)
    tok = load_tokenizer(cfg)
    eval_set = TokenizedDataset.from_texts(tok, ["good film", "bad film"], [1, 0], 16)
    good = {"node": 1, "num-examples": 5, "train-loss": 0.5, "epsilon": 2.0}
    rounds = {1: RoundLog(sampled=2, replies=[good],
                          rejected=[{"node": 2, "reason": "non-finite values (NaN/inf) in 'x'"}],
                          rejected_replies=[{"node": 2, "epsilon": 3.0}])}
    strategy = LoraFedAvg(min_replies=1)
    strategy.rounds.update(rounds)
    arrays = to_record(adapter_state(model))
    evaluation = CentralEvaluation(cfg, task_for(cfg), model, eval_set, tok.pad_token_id, 2)
    RoundEnd(cfg, run, evaluation, strategy, [], 3)(1, arrays)
    # A resumed run counts its rounds from the checkpoint (failed.json names the right one) and
    # says so in its first line.
    resumed = RoundEnd(cfg, run, evaluation, strategy, [], 3,
                       resumed={"from_round": 4, "damaged_checkpoints": []})
    assert resumed.completed == 4
    line = json.loads(run.metrics_path.read_text().splitlines()[-1])
    assert line["rejected"] == [{"node": 2, "reason": "non-finite values (NaN/inf) in 'x'"}]
    assert line["clients"] == 1 and line["epsilon_max"] == 3.0


def test_an_error_the_superlink_raised_names_the_node_that_was_lost():
    """A crashed node's reply is an error the SuperLink makes (src = the SuperLink's id 1),
    pointing at the message it answers: the failure must name the node, not the SuperLink."""
    from flwr.app import Error, Metadata

    strategy = LoraFedAvg(min_replies=2)
    messages = start(strategy, adapter(4), FakeGrid([7, 8, 9]))
    for node, msg in messages.items():  # what the grid does when it sends them
        msg.metadata.__dict__["_message_id"] = f"sent-to-{node}"
    lost = Message(error=Error(code=3, reason="Error: Node Unavailable"), metadata=Metadata(
        run_id=1, message_id="", src_node_id=1, dst_node_id=1,
        reply_to_message_id="sent-to-9", group_id="1", created_at=0.0, ttl=60.0,
        message_type="train"))
    replies = [reply(n, train_like(sent_arrays(messages[n]), n), 10) for n in (7, 8)]
    strategy.aggregate_train(1, [*replies, lost])
    assert strategy.rounds[1].failures == [  # one entry: not also a "timeout" for node 9
        {"node": 9, "kind": "error", "reason": "Error: Node Unavailable"}]
    assert strategy.rounds[1].clients == 2
