"""grad-sample-mode = fused: the clipped per-row gradient sum is exactly DP-SGD's (a row-by-row
reference, to 1e-5), whichever way each layer gets its norms; it trains like Opacus's hooks; the
model gets its own forward back; models it cannot handle fall back or fail with the fix."""

import dataclasses

import pytest
import torch

from client.trainer import train_local
from fedtune.config import ConfigError, from_run_config
from fedtune.data.batching import PadCollator
from fedtune.model.adapter import adapter_state
from fedtune.model.build import build_model
from fedtune.privacy import fused_clipping
from fedtune.privacy.fused_clipping import FusedClipper, resolve_grad_sample_mode
from fedtune.protocol import PrivacyState
from fedtune.tasks.registry import task_for


def _cfg(tiny_model, **extra):
    return from_run_config({"model": str(tiny_model), "max-length": 32, "delta": 1e-3,
                            **extra})


def _model(cfg):
    """A LoRA classifier whose trainable tensors are all non-zero (fresh LoRA B and the head
    start at zero, which would make most per-row gradients vanish)."""
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return model.eval()  # no dropout: the batch and the row-by-row reference see one function


def _batch(n=7):
    """Rows of different lengths, padded: padding must not leak into any row's gradient."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        length = 4 + 3 * i
        rows.append({"input_ids": torch.randint(5, 20, (length,), generator=g),
                     "attention_mask": torch.ones(length, dtype=torch.long),
                     "labels": torch.tensor(i % 3)})
    return PadCollator(0)(rows)


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _reference(model, cfg, batch, clip_norm):
    """DP-SGD by definition: each row's whole gradient alone, clipped to C, summed."""
    task = task_for(cfg)
    params = _trainable(model)
    total = [torch.zeros_like(p) for _, p in params]
    norms = []
    for i in range(len(batch["labels"])):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(task.loss(cfg, model, row), [p for _, p in params])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(float(norm))
        factor = min(1.0, clip_norm / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total, norms


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
@pytest.mark.parametrize("kind", ["auto", "sample", "ghost"])
def test_clipped_sum_equals_the_row_by_row_reference(tiny_model, monkeypatch, pooling, kind):
    cfg = _cfg(tiny_model, pooling=pooling)
    model = _model(cfg)
    batch = _batch()
    _, norms = _reference(model, cfg, batch, 1e9)
    clip_norm = sorted(norms)[len(norms) // 2]  # about half the rows get clipped
    expected, _ = _reference(model, cfg, batch, clip_norm)
    if kind != "auto":
        monkeypatch.setattr(fused_clipping, "choose", lambda *_: kind)
    clipper = FusedClipper(model)
    loss = task_for(cfg).loss(cfg, model, batch)
    loss.backward()
    clipper.accumulate_clipped(clip_norm)
    clipper.close()
    assert sum(n > clip_norm for n in norms) >= 2 and sum(n < clip_norm for n in norms) >= 2
    used = {k for k, v in clipper.kinds.items() if v}
    assert used == ({"sample", "ghost"} if kind == "auto" else {kind})  # LoRA: sample, head: ghost
    for (name, p), want in zip(_trainable(model), expected, strict=True):
        assert p.grad is None, f"{name}: autograd computed the unused summed gradient"
        torch.testing.assert_close(p.summed_grad, want, rtol=1e-5, atol=1e-5, msg=name)


def test_micro_batches_accumulate_to_the_whole_batch(tiny_model):
    """Two chunks clipped one after the other sum to the clipped sum of the whole batch."""
    cfg = _cfg(tiny_model, pooling="mean")
    model = _model(cfg)
    batch = _batch(6)
    expected, _ = _reference(model, cfg, batch, 0.5)
    clipper = FusedClipper(model)
    task = task_for(cfg)
    for part in (slice(0, 2), slice(2, 6)):
        task.loss(cfg, model, {k: v[part] for k, v in batch.items()}).backward()
        clipper.accumulate_clipped(0.5)
    clipper.close()
    for (name, p), want in zip(_trainable(model), expected, strict=True):
        torch.testing.assert_close(p.summed_grad, want, rtol=1e-5, atol=1e-5, msg=name)


def test_close_gives_the_model_its_own_forward_back(tiny_model):
    cfg = _cfg(tiny_model)
    model = _model(cfg).eval()
    batch = _batch(3)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
    clipper = FusedClipper(model)
    with torch.no_grad():  # evaluation while attached: plain Linear, nothing recorded
        during = model(**inputs).logits
    assert clipper._rows() == 0
    clipper.close()
    assert all("forward" not in layer.module.__dict__ for layer in clipper.layers)
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(during, before)
    torch.testing.assert_close(after, before)


def test_trains_like_opacus_hooks(tiny_model, toy_data):
    """Same Poisson batches, clipping and (reproducible) noise: fused and Opacus's hooks take
    the same DP steps, micro-batches included, and the accountant sees the same steps."""
    cfg = from_run_config({"model": str(tiny_model), "dataset": str(toy_data),
                           "max-train-samples": 120, "batch-size": 24, "micro-batch-size": 8,
                           "delta": 1e-3, "max-length": 32, "local-epochs": 1.0,
                           "lr-schedule": "constant", "reproducible-noise": True})
    from fedtune.data.batching import TokenizedDataset
    from fedtune.data.loading import load_splits
    from fedtune.model.build import load_tokenizer
    splits = load_splits(cfg)
    tok = load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tok, splits.train["text"], splits.train["label"], 32)
    out = {}
    for mode in ("hooks", "fused"):
        torch.manual_seed(0)
        model = build_model(cfg, 2)
        state = PrivacyState(noise_multiplier=1.0, sample_rate=24 / 120)
        result = train_local(model, rows, tok.pad_token_id,
                             dataclasses.replace(cfg, grad_sample_mode=mode), state, seed=7)
        out[mode] = (adapter_state(model), result.samples, state.history)
        assert all("forward" not in m.__dict__ for m in model.modules())
    (hooks, n_hooks, h_hooks), (fused, n_fused, h_fused) = out["hooks"], out["fused"]
    assert n_hooks == n_fused and h_hooks == h_fused
    for k in hooks:
        torch.testing.assert_close(fused[k], hooks[k], rtol=1e-4, atol=1e-6)


def test_auto_falls_back_and_explicit_fused_names_the_fix(tiny_model):
    cfg = _cfg(tiny_model)
    model = build_model(cfg, 2)
    assert resolve_grad_sample_mode("auto", model) == "fused"
    assert resolve_grad_sample_mode("hooks", model) == "hooks"
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    norm.weight.requires_grad_(True)  # e.g. a trainable LayerNorm: not a Linear
    assert resolve_grad_sample_mode("auto", model) == "hooks"
    with pytest.raises(ConfigError, match="'grad-sample-mode' = 'fused'.*LayerNorm.*'hooks'"):
        resolve_grad_sample_mode("fused", model)


def test_choice_follows_the_cost_of_each_way():
    assert fused_clipping.choose(40, 384, 8) == "sample"     # LoRA A over 40 tokens
    assert fused_clipping.choose(40, 8, 384) == "sample"     # LoRA B
    assert fused_clipping.choose(1, 384, 2) == "ghost"       # a head on a pooled feature
    assert fused_clipping.choose(128, 1024, 1024) == "ghost"  # a wide layer, short sequence
