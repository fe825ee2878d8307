"""Client-level DP-FedAvg: the noise the released adapters really carry, measured from outside.

The effective noise multiplier of a client's update is measured on the wrapped strategy as
``build_strategy`` makes it, with no look inside: the release's response to a change of one
client's update (noise multiplier ~0, where the map is linear) and the covariance of the noise
(repeated rounds on the same inputs at z = 1) give the Gaussian mechanism's Mahalanobis distance d
for a change of norm ||Delta||; the multiplier it is worth is ||Delta|| / (C d). A round that
honours z gives z; Flower's wrappers around an average of the replies gave z * m'/m (replies of
sampled), and noise added after FedAvgM's step let the momentum leak the update again in the next
round's release.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from strategy_helpers import FakeGrid, adapter, meta

from fedtune.arrays import from_record, to_record
from fedtune.config import from_run_config
from fedtune.privacy.client_level import client_level_report
from strategies.registry import build_strategy

X0 = adapter(4, seed=3)
KEYS = sorted(X0)


def dp_reply(node: int, arrays: dict[str, np.ndarray]) -> Message:
    content = RecordDict({
        "arrays": to_record(arrays),
        "metrics": MetricRecord({"num-examples": 10, "unit-weight": 1, "train-loss": 0.5,
                                 "epsilon": 1.0}),
    })
    return Message(content=content, metadata=meta(node))


def direction(seed: int, norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {k: rng.normal(0, 1, v.shape) for k, v in X0.items()}
    scale = norm / np.sqrt(sum(float(np.sum(x * x)) for x in d.values()))
    return {k: x * scale for k, x in d.items()}


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in KEYS])


def releases(overrides: dict, num_nodes: int, updates: list[list[dict]]) -> np.ndarray:
    """The global adapters released by rounds 1..T (T x P) when, in round t, the first
    ``len(updates[t])`` sampled nodes reply with what they were sent plus those updates and the
    other sampled nodes never reply."""
    cfg = from_run_config({"dp": "client", "min-clients": 2, "client-clipping-norm": 1.0,
                           **overrides})
    strategy = build_strategy(cfg, num_nodes)
    grid = FakeGrid(list(range(1, num_nodes + 1)))
    x, out = X0, []
    for server_round, round_updates in enumerate(updates, 1):
        messages = strategy.configure_train(server_round, to_record(x), ConfigRecord(), grid)
        nodes = sorted(int(m.metadata.dst_node_id) for m in messages)
        replies = [dp_reply(node, {k: (x[k] + u[k]).astype(np.float32) for k in x})
                   for node, u in zip(nodes, round_updates, strict=False)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        x = from_record(arrays)
        out.append(flat(x))
    return np.stack(out)


def effective_multiplier(overrides: dict, num_nodes: int, make_updates, trials: int = 40
                         ) -> float:
    """||Delta|| / (C d): ``make_updates(s)`` gives every round's updates, client A's round-1
    update being a + s * Delta (norm below C for s in [0, 1]: clipping stays linear)."""
    quiet = {**overrides, "client-noise-multiplier": 1e-9}
    base = releases(quiet, num_nodes, make_updates(0.0))
    jac = releases(quiet, num_nodes, make_updates(1.0)) - base  # T x P, linear in s
    noisy = {**overrides, "client-noise-multiplier": 1.0}
    res = np.stack([releases(noisy, num_nodes, make_updates(0.0)) - base
                    for _ in range(trials)])  # K x T x P, zero-mean noise
    samples = res.transpose(1, 0, 2).reshape(res.shape[1], -1)  # T x (K P)
    cov = samples @ samples.T / samples.shape[1]  # the same T x T noise covariance everywhere
    d = np.sqrt(np.einsum("ti,tu,ui->", jac, np.linalg.inv(cov), jac))
    delta = np.sqrt(sum(float(np.sum((v - make_updates(0.0)[0][0][k]) ** 2))
                        for k, v in make_updates(1.0)[0][0].items()))
    return float(delta / (1.0 * d))


@pytest.mark.parametrize("side", ["server", "client"])
def test_noise_is_worth_z_when_fewer_clients_reply_than_were_sampled(side):
    """10 clients, fraction 0.5: 5 sampled, 2 reply. Before: 0.40 z (z * 2/5); after: z."""
    a, delta, b = direction(1, 0.3), direction(2, 0.5), direction(3, 0.3)
    z_eff = effective_multiplier({"fraction-train": 0.5, "client-dp-side": side}, 10,
                                 lambda s: [[{k: a[k] + s * v for k, v in delta.items()}, b]])
    assert z_eff == pytest.approx(1.0, rel=0.1)


def test_server_momentum_sees_only_noised_means():
    """FedAvgM (lr 1, momentum 0.9), 4 clients all replying, two rounds: client A's round-1
    update reaches the round-2 release again through the velocity. Before: 0.74 z
    (z / sqrt(1 + 0.9^2)); after: z (the velocity holds noised means only)."""
    a, b, c, d = (direction(i, 0.3) for i in (1, 2, 3, 4))
    delta = direction(5, 0.5)
    later = [direction(10 + i, 0.3) for i in range(4)]
    z_eff = effective_multiplier(
        {"fraction-train": 1.0, "server-optimizer": "fedavgm", "server-lr": 1.0,
         "server-momentum": 0.9}, 4,
        lambda s: [[{k: a[k] + s * v for k, v in delta.items()}, b, c, d], later])
    assert z_eff == pytest.approx(1.0, rel=0.1)


def test_the_report_says_what_the_sum_is_divided_by():
    level = client_level_report(noise_multiplier=1.0, clipping_norm=0.5, sampled=5,
                                population=10, rounds=3, delta=1e-5, side="server",
                                server_optimizer="fedavgm")
    assert level["denominator"] == 5 and level["noise_stdv"] == pytest.approx(0.1)
    assert level["noise_before_server_optimizer"] and level["server_optimizer"] == "fedavgm"


def test_canary_clients_estimate_tracks_the_noise():
    """The client-level audit (canary clients inside the clipped, noised sum): next to no noise
    its estimate is large; at z = 2 it stays below the accountant's epsilon (measured: 49 and
    4.8 against 5.4), and the never-sent directions look like the null either way. The server's
    noise is seeded here so that the test is deterministic."""
    from fedtune.privacy.audit.client_canaries import cosines
    from fedtune.privacy.audit.gaussian import estimate_from_cosines
    from strategies.registry import innermost

    x0 = adapter(8, out=32, inp=32, seed=3)  # d = 2,114: canaries nearly orthogonal
    dim = sum(int(np.size(v)) for v in x0.values())

    def update(seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        d = {k: rng.normal(0, 1, v.shape) for k, v in x0.items()}
        return {k: v * 0.5 / np.sqrt(sum(float(np.sum(y * y)) for y in d.values()))
                for k, v in d.items()}

    def estimate(z: float) -> tuple[float, list[float]]:
        cfg = from_run_config({"dp": "client", "min-clients": 2, "client-clipping-norm": 1.0,
                               "client-noise-multiplier": z, "audit-canary-clients": 50})
        strategy = build_strategy(cfg, 4)
        innermost(strategy).client_dp.rng = np.random.default_rng(0)
        grid = FakeGrid([1, 2, 3, 4])
        x = x0
        for server_round in range(1, 6):
            messages = strategy.configure_train(server_round, to_record(x), ConfigRecord(), grid)
            updates = [update(100 * server_round + i) for i in range(len(messages))]
            replies = [dp_reply(int(m.metadata.dst_node_id),
                                {k: (x[k] + u[k]).astype(np.float32) for k in x})
                       for m, u in zip(messages, updates, strict=True)]
            x = from_record(strategy.aggregate_train(server_round, replies)[0])
        inserted, null = cosines({k: x[k] - x0[k] for k in x0}, 42, 50)
        return estimate_from_cosines(inserted, dim, 1e-5)["epsilon_estimate"], null

    quiet, null_quiet = estimate(1e-3)
    noisy, null_noisy = estimate(2.0)
    reported = client_level_report(noise_multiplier=2.0, clipping_norm=1.0, sampled=4,
                                   population=4, rounds=5, delta=1e-5,
                                   side="server")["epsilon"]
    assert noisy <= reported < 10 < quiet, (noisy, reported, quiet)
    assert max(map(abs, null_quiet + null_noisy)) < 4.5 / np.sqrt(dim)  # the null's spread
