"""Server optimisers: Flower's update rules, on what each LoRA strategy really averages."""

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
from strategy_helpers import FakeGrid, adapter, reply, sent_arrays, start, train_like

from fedtune.arrays import from_record, to_record
from fedtune.config import from_run_config
from strategies.fedavg import LoraFedAvg
from strategies.registry import build_strategy
from strategies.server_optimizers import FedAdam as OurFedAdam
from strategies.server_optimizers import FedAvgM as OurFedAvgM
from strategies.server_optimizers import FedYogi as OurFedYogi
from strategies.server_optimizers import build_server_optimizer

FLOWER = {
    "fedavgm": (FedAvgM, dict(server_learning_rate=0.7, server_momentum=0.9),
                OurFedAvgM(lr=0.7, momentum=0.9)),
    "fedadam": (FedAdam, dict(eta=0.05, beta_1=0.9), OurFedAdam(lr=0.05, beta_1=0.9)),
    "fedyogi": (FedYogi, dict(eta=0.05, beta_1=0.9), OurFedYogi(lr=0.05, beta_1=0.9)),
}


@pytest.mark.parametrize("name", sorted(FLOWER))
def test_same_steps_as_flowers_own_strategy_over_two_rounds(name):
    flower_cls, kwargs, ours = FLOWER[name]
    flower = flower_cls(fraction_evaluate=0.0, **kwargs)
    mine = LoraFedAvg(min_replies=2, fraction_evaluate=0.0, server_optimizer=ours)
    grid = FakeGrid([1, 2])
    theirs_arrays = mine_arrays = to_record(adapter(4, seed=5))
    for server_round in (1, 2):
        flower.configure_train(server_round, theirs_arrays, ConfigRecord(), grid)
        sent = start(mine, from_record(mine_arrays), grid, server_round)
        outs = [reply(n, train_like(sent_arrays(m), 10 * server_round + n), 10 * n)
                for n, m in sent.items()]
        theirs_arrays, _ = flower.aggregate_train(server_round, outs)
        mine_arrays, _ = mine.aggregate_train(server_round, outs)
        for key, value in from_record(theirs_arrays).items():
            np.testing.assert_allclose(mine_arrays[key].numpy(), value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(from_record(mine_arrays)["classifier.weight"],
                           adapter(4, seed=5)["classifier.weight"])


@pytest.mark.parametrize("aggregation", ["fedavg", "ffa", "hetero-rank"])
@pytest.mark.parametrize("optimizer", ["none", "fedavgm", "fedadam", "fedyogi"])
def test_every_server_optimiser_runs_two_rounds_on_every_aggregation(aggregation, optimizer):
    cfg = from_run_config({"aggregation": aggregation, "server-optimizer": optimizer,
                           "lora-r": 4, "fraction-evaluate": 0.0})
    strategy = build_strategy(cfg, num_clients=3)
    assert type(strategy.optimizer).__name__ != "ServerOptimizer" or optimizer == "none"
    grid = FakeGrid([1, 2, 3], ranks={1: 2, 2: 4, 3: 4})
    arrays = adapter(4, seed=1, b_zero=True)
    history = [arrays]
    for server_round in (1, 2):
        messages = start(strategy, arrays, grid, server_round)
        outs = [reply(n, train_like(sent_arrays(m), 10 * server_round + n,
                                    touch_a=aggregation != "ffa"), 5 + n)
                for n, m in messages.items()]
        record, metrics = strategy.aggregate_train(server_round, outs)
        arrays = from_record(record)
        history.append(arrays)
        assert set(arrays) == set(history[0])
        assert all(np.all(np.isfinite(v)) for v in arrays.values())
        assert strategy.rounds[server_round].clients == 3
    moved = [k for k in arrays if not np.allclose(history[1][k], history[2][k])]
    assert "classifier.weight" in moved


def test_server_lr_zero_picks_each_optimisers_default():
    assert build_server_optimizer(from_run_config({"server-optimizer": "fedavgm"})).lr == 1.0
    assert build_server_optimizer(from_run_config({"server-optimizer": "fedadam"})).lr == 1e-2
    opt = build_server_optimizer(from_run_config({"server-optimizer": "fedyogi",
                                                  "server-lr": 0.3, "server-momentum": 0.5}))
    assert (opt.lr, opt.beta_1) == (0.3, 0.5)


def test_fedavgm_with_lr_one_and_no_momentum_is_fedavg():
    opt = OurFedAvgM(lr=1.0, momentum=0.0)
    current = {"x": np.ones(3, dtype=np.float32)}
    mean = {"x": np.array([2.0, 3.0, 4.0], dtype=np.float32)}
    np.testing.assert_allclose(opt.step(1, current, mean)["x"], mean["x"])
