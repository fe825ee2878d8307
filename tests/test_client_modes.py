"""The ClientApp's handlers under each aggregation, called in-process with the server's messages."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from strategy_helpers import FakeGrid, meta

from client import client_app
from client.rank import client_rank
from client.trainer import train_local
from fedtune.arrays import from_record, to_record
from fedtune.config import ConfigError, from_run_config
from fedtune.data.batching import TokenizedDataset
from fedtune.data.loading import load_splits
from fedtune.model.adapter import AdapterMismatchError, adapter_state
from fedtune.model.build import build_model, load_tokenizer
from fedtune.model.lora_layout import is_lora_a, is_lora_b
from fedtune.privacy.calibration import sample_rate
from fedtune.protocol import PrivacyState
from fedtune.tasks.registry import task_for
from strategies.registry import build_strategy


def run_config(base_config, **extra):
    return {**base_config, "num-server-rounds": 1, "lora-r": 4, "accountant": "rdp", **extra}


def context(overrides, pid, node_config=None):
    return Context(run_id=1, node_id=pid + 1,
                   node_config={"partition-id": pid, "num-partitions": 3, **(node_config or {})},
                   state=RecordDict(), run_config=overrides)


def server_round(overrides, ranks=None):
    """The server's first-round messages, as its strategy builds them for nodes 1-3."""
    cfg = from_run_config(overrides)
    labels = list(load_splits(cfg).labels)
    model = task_for(cfg).seeded_model(cfg, len(labels))
    strategy = build_strategy(cfg, num_clients=3)
    grid = FakeGrid([1, 2, 3], ranks=ranks)
    config = ConfigRecord({"labels": labels})
    messages = strategy.configure_train(1, to_record(adapter_state(model)), config, grid)
    return strategy, model, {int(m.metadata.dst_node_id): m for m in messages}


def answer(msg: Message, ctx: Context) -> Message:
    reply = client_app.train(msg, ctx)
    return Message(content=reply.content, metadata=meta(int(msg.metadata.dst_node_id)))


def lora_bytes(msg: Message) -> int:
    arrays = from_record(msg.content["arrays"])
    return sum(v.nbytes for k, v in arrays.items() if is_lora_a(k) or is_lora_b(k))


def test_ffa_client_trains_b_only_on_the_servers_a_and_sends_half(base_config):
    overrides = run_config(base_config, aggregation="ffa")
    strategy, server_model, messages = server_round(overrides)
    replies = {n: answer(m, context(overrides, n - 1)) for n, m in messages.items()}
    sent = from_record(messages[1].content["arrays"])
    back = from_record(replies[1].content["arrays"])
    assert not any(is_lora_a(k) for k in back) and set(back) == set(sent)
    assert any(not np.array_equal(back[k], sent[k]) for k in back if is_lora_b(k))
    record, _ = strategy.aggregate_train(1, list(replies.values()))
    assert strategy.rounds[1].rejected == [] and strategy.rounds[1].clients == 3
    server_a = {k: v for k, v in adapter_state(server_model).items() if is_lora_a(k)}
    for key, value in server_a.items():  # the global A is the one every client trained on
        assert np.array_equal(record[key].numpy(), value.numpy())
    fedavg_overrides = run_config(base_config)
    _, _, fed_messages = server_round(fedavg_overrides)
    fed_reply = answer(fed_messages[1], context(fedavg_overrides, 0))
    assert lora_bytes(replies[1]) * 2 == lora_bytes(fed_reply)


def test_ffa_client_refuses_a_different_a(base_config):
    overrides = run_config(base_config, aggregation="ffa")
    _, _, messages = server_round(overrides)
    msg = messages[1]
    msg.content["config"]["lora-a-sha256"] = "0" * 64
    with pytest.raises(AdapterMismatchError, match="frozen LoRA A"):
        client_app.train(msg, context(overrides, 0))


def test_ffa_freezes_a_so_dp_noises_only_b_and_head(tiny_model):
    cfg = from_run_config({"model": str(tiny_model), "aggregation": "ffa", "seed": 3})
    one, two = build_model(cfg, 2), build_model(cfg, 2)
    a_one = {k: v for k, v in adapter_state(one).items() if is_lora_a(k)}
    assert all(torch.equal(v, adapter_state(two)[k]) for k, v in a_one.items())
    trainable = [n for n, p in one.named_parameters() if p.requires_grad]
    assert trainable and not any("lora_A" in n for n in trainable)
    other_seed = build_model(from_run_config({**cfg.to_dict(), "seed": 4}), 2)
    assert not all(torch.equal(v, adapter_state(other_seed)[k]) for k, v in a_one.items())


def test_hetero_rank_client_reports_and_trains_its_own_rank(base_config):
    overrides = run_config(base_config, aggregation="hetero-rank", **{"hetero-ranks": "2,4"})
    ranks = {1: 2, 2: 4, 3: 3}  # node 3's node config says 3
    node_configs = {1: {}, 2: {}, 3: {"lora-r": 3}}
    for node, rank in ranks.items():
        query = Message(RecordDict({"config": ConfigRecord({"ask": "lora-r"})}),
                        dst_node_id=node, message_type=MessageType.QUERY)
        answered = client_app.query(query, context(overrides, node - 1, node_configs[node]))
        assert answered.content["metrics"]["lora-r"] == rank
    strategy, _, messages = server_round(overrides, ranks=ranks)
    replies = [answer(m, context(overrides, n - 1, node_configs[n])) for n, m in messages.items()]
    for msg in replies:
        a = next(v for k, v in from_record(msg.content["arrays"]).items() if is_lora_a(k))
        assert a.shape[0] == ranks[int(msg.metadata.src_node_id)]
        assert msg.content["metrics"]["lora-r"] == a.shape[0]
    record, _ = strategy.aggregate_train(1, replies)
    assert strategy.rounds[1].rejected == []
    assert strategy.rounds[1].extra["client_ranks"] == [2, 3, 4]
    assert next(v for k, v in record.items() if is_lora_a(k)).shape[0] == 4  # global: lora-r


def test_rank_rule_and_node_config():
    cfg = from_run_config({"aggregation": "hetero-rank", "hetero-ranks": "2,4,8"})
    assert [client_rank(cfg, {"partition-id": p}) for p in range(5)] == [2, 4, 8, 2, 4]
    assert client_rank(cfg, {"partition-id": 0, "lora-r": 16}) == 16
    with pytest.raises(ConfigError, match="node config 'lora-r'"):
        client_rank(cfg, {"partition-id": 0, "lora-r": "big"})
    assert client_rank(from_run_config({"hetero-ranks": "2,4"}), {"partition-id": 0,
                                                                   "lora-r": 2}) == 8
    with pytest.raises(ConfigError, match="'hetero-ranks'"):
        from_run_config({"hetero-ranks": "2,zero"})


@pytest.fixture
def rows(tiny_model, toy_data):
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 120, "max-length": 32})
    splits = load_splits(cfg)
    tok = load_tokenizer(cfg)
    return TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32), \
        tok.pad_token_id


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_proximal_term_keeps_the_client_near_the_global_adapter(tiny_model, rows, dp):
    data, pad = rows

    def distance(mu):
        cfg = from_run_config({"model": str(tiny_model), "batch-size": 16, "lr": 0.05,
                               "proximal-mu": mu, "dp": dp, "delta": 1e-3})
        torch.manual_seed(0)
        model = build_model(cfg, 2)
        before = adapter_state(model)
        state = PrivacyState(noise_multiplier=0.5, sample_rate=sample_rate(len(data), 16))
        train_local(model, data, pad, cfg, state, seed=0)
        after = adapter_state(model)
        return sum(float((after[k] - before[k]).norm() ** 2) for k in before) ** 0.5

    free, pulled, pinned = distance(0.0), distance(5.0), distance(20.0)  # lr * mu = 1: pinned
    assert pinned < 1e-5
    assert 0.0 < pulled < free
