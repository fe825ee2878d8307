"""The signal-to-noise check: its formula, the trainable-parameter count, the batch-size
recommendation, the CLI and the server's warning."""

import json
import math
from logging import INFO, WARNING

import pytest

from fedtune.cli import main as fedtune
from fedtune.config import ConfigError, from_run_config
from fedtune.model.paths import resolve_model_path
from fedtune.privacy.calibration import sample_rate, steps_per_round
from fedtune.privacy.planner import plan, recommend
from fedtune.privacy.signal_to_noise import (
    ADVICE,
    lora_trainable_params,
    noise_dominated,
    read_model_config,
    run_snr,
    server_check,
    step_snr,
    trainable_count,
)

MINILM_D = 74_498  # all-MiniLM-L6-v2, r = 8 on query,value: 73,728 LoRA + 770 head


def test_snr_formula_on_hand_computed_values():
    # B sqrt(K) / (sigma sqrt(d)) = 100 * 2 / (0.5 * 100) = 4; over T = 25 steps: 4 * 5 = 20
    figures = dict(batch_size=100, noise_multiplier=0.5, trainable_params=10_000, clients=4)
    assert step_snr(**figures) == pytest.approx(4.0)
    assert run_snr(steps=25, **figures) == pytest.approx(20.0)
    assert run_snr(batch_size=16, noise_multiplier=2.0, trainable_params=65_536,
                   steps=4) == pytest.approx(16 * 2 / (2.0 * 256))
    assert noise_dominated(0.99) and not noise_dominated(1.0)


def test_more_clients_and_bigger_batches_raise_it():
    base = dict(batch_size=64, noise_multiplier=1.0, trainable_params=MINILM_D, steps=10)
    assert run_snr(**base, clients=10) > run_snr(**base, clients=1)
    assert run_snr(**{**base, "batch_size": 256}) > run_snr(**base)
    assert run_snr(**{**base, "steps": 40}) == pytest.approx(2 * run_snr(**base))


@pytest.mark.parametrize(("pooling", "targets"), [
    ("pooler", ("query", "value")), ("mean", ("query", "value")),
    ("pooler", ("query", "key", "value", "dense")), ("mean", ("auto",)),
])
def test_counted_params_match_the_built_model(tiny_model, pooling, targets):
    from fedtune.model.build import build_model

    cfg = from_run_config({"model": str(tiny_model), "pooling": pooling,
                           "lora-targets": ",".join(targets), "lora-r": 4})
    model = build_model(cfg, 3)
    counted = lora_trainable_params(read_model_config(str(tiny_model)), 4, targets, 3)
    assert counted == trainable_count(model)


def test_minilm_count_from_its_config_alone():
    config = read_model_config(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    assert lora_trainable_params(config, 8, ("query", "value"), 2) == MINILM_D
    with pytest.raises(ConfigError, match="--trainable-params"):
        lora_trainable_params({**config, "model_type": "llama"}, 8, ("q_proj",), 2)
    with pytest.raises(ConfigError, match="matches no layer"):
        lora_trainable_params(config, 8, ("q_proj",), 2)


def test_plan_adds_the_snr_only_when_d_is_given():
    kwargs = dict(num_examples=1000, batch_size=100, local_epochs=1, rounds=2, target_epsilon=8,
                  delta=1e-5, accountant="rdp")
    assert "run_snr" not in plan(**kwargs)
    result = plan(**kwargs, num_clients=9, trainable_params=10_000)
    expected = 100 * 3 * math.sqrt(result["steps"]) / (result["noise_multiplier"] * 100)
    assert result["run_snr"] == pytest.approx(expected)
    assert result["noise_dominated"] is False


def test_recommend_spends_the_budget_and_picks_the_best():
    n, rounds, budget = 1000, 2, 1000.0  # local-epochs 0.5
    result = recommend(num_examples=n, num_clients=5, samples_per_client=budget, rounds=rounds,
                       target_epsilon=8, delta=1e-5, trainable_params=MINILM_D,
                       accountant="rdp", min_steps_per_round=4)
    candidates = result["candidates"]
    assert [c["batch_size"] for c in candidates] == [128, 64, 32, 14]  # 250 // 4 caps at 128
    for c in candidates:
        batch = n * sample_rate(n, c["batch_size"])
        assert c["steps_per_round"] >= 4
        assert budget - rounds * batch - 1 <= c["samples"] <= budget + 1  # never more
        assert steps_per_round(n, c["batch_size"], c["local_epochs"]) == c["steps_per_round"]
    assert candidates[0]["run_snr"] == max(c["run_snr"] for c in candidates)
    # s/n prefers 128, but 1,000 rows at 128 take 8 steps an epoch: beyond the measured range
    # (at most 256 and 10 steps per epoch, the automatic batch), so the choice is 64
    assert result["measured_max_batch"] == 64
    assert [c["beyond_measured"] for c in candidates] == [True, False, False, False]
    assert result["best"] == candidates[1] and result["best"]["batch_size"] == 64
    big = recommend(num_examples=6735, num_clients=2, samples_per_client=6735, rounds=2,
                    target_epsilon=8, delta=1e-5, trainable_params=MINILM_D, accountant="rdp")
    assert big["candidates"][0]["batch_size"] == 842  # the largest s/n (1,024, trimmed) ...
    assert big["best"]["batch_size"] == 241  # ... but the main job's measured best (256,
    assert big["best"]["samples"] == 6735  # trimmed so that its 2 x 14 steps are one epoch)
    fewer = recommend(num_examples=n, num_clients=5, samples_per_client=budget, rounds=rounds,
                      target_epsilon=8, delta=1e-5, trainable_params=MINILM_D,
                      accountant="rdp", min_steps_per_round=10)
    assert all(c["steps_per_round"] >= 10 for c in fewer["candidates"])
    assert 128 not in [c["batch_size"] for c in fewer["candidates"]]
    with pytest.raises(ConfigError, match="steps per round"):
        recommend(num_examples=40, num_clients=1, samples_per_client=40, rounds=1,
                  target_epsilon=8, delta=1e-5, trainable_params=MINILM_D, accountant="rdp")


PLAN = ["privacy", "plan", "--num-examples", "1000", "--batch-size", "100", "--rounds", "2",
        "--local-epochs", "0.5", "--target-epsilon", "8", "--delta", "1e-5", "--accountant",
        "rdp", "--num-clients", "5"]


def test_cli_recommend_and_json(capsys):
    assert fedtune([*PLAN, "--recommend"]) == 0
    out = capsys.readouterr().out
    assert "74,498 trainable parameters" in out and "batch  local-epochs" in out
    assert 'recommended: --run-config "batch-size=64 local-epochs=' in out
    assert "128" in out and "(beyond the measured range)" in out
    assert fedtune([*PLAN, "--recommend", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["best"]["batch_size"] == 64 and len(rec["candidates"]) == 4
    assert fedtune([*PLAN, "--json", "--trainable-params", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"step_snr", "run_snr", "noise_dominated"} <= set(out)
    assert out["trainable_params"] == 1000 and out["num_clients"] == 5


def test_cli_warns_when_noise_dominated(capsys):
    assert fedtune(["privacy", "plan", "--num-examples", "100", "--num-clients", "100",
                    "--batch-size", "16", "--rounds", "2", "--target-epsilon", "1",
                    "--delta", "1e-5", "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out
    assert "noise multiplier" in out and "signal/noise      step" in out
    assert "WARNING: this run is likely noise-dominated" in out and ADVICE in out
    assert fedtune([*PLAN]) == 0
    out = capsys.readouterr().out
    assert "signal/noise" in out and "WARNING" not in out


def _cfg(**overrides):
    return from_run_config({"num-server-rounds": 2, "delta": 1e-5, "accountant": "rdp",
                            **overrides})


def test_server_warns_before_a_noise_dominated_run():
    cfg = _cfg(**{"batch-size": 16, "target-epsilon": 1.0, "local-epochs": 1.0})
    level, line = server_check(cfg, [{"num_examples": 100}] * 100, 100, MINILM_D)
    assert level == WARNING and "noise-dominated" in line and ADVICE in line
    assert "smallest client 100 examples" in line and "74,498" in line
    comfortable = _cfg()  # batch 241 (auto), epsilon 8, half an epoch per round
    level, line = server_check(comfortable, [{"num_examples": 6735}] * 10, 10, MINILM_D)
    assert level == INFO and "WARNING" not in line and "noise-dominated" in line
    assert server_check(_cfg(dp="off"), [{"num_examples": 100}], 1, MINILM_D) is None
    assert server_check(cfg, [{"num_examples": 0}], 1, MINILM_D) is None  # local data: unknown


def test_recommend_counts_steps_from_the_loader_batches_not_the_accounted_rate():
    """1,474 rows at 16: k = 93 batches, which Opacus accounts as q = 1/92 (float rounding);
    one local epoch is still 93 steps, not 92."""
    n = 1474
    assert sample_rate(n, 16) == pytest.approx(1 / 92)
    result = recommend(num_examples=n, num_clients=5, samples_per_client=2 * n, rounds=2,
                       target_epsilon=8, delta=1e-5, trainable_params=MINILM_D, accountant="rdp")
    at_16 = next(c for c in result["candidates"] if c["batch_size"] == 16)
    assert at_16["steps_per_round"] == 93 and at_16["local_epochs"] == 1.0
    assert at_16["samples"] == 2 * n
