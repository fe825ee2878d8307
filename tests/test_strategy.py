import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from strategies.fedavg import LoraFedAvg, TooFewRepliesError


def _meta(node: int) -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="ins", group_id="1", created_at=0.0, ttl=60.0,
                    message_type="train")


def reply(node: int, value: float, n: int) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord(numpy_ndarrays=[np.full((2, 3), value, dtype=np.float32)]),
        "metrics": MetricRecord({"num-examples": n, "train-loss": value, "epsilon": 1.0}),
    })
    return Message(content=content, metadata=_meta(node))


def failed(node: int) -> Message:
    return Message(error=Error(code=0, reason="client raised ValueError"), metadata=_meta(node))


def test_weighted_mean_and_round_log():
    strategy = LoraFedAvg(min_replies=2)
    arrays, metrics = strategy.aggregate_train(1, [reply(1, 1.0, 10), reply(2, 4.0, 30)])
    mean = next(iter(arrays.values())).numpy()
    assert np.allclose(mean, 3.25)
    log = strategy.rounds[1]
    assert log.clients == 2 and log.bytes_up == 2 * 6 * 4
    assert log.train_loss == pytest.approx(3.25)


def test_fewer_valid_replies_than_minimum_stops_the_run():
    strategy = LoraFedAvg(min_replies=2)
    with pytest.raises(TooFewRepliesError, match="1 valid replies.*client raised ValueError"):
        strategy.aggregate_train(1, [reply(1, 1.0, 10), failed(2)])


def test_no_replies_at_all_stops_the_run():
    with pytest.raises(TooFewRepliesError):
        LoraFedAvg(min_replies=1).aggregate_train(1, [])
