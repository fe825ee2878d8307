"""DP-SGD's clipped gradient sum for models whose trainable tensors all live in ``nn.Linear``
layers (LoRA's A and B factors, linear classification heads): ``grad-sample-mode = fused``.

Why not Opacus's hooks: they wrap every trainable module in a full backward hook, let autograd
compute the summed weight gradient anyway (never used under DP), and keep one materialised
per-sample gradient per layer in a separate pass. On a 2-core CPU that machinery was most of
DP's 15% overhead over plain LoRA training, while the arithmetic of LoRA's per-sample gradients is
under 1% of the step (the notes on issue 17).

Here each trainable Linear runs through one autograd function whose backward returns the input
gradient and records, per row, what the row's weight gradient needs; autograd never computes the
summed weight gradient. Per layer, whichever is cheaper:

- ``sample``: the per-row gradients ``G_i = g_i^T a_i`` (``n x out x in``; cost ``n T out in``).
  LoRA's rank makes one side small, so this is the usual choice for LoRA.
- ``ghost``: only their norms, from the Gram matrices ``||G_i||^2 = sum((a_i a_i^T) * (g_i g_i^T))``
  (cost ``n T^2 (in + out)``; cheaper for short sequences and wide layers, e.g. a head on a
  pooled feature, T = 1), and the clipped sum in one matmul ``(c * g)^T a`` at the end.

The clipped sum is exactly DP-SGD's: each row's gradient over *all* trainable tensors is scaled by
``min(1, C / (||G_i|| + 1e-6))`` (Opacus's formula), the rows are summed, and Opacus's own
``DPOptimizer`` adds one noise draw, divides by the expected batch and calls the accountant.
``tests/test_fused_clipping.py`` checks it against a row-by-row reference to 1e-5.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from fedtune.config import ConfigError


class UnsupportedModel(ConfigError):
    """A trainable tensor outside an ``nn.Linear`` (an embedding, a norm): use Opacus's hooks."""


def trainable_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers that own every trainable tensor of ``model``, or UnsupportedModel."""
    layers, owned = [], set()
    for module in model.modules():
        mine = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not mine:
            continue
        if type(module) is not nn.Linear:  # a subclass may compute something else
            names = [n for n, m in model.named_modules() if m is module]
            raise UnsupportedModel(
                f"trainable tensors in {type(module).__name__} ({names[0] if names else '?'}): "
                "fused clipping handles nn.Linear only; use grad-sample-mode = 'hooks'")
        layers.append(module)
        owned.update(id(p) for p in mine)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if missing:
        raise UnsupportedModel(f"trainable tensors outside any module: {missing[:3]}")
    if not layers:
        raise UnsupportedModel("no trainable tensors")
    return layers


def supports(model: nn.Module) -> bool:
    try:
        trainable_linears(model)
    except UnsupportedModel:
        return False
    return True


@dataclass
class _Layer:
    """What one Linear recorded in the current step, summed over its calls (a layer may run more
    than once per forward): per-row gradients where materialising is cheaper, else the
    (activation, output gradient) pairs that a ghost norm needs."""
    module: nn.Linear
    rows: torch.Tensor | None = None         # (n, out, in), fp32
    # (activations (n, T, in), output gradients (n, T, out)), fp32, for ghost norms
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    bias_rows: torch.Tensor | None = None    # (n, out), fp32

    def clear(self) -> None:
        self.rows, self.bias_rows = None, None
        self.pairs.clear()

    def record(self, x: torch.Tensor, grad_out: torch.Tensor) -> None:
        n = x.shape[0]
        # Opacus's convention for loss_reduction = "mean": the loss is the batch mean, so a
        # row's own gradient is n times its share of the batch gradient. The factor is applied
        # to the small results, not to the (n, T, out) output gradient.
        a = x.detach().reshape(n, -1, x.shape[-1]).float()
        g = grad_out.detach().reshape(n, -1, grad_out.shape[-1]).float()
        if self.module.bias is not None and self.module.bias.requires_grad:
            b = g.sum(dim=1).mul_(n)
            self.bias_rows = b if self.bias_rows is None else self.bias_rows + b
        if not self.module.weight.requires_grad:
            return
        if choose(a.shape[1], a.shape[2], g.shape[2]) == "ghost":
            self.pairs.append((a, g * n))
            return
        rows = torch.bmm(g.transpose(1, 2), a).mul_(n)
        self.rows = rows if self.rows is None else self.rows + rows


class _RecordedLinear(torch.autograd.Function):
    """``F.linear`` whose backward hands the input gradient to autograd and the weight gradient's
    ingredients to the clipper (nothing to ``weight.grad``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer: _Layer):
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        ctx.layer.record(x, grad_out)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(weight.to(grad_out.dtype)).to(x.dtype)
        return grad_x, None, None, None


def _forward(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    module = layer.module
    if not torch.is_grad_enabled():  # evaluation: a plain Linear
        return F.linear(x, module.weight, module.bias)
    return _RecordedLinear.apply(x, module.weight, module.bias, layer)


def choose(n_tokens: int, d_in: int, d_out: int) -> str:
    """``ghost`` when the Gram-matrix norm (T^2 (in + out) per row) is cheaper than materialising
    the row's gradient (T in out per row), else ``sample``."""
    return "ghost" if n_tokens * (d_in + d_out) < d_in * d_out else "sample"


class FusedClipper:
    """Records every trainable Linear's activations and output gradients while attached, and
    turns them into the clipped per-row gradient sum (``accumulate_clipped``)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [_Layer(m) for m in trainable_linears(model)]
        self.kinds = {"sample": 0, "ghost": 0}  # layer-steps clipped each way (tests check it)
        for layer in self.layers:
            layer.module.forward = functools.partial(_forward, layer)

    def close(self) -> None:
        """Give every Linear back its own forward."""
        for layer in self.layers:
            layer.module.__dict__.pop("forward", None)
        self.clear()

    def clear(self) -> None:
        for layer in self.layers:
            layer.clear()

    def _rows(self) -> int:
        for layer in self.layers:
            for t in (layer.rows, layer.bias_rows, *(a for a, _ in layer.pairs)):
                if t is not None:
                    return t.shape[0]
        return 0

    def _per_layer(self, layer: _Layer):
        """(kind, per-row squared norm of the layer's weight and bias gradient, its per-row
        weight gradient or ghost pair)."""
        sq = 0.0
        if layer.bias_rows is not None:
            sq = layer.bias_rows.pow(2).sum(dim=1)
        if layer.pairs and layer.rows is not None:  # mixed calls: materialise the ghost ones
            for a, g in layer.pairs:
                layer.rows = layer.rows + torch.bmm(g.transpose(1, 2), a)
            layer.pairs.clear()
        if layer.rows is not None:
            self.kinds["sample"] += 1
            return "sample", sq + layer.rows.pow(2).sum(dim=(1, 2)), layer.rows
        if not layer.pairs:
            return "none", sq, None
        self.kinds["ghost"] += 1
        a = torch.cat([a for a, _ in layer.pairs], dim=1)
        g = torch.cat([g for _, g in layer.pairs], dim=1)
        if a.shape[1] == 1:
            ghost = a.pow(2).sum(dim=(1, 2)) * g.pow(2).sum(dim=(1, 2))
        else:
            ghost = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        return "ghost", sq + ghost, (a, g)

    def accumulate_clipped(self, max_grad_norm: float) -> None:
        """``p.summed_grad += sum_i clip_i * grad_i(p)`` for every trainable tensor, with
        ``clip_i = min(1, C / (||grad_i|| + 1e-6))`` over the row's whole gradient."""
        n = self._rows()
        if n == 0:  # an empty Poisson batch: nothing clipped, the noise step still follows
            for layer in self.layers:
                for p in (layer.module.weight, layer.module.bias):
                    if p is not None and p.requires_grad and getattr(p, "summed_grad",
                                                                      None) is None:
                        p.summed_grad = torch.zeros_like(p)
            return
        parts = [self._per_layer(layer) for layer in self.layers]
        norms = sum(sq for _, sq, _ in parts).sqrt()
        clip = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for layer, (kind, _, rows) in zip(self.layers, parts, strict=True):
            if kind == "sample":
                _add(layer.module.weight, torch.einsum("i,ijk->jk", clip, rows))
            elif kind == "ghost":
                a, g = rows
                _add(layer.module.weight,
                     (g * clip[:, None, None]).flatten(0, 1).T @ a.flatten(0, 1))
            if layer.bias_rows is not None:
                _add(layer.module.bias, clip @ layer.bias_rows)
        self.clear()


def _add(p: torch.Tensor, grad: torch.Tensor) -> None:
    grad = grad.to(p.dtype).view_as(p)
    if getattr(p, "summed_grad", None) is None:
        p.summed_grad = grad
    else:
        p.summed_grad += grad


class FusedDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer (noise, scaling, skipped steps for micro-batches, accountant hook),
    with the clipping step taken from :class:`FusedClipper` instead of ``p.grad_sample``."""

    def __init__(self, optimizer, *, clipper: FusedClipper, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.clipper = clipper

    @property
    def accumulated_iterations(self) -> int:
        return 1  # one logical batch per step; micro-batches accumulate through summed_grad

    def clip_and_accumulate(self) -> None:
        self.clipper.accumulate_clipped(self.max_grad_norm)

    def pre_step(self, closure=None) -> bool:
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.clipper.clear()
        super().zero_grad(set_to_none)


def make_private_fused(engine, *, module: nn.Module, optimizer, data_loader, noise_multiplier,
                       max_grad_norm: float, noise_generator=None):
    """``PrivacyEngine.make_private`` for fused clipping: the same Poisson loader, sample rate,
    DPOptimizer arithmetic and accountant hook, the module left unwrapped.
    Returns (module, optimizer, loader, close)."""
    loader = DPDataLoader.from_data_loader(data_loader, generator=engine.secure_rng)
    sample_rate = 1 / len(loader)
    clipper = FusedClipper(module)
    dp_optimizer = FusedDPOptimizer(
        optimizer, clipper=clipper, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(loader.dataset) * sample_rate),
        generator=noise_generator, secure_mode=engine.secure_mode)
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return module, dp_optimizer, loader, clipper.close


def resolve_grad_sample_mode(setting: str, model: nn.Module) -> str:
    """``auto``: fused clipping when every trainable tensor sits in a Linear (LoRA factors and
    linear heads: the usual case), else Opacus's hooks. An explicit ``fused`` on a model it cannot
    handle (e.g. LoRA on an embedding) is an error that names the setting."""
    if setting == "auto":
        return "fused" if supports(model) else "hooks"
    if setting == "fused":
        try:
            trainable_linears(model)
        except UnsupportedModel as err:
            raise UnsupportedModel(f"run-config key 'grad-sample-mode' = 'fused': {err}") from None
    return setting
