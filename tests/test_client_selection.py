"""``client-selection = cyclic``: clients take turns in a fixed order, each the same number of
times, and the server says before round 1 when ``planned-rounds`` does not match the turns."""

import numpy as np
import pytest
from strategy_helpers import FakeGrid, start

from fedtune.config import ConfigError, from_run_config
from fedtune.privacy.calibration import cyclic_turns, turns_warning
from strategies.base import cyclic_turn
from strategies.registry import build_strategy

ARRAYS = {"w": np.zeros(3, dtype=np.float32)}


def test_the_cycle_hands_out_turns_in_id_order_and_wraps():
    ids = [30, 10, 50, 20, 40]
    assert [cyclic_turn(ids, 2, r) for r in (1, 2, 3, 4)] == [
        [10, 20], [30, 40], [50, 10], [20, 30]]
    assert cyclic_turn(ids, 9, 1) == [10, 20, 30, 40, 50]  # never more than there are


def test_a_cyclic_strategy_gives_every_client_the_same_number_of_turns():
    cfg = from_run_config({"client-selection": "cyclic", "fraction-train": 0.2,
                           "num-server-rounds": 10, "min-clients": 2})
    strategy = build_strategy(cfg, num_clients=10)
    grid = FakeGrid(list(range(1, 11)))
    turns = {n: 0 for n in grid.node_ids}
    for rnd in range(1, 11):
        picked = start(strategy, ARRAYS, grid, server_round=rnd)
        assert len(picked) == 2
        for node in picked:
            turns[node] += 1
    assert set(turns.values()) == {2} == {cyclic_turns(cfg, 10)}
    # resuming at round 7 picks what the uninterrupted run picked
    assert sorted(start(build_strategy(cfg, 10), ARRAYS, grid, server_round=7)) == [3, 4]


def test_random_selection_is_still_flowers_sampling():
    cfg = from_run_config({"fraction-train": 0.5, "min-clients": 2})
    picked = start(build_strategy(cfg, num_clients=10), ARRAYS, FakeGrid(list(range(1, 11))))
    assert len(picked) == 5


def test_client_level_dp_refuses_a_cyclic_order():
    with pytest.raises(ConfigError, match="client-selection.*random"):
        from_run_config({"client-selection": "cyclic", "dp": "both"})


def test_planned_rounds_that_miss_the_turns_are_named_before_round_1():
    cfg = from_run_config({"client-selection": "cyclic", "fraction-train": 0.2,
                           "num-server-rounds": 10, "min-clients": 2})
    line = turns_warning(cfg, 10)
    assert "2 turn(s) in 10 rounds" in line and "set planned-rounds = 2" in line
    assert "calibrated for rounds it never trains in" in line
    assert turns_warning(from_run_config({**_keys(cfg), "planned-rounds": 2}), 10) is None
    fewer = turns_warning(from_run_config({**_keys(cfg), "planned-rounds": 1}), 10)
    assert "refuse their last turns" in fewer
    assert turns_warning(from_run_config({"fraction-train": 0.2}), 10) is None  # random


def _keys(cfg) -> dict:
    return {"client-selection": cfg.client_selection, "fraction-train": cfg.fraction_train,
            "num-server-rounds": cfg.num_server_rounds, "min-clients": cfg.min_clients}
