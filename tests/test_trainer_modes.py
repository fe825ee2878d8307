"""grad-sample-mode, the Poisson no-DP baseline and the device setting of the local trainer."""

import dataclasses

import pytest
import torch

from client.trainer import train_local
from fedtune.config import ConfigError, from_run_config
from fedtune.data.batching import TokenizedDataset
from fedtune.data.loading import load_splits
from fedtune.model.adapter import adapter_state
from fedtune.model.build import build_model, load_tokenizer
from fedtune.model.precision import resolve_device
from fedtune.protocol import PrivacyState


@pytest.fixture
def setup(tiny_model, toy_data):
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 120, "batch-size": 24, "micro-batch-size": 8,
                           "delta": 1e-3, "max-length": 32, "local-epochs": 1.0,
                           "lr-schedule": "constant"})
    splits = load_splits(cfg)
    tok = load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    return cfg, rows, tok.pad_token_id


def _train(cfg, rows, pad, **kw):
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    before = adapter_state(model)
    state = PrivacyState(noise_multiplier=1.0, sample_rate=24 / 120)
    result = train_local(model, rows, pad, cfg, state, seed=7, **kw)
    return before, adapter_state(model), result, state


def test_every_grad_sample_mode_takes_the_same_dp_steps_as_hooks(setup):
    """Same batches, clipping and noise: the four ways to get per-sample norms agree (the same
    noise needs ``reproducible-noise``; by default it is secret, drawn afresh every run)."""
    cfg, rows, pad = setup
    cfg = dataclasses.replace(cfg, reproducible_noise=True, grad_sample_mode="hooks")
    before, hooks, ref, ref_state = _train(cfg, rows, pad)
    assert any(not torch.equal(before[k], hooks[k]) for k in hooks), "DP step changed nothing"
    for mode in ("auto", "fused", "functorch", "ghost"):
        _, weights, result, state = _train(dataclasses.replace(cfg, grad_sample_mode=mode),
                                           rows, pad)
        assert result.samples == ref.samples and state.history == ref_state.history
        for k in hooks:
            torch.testing.assert_close(weights[k], hooks[k], rtol=1e-4, atol=1e-6)


def test_poisson_baseline_trains_on_the_dp_batches(setup):
    cfg, rows, pad = setup
    _, _, dp, _ = _train(cfg, rows, pad)
    _, _, plain, state = _train(dataclasses.replace(cfg, dp="off"), rows, pad, poisson=True)
    _, _, shuffled, _ = _train(dataclasses.replace(cfg, dp="off"), rows, pad)
    assert plain.samples == dp.samples != len(rows)  # Poisson: not exactly one epoch of rows
    assert shuffled.samples == len(rows) and state.history == []


def test_new_keys_are_validated():
    with pytest.raises(ConfigError, match="'grad-sample-mode' = 'ew'.*hooks \\| functorch"):
        from_run_config({"grad-sample-mode": "ew"})
    with pytest.raises(ConfigError, match="'device' = 'gpu'.*auto \\| cpu \\| cuda"):
        from_run_config({"device": "gpu"})


def test_cuda_without_a_visible_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(from_run_config({"device": "auto"})).type == "cpu"
    with pytest.raises(ConfigError, match="'device' = 'cuda'.*client-resources-num-gpus"):
        resolve_device(from_run_config({"device": "cuda"}))


def test_precision_for_classification(setup):
    """``precision`` for seq-cls: bf16 autocast trains (same seeded batches and noise as fp32,
    so only the forward's rounding differs) and evaluates close to fp32; ``tf32`` only changes
    CUDA matmuls, so on the CPU it is fp32 bit for bit."""
    from fedtune.tasks.seq_cls import evaluate_seq_cls

    cfg, rows, pad = setup
    cfg = dataclasses.replace(cfg, reproducible_noise=True)
    before, fp32, _, _ = _train(cfg, rows, pad)
    _, tf32, _, _ = _train(dataclasses.replace(cfg, precision="tf32"), rows, pad)
    assert all(torch.equal(fp32[k], tf32[k]) for k in fp32)
    _, bf16, result, _ = _train(dataclasses.replace(cfg, precision="bf16"), rows, pad)
    assert all(bool(torch.isfinite(v).all()) for v in bf16.values())
    moved = max(float((fp32[k] - before[k]).abs().max()) for k in fp32)
    off = max(float((fp32[k] - bf16[k]).abs().max()) for k in fp32)
    assert moved > 0 and off < 0.1 * moved, (off, moved)
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    full = evaluate_seq_cls(cfg, model, rows, pad, 2)
    half = evaluate_seq_cls(dataclasses.replace(cfg, precision="bf16"), model, rows, pad, 2)
    assert abs(full["loss"] - half["loss"]) < 0.01 * full["loss"]


@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_a_first_poisson_draw_that_is_empty_is_a_noise_only_step(tiny_model, toy_data, mode):
    """A 4-row client at q = 1/4 (a small Dirichlet partition): with this seed its first Poisson
    draw is empty, which Opacus's own empty-batch fallback turned into a TypeError. The round
    takes all its steps (the empty one noised and counted) and trains on the rows it drew."""
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 4, "batch-size": 1, "delta": 1e-3,
                           "max-length": 32, "local-epochs": 1.0, "grad-sample-mode": mode})
    splits, tok = load_splits(cfg), load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    state = PrivacyState(noise_multiplier=1.0, sample_rate=0.25)
    result = train_local(model, rows, tok.pad_token_id, cfg, state, seed=2)
    assert len(rows) == 4 and result.samples == 3  # 4 steps drew 0, then 3 rows in all
    assert state.history == [(1.0, 0.25, 4)]  # every step counted, the empty one too
