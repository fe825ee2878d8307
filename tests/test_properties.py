"""Property tests (hypothesis): config parsing fails only with a clear ConfigError, and
aggregation does not depend on reply order and hands a lone client its own update back."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategy_helpers import FakeGrid, adapter, reply, sent_arrays, start, train_like

from fedtune.arrays import from_record
from fedtune.config import _FIELDS, ConfigError, RunConfig, from_run_config
from strategies.fedavg import LoraFedAvg
from strategies.ffa import FfaLora
from strategies.hetero_rank import HeteroRankLora

KEYS = sorted(_FIELDS)
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "0", "1", "-1", "true", "nan", "inf", "1e-5", "q,v", "fedavg", "iid"]),
    st.lists(st.text(max_size=4), max_size=3),
)
RUN_CONFIGS = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.just("x-anything")),
    VALUES, max_size=6)


@settings(max_examples=400, deadline=None)
@given(RUN_CONFIGS)
def test_any_run_config_parses_or_fails_with_a_config_error_naming_a_key(raw):
    try:
        cfg = from_run_config(raw)
    except ConfigError as exc:
        message = str(exc)
        assert "run-config key" in message or "resume" in message, message
        return
    assert isinstance(cfg, RunConfig)
    again = from_run_config(cfg.to_dict())  # a valid config survives its own config.json
    assert again == cfg


def _aggregate(strategy, grid, glob, seeds, weights, order):
    messages = start(strategy, glob, grid)
    replies = {n: reply(n, train_like(sent_arrays(messages[n]), seeds[n]), weights[n])
               for n in messages}
    arrays, _ = strategy.aggregate_train(1, [replies[n] for n in order])
    return from_record(arrays)


ONE = {"min_replies": 1, "min_available_nodes": 1, "min_train_nodes": 1}
MAKERS = {
    "fedavg": (lambda: LoraFedAvg(**ONE), None),
    "ffa": (lambda: FfaLora(**ONE), None),
    "hetero-rank": (lambda: HeteroRankLora(**ONE, lora_alpha=8.0, global_rank=4, seed=3), 4),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(MAKERS)), n=st.integers(2, 5), data=st.data())
def test_the_order_of_replies_does_not_change_the_result(name, n, data):
    make, rank = MAKERS[name]
    nodes = list(range(1, n + 1))
    grid = FakeGrid(nodes, ranks={k: rank for k in nodes} if rank else None)
    seeds = {k: data.draw(st.integers(0, 10**6)) for k in nodes}
    weights = {k: data.draw(st.integers(1, 1000)) for k in nodes}
    order = data.draw(st.permutations(nodes))
    glob = adapter(4, seed=data.draw(st.integers(0, 100)))
    a = _aggregate(make(), grid, glob, seeds, weights, nodes)
    b = _aggregate(make(), grid, glob, seeds, weights, order)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(MAKERS)), seed=st.integers(0, 10**6),
       weight=st.integers(1, 10**6))
def test_a_single_client_gets_its_own_update_back(name, seed, weight):
    make, rank = MAKERS[name]
    grid = FakeGrid([1], ranks={1: rank} if rank else None)
    strategy = make()
    messages = start(strategy, adapter(4, seed=seed % 97), grid)
    own = train_like(sent_arrays(messages[1]), seed)
    arrays, _ = strategy.aggregate_train(1, [reply(1, own, weight)])
    out = from_record(arrays)
    if name == "hetero-rank":  # the same delta-W = B A, refactorised
        for m in ("enc.0.query", "enc.1.value"):
            np.testing.assert_allclose(out[f"{m}.lora_B.weight"] @ out[f"{m}.lora_A.weight"],
                                       own[f"{m}.lora_B.weight"] @ own[f"{m}.lora_A.weight"],
                                       atol=1e-5)
        np.testing.assert_allclose(out["classifier.weight"], own["classifier.weight"], atol=1e-7)
        return
    for k, v in own.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
