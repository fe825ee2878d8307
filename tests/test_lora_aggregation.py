"""FFA-LoRA and heterogeneous-rank aggregation are exact where the maths says they are."""

import numpy as np
import pytest
from strategy_helpers import FakeGrid, adapter, reply, sent_arrays, start, train_like

from fedtune.model.lora_layout import lora_a_digest
from strategies.fedavg import LoraFedAvg
from strategies.ffa import FfaLora
from strategies.hetero_rank import HeteroRankLora
from strategies.lowrank import factorise, lora_delta, truncation_error

ALPHA = 16.0


def delta(state, module, rank):
    return lora_delta(state[f"{module}.lora_B.weight"], state[f"{module}.lora_A.weight"],
                      ALPHA / rank)


def test_ffa_sends_no_a_and_its_mean_of_b_a_is_exact():
    r = 4
    glob = adapter(r, seed=1)
    strategy = FfaLora(min_replies=2)
    messages = start(strategy, glob, FakeGrid([1, 2, 3]))
    for msg in messages.values():
        assert not any(".lora_A." in k for k in sent_arrays(msg))
        assert msg.content["config"]["lora-a-sha256"] == lora_a_digest(glob)
    weights = {1: 10, 2: 30, 3: 60}
    outs = {n: train_like(sent_arrays(m), n) for n, m in messages.items()}
    arrays, _ = strategy.aggregate_train(1, [reply(n, outs[n], weights[n]) for n in outs])
    new = {k: v.numpy() for k, v in arrays.items()}
    for m in ("enc.0.query", "enc.1.value"):
        a = glob[f"{m}.lora_A.weight"]
        assert np.array_equal(new[f"{m}.lora_A.weight"], a)  # A never moves
        expected = sum(w * lora_delta(outs[n][f"{m}.lora_B.weight"], a, ALPHA / r)
                       for n, w in weights.items()) / sum(weights.values())
        np.testing.assert_allclose(delta(new, m, r), expected, atol=1e-6, rtol=0)


def test_fedavg_of_b_and_a_is_not_exact_where_ffa_is():
    """The reason FFA exists: averaging A and B separately is not averaging B·A."""
    r = 4
    glob = adapter(r, seed=1)
    strategy = LoraFedAvg(min_replies=2)
    messages = start(strategy, glob, FakeGrid([1, 2]))
    outs = {n: train_like(sent_arrays(m), n) for n, m in messages.items()}
    arrays, _ = strategy.aggregate_train(1, [reply(n, outs[n], 1) for n in outs])
    new = {k: v.numpy() for k, v in arrays.items()}
    m = "enc.0.query"
    expected = (delta(outs[1], m, r) + delta(outs[2], m, r)) / 2
    assert not np.allclose(delta(new, m, r), expected, atol=1e-6)


def test_ffa_uploads_about_half_the_lora_bytes_of_fedavg():
    r, width = 8, 32  # BERT-like square query/value projections
    glob = adapter(r, out=width, inp=width, seed=2)
    logs = {}
    for name, cls in (("fedavg", LoraFedAvg), ("ffa", FfaLora)):
        strategy = cls(min_replies=2)
        messages = start(strategy, glob, FakeGrid([1, 2, 3]))
        outs = [reply(n, train_like(sent_arrays(m), n, touch_a=False), 5)
                for n, m in messages.items()]
        strategy.aggregate_train(1, outs)
        logs[name] = strategy.rounds[1]
    head = sum(glob[k].nbytes for k in ("classifier.weight", "classifier.bias")) * 3
    lora = {k: v.bytes_up - head for k, v in logs.items()}
    assert lora["ffa"] == lora["fedavg"] // 2
    assert 0.5 < logs["ffa"].bytes_up / logs["fedavg"].bytes_up < 0.55
    assert logs["ffa"].bytes_down == logs["ffa"].bytes_up  # B + head both ways


@pytest.fixture
def hetero():
    """Three nodes at ranks 1, 2 and 4; global adapter at rank 4, delta-W = 0 to start."""
    strategy = HeteroRankLora(min_replies=2, lora_alpha=ALPHA, global_rank=4, seed=7)
    grid = FakeGrid([1, 2, 3], ranks={1: 1, 2: 2, 3: 4})
    return strategy, grid, adapter(4, out=6, inp=7, seed=3, b_zero=True)


def test_hetero_rank_sends_each_node_its_own_rank(hetero):
    strategy, grid, glob = hetero
    messages = start(strategy, glob, grid)
    for node, rank in grid.ranks.items():
        sent = sent_arrays(messages[node])
        assert sent["enc.0.query.lora_A.weight"].shape == (rank, 7)
        assert sent["enc.0.query.lora_B.weight"].shape == (6, rank)
        assert not sent["enc.0.query.lora_B.weight"].any()  # delta-W = 0: B = 0, A can learn
        a = sent["enc.0.query.lora_A.weight"]
        np.testing.assert_allclose(a @ a.T, np.eye(rank), atol=1e-6)
    assert grid.queries == 3
    start(strategy, glob, grid, server_round=2)
    assert grid.queries == 3, "ranks are asked once per node, not every round"


def test_hetero_rank_mean_is_exact_and_refactorised_to_each_rank(hetero):
    strategy, grid, glob = hetero
    messages = start(strategy, glob, grid)
    weights = {1: 20, 2: 50, 3: 30}
    outs = {1: train_like(sent_arrays(messages[1]), 1),
            2: train_like(sent_arrays(messages[2]), 2),
            3: sent_arrays(messages[3])}  # node 3 sends back what it got: zero update
    arrays, _ = strategy.aggregate_train(1, [reply(n, outs[n], weights[n]) for n in outs])
    ranks = grid.ranks
    total = sum(weights.values())
    mean = {m: sum(w * delta(outs[n], m, ranks[n]) for n, w in weights.items()) / total
            for m in ("enc.0.query", "enc.1.value")}
    # The exact mean is held by the server ...
    for m, expected in mean.items():
        np.testing.assert_allclose(strategy.delta_w[m], expected, atol=1e-12)
    # ... the rank-4 global adapter holds it exactly (rank <= 1 + 2) ...
    new = {k: v.numpy() for k, v in arrays.items()}
    for m, expected in mean.items():
        assert np.linalg.matrix_rank(expected) <= 3
        np.testing.assert_allclose(delta(new, m, 4), expected, atol=1e-6, rtol=0)
    assert strategy.rounds[1].extra["global_truncation_error"] < 1e-6
    # ... and next round each node gets numpy's best rank-r approximation of it.
    messages = start(strategy, new, grid, server_round=2)
    for node, rank in ranks.items():
        sent = sent_arrays(messages[node])
        for m, expected in mean.items():
            u, s, vt = np.linalg.svd(expected)
            best = (u[:, :rank] * s[:rank]) @ vt[:rank]
            np.testing.assert_allclose(delta(sent, m, rank), best, atol=1e-6, rtol=0)
            if rank == 4:
                np.testing.assert_allclose(delta(sent, m, rank), expected, atol=1e-6, rtol=0)
            else:
                assert not np.allclose(delta(sent, m, rank), expected, atol=1e-6)


def test_hetero_rank_head_is_averaged_and_bytes_follow_the_ranks(hetero):
    strategy, grid, glob = hetero
    messages = start(strategy, glob, grid)
    outs = {n: train_like(sent_arrays(m), n) for n, m in messages.items()}
    arrays, _ = strategy.aggregate_train(1, [reply(n, outs[n], 1) for n in outs])
    head = np.mean([outs[n]["classifier.weight"] for n in outs], axis=0)
    np.testing.assert_allclose(arrays["classifier.weight"].numpy(), head, atol=1e-6)
    per_rank = 4 * (6 + 7) * 4  # four modules, (out + in) floats per rank, 4 bytes
    head_bytes = (2 * 7 + 2) * 4
    assert strategy.rounds[1].bytes_up == sum(per_rank * r + head_bytes for r in (1, 2, 4))
    assert strategy.rounds[1].bytes_down == strategy.rounds[1].bytes_up


def test_a_node_that_does_not_report_its_rank_sits_the_round_out(hetero):
    strategy, _, glob = hetero
    grid = FakeGrid([1, 2, 3], ranks={1: 1, 2: 2, 3: 4}, silent=(3,))
    messages = start(strategy, glob, grid)
    assert sorted(messages) == [1, 2]
    outs = [reply(n, train_like(sent_arrays(m), n), 1) for n, m in messages.items()]
    strategy.aggregate_train(1, outs)
    failures = strategy.rounds[1].failures
    assert failures == [{"kind": "left-out", "node": 3,
                         "reason": "did not answer the LoRA-rank query"}]


def test_factorise_is_exact_up_to_rank_and_best_beyond():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(9, 3)) @ rng.normal(size=(3, 11))
    for rank in (3, 5, 12):
        b, a = factorise(low, rank, 2.0)
        np.testing.assert_allclose(2.0 * b.astype(np.float64) @ a, low, atol=1e-5)
    full = rng.normal(size=(9, 11))
    u, s, vt = np.linalg.svd(full)
    b, a = factorise(full, 2, 0.5)
    np.testing.assert_allclose(0.5 * b.astype(np.float64) @ a, (u[:, :2] * s[:2]) @ vt[:2],
                               atol=1e-5)
    assert truncation_error(full, 2) == pytest.approx(np.sqrt((s[2:] ** 2).sum() / (s**2).sum()))
