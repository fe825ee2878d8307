"""A client that raises, never replies or sends garbage is a recorded failure of its round; the
round completes while enough valid replies remain."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from strategy_helpers import FakeGrid, adapter, failed, reply, sent_arrays, start, train_like

from client.faults import InjectedFault, fault_mod, planned_fault
from fedtune.arrays import to_record
from fedtune.config import ConfigError, from_run_config
from strategies.base import TooFewRepliesError
from strategies.fedavg import LoraFedAvg


def _round(min_replies):
    strategy = LoraFedAvg(min_replies=min_replies)
    messages = start(strategy, adapter(4), FakeGrid([1, 2, 3, 4, 5]))
    garbage = {k: np.full_like(v, np.nan) for k, v in sent_arrays(messages[4]).items()}
    replies = [reply(1, train_like(sent_arrays(messages[1]), 1), 10), failed(2, "boom"),
               reply(4, garbage, 10), reply(5, train_like(sent_arrays(messages[5]), 5), 10)]
    return strategy, replies  # node 3 never replies


def test_each_kind_of_failure_is_recorded_and_the_round_completes():
    strategy, replies = _round(min_replies=2)
    arrays, _ = strategy.aggregate_train(1, replies)
    log = strategy.rounds[1]
    assert arrays is not None and log.clients == 2 and log.released
    assert [(f["node"], f["kind"]) for f in log.failures] == [
        (2, "error"), (3, "timeout"), (4, "invalid")]
    assert log.failures[0]["reason"] == "boom"
    assert "round-timeout" in log.failures[1]["reason"]
    assert "non-finite" in log.failures[2]["reason"]


def test_below_the_minimum_the_error_names_every_failure():
    strategy, replies = _round(min_replies=3)
    with pytest.raises(TooFewRepliesError, match=r"2 valid replies of 5 sampled, below "
                                                 r"min-clients = 3.*node 2: boom.*node 3: no "
                                                 r"reply.*node 4: non-finite"):
        strategy.aggregate_train(1, replies)


def _train_message(server_round: int) -> Message:
    content = RecordDict({"arrays": to_record(adapter(2)),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(spec: str) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3},
                   state=RecordDict(), run_config={"fault-injection": spec})


def _echo(msg: Message, ctxt: Context) -> Message:
    return Message(content=RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)


def test_injected_faults_hit_only_their_partition_and_round():
    assert planned_fault("0:1:raise, 1:2:garbage", 1, 2) == "garbage"
    assert planned_fault("0:1:raise, 1:2:garbage", 1, 1) is None
    with pytest.raises(InjectedFault, match="client 1 raised in round 2"):
        fault_mod(_train_message(2), _context("1:2:raise"), _echo)
    bad = fault_mod(_train_message(2), _context("1:2:garbage"), _echo)
    assert all(np.isnan(v.numpy()).all() for v in bad.content["arrays"].values())
    fine = fault_mod(_train_message(3), _context("1:2:garbage"), _echo)
    assert not any(np.isnan(v.numpy()).any() for v in fine.content["arrays"].values())


def test_a_malformed_fault_spec_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'fault-injection' = '1:2:explode'"):
        from_run_config({"fault-injection": "1:2:explode"})

