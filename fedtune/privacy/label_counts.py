"""A client's label counts under Gaussian noise, drawn once per run, for the logit-adjusted loss.

Why a mechanism at all: a loss that reads the client's own label histogram makes every row's
gradient depend on every other row's label, so per-sample clipping no longer bounds what one row
changes, and DP-SGD's guarantee is gone. Counting with noise first restores it: adding or removing
one row moves one count by 1 (L2 sensitivity 1), so the counts plus N(0, s^2) per label are a
Gaussian mechanism of noise multiplier s, which the accountant composes as one full-batch step,
``(s, 1.0, 1)``, alongside the DP-SGD steps that then train with them (post-processing). At
s = 3 and epsilon 8 that raises the DP-SGD noise by about 1%.

The noisy counts stay on the client (``context.state``) and are never sent: the server sees only
updates trained with them. They are drawn once per run and reused by every later round, so that
they are paid for once; a client that lost them (a restarted host) draws and pays again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtune.config import ConfigError, RunConfig
from fedtune.privacy.noise_source import noise_seed
from fedtune.protocol import History

if TYPE_CHECKING:  # the launcher's checks import this module and must not pay for torch
    import torch

SENSITIVITY = 1.0  # one row added or removed moves one count by one
MIN_COUNT = 1.0  # a noisy count is floored here before its log: no label is impossible
# label-count-noise = 0 (auto): 3 at epsilon 8, scaled up for smaller budgets so that the counts
# always take about the same share (at epsilon 8, noise 3 raises the DP-SGD noise by about 1%)
AUTO_NOISE, AUTO_AT_EPSILON = 3.0, 8.0


def count_noise(cfg: RunConfig) -> float:
    """The std of the counts' noise: ``label-count-noise``, or its automatic value."""
    if cfg.label_count_noise > 0:
        return cfg.label_count_noise
    return auto_count_noise(cfg.target_epsilon)


def auto_count_noise(target_epsilon: float) -> float:
    if target_epsilon <= 0:  # refused where the target is checked; never a division by zero
        return AUTO_NOISE
    return AUTO_NOISE * max(1.0, AUTO_AT_EPSILON / target_epsilon)


def check_count_release(cfg: RunConfig) -> None:
    """Before round 1: counts whose noise alone would spend the budget are a setting error (the
    clients would refuse every round), named before anything trains."""
    release = count_release(cfg)
    if not release:
        return
    from fedtune.privacy.accounting import epsilon  # Opacus: only when there is DP-SGD

    spent = epsilon(release, cfg.delta, cfg.accountant)
    if spent >= cfg.target_epsilon:
        raise ConfigError(
            f"run-config key 'label-count-noise' = {cfg.label_count_noise:g} (noise std "
            f"{count_noise(cfg):g}): the noisy label "
            f"counts of logit-adjustment alone would spend epsilon {spent:.3g} of the "
            f"target {cfg.target_epsilon:g}; raise it (0 = auto) or set logit-adjustment = 0")


def count_release(cfg: RunConfig) -> History:
    """The mechanism a client runs before its first round of a run, as accountant history: one
    Gaussian release of its label counts when the loss needs them, else nothing.

    Only under DP-SGD (``dp = sample | both``): what the adjustment corrects is the noise
    drowning the rare labels' few clipped gradients. Without DP the model learns the labels'
    frequencies itself, and the same adjustment only skews it (TREC-6 without DP, tau 2: macro-F1
    0.928 -> 0.804, accuracy 0.948 -> 0.858), so it is not applied."""
    if cfg.logit_adjustment > 0 and cfg.task == "seq-cls" and cfg.dp_enabled:
        return [(count_noise(cfg) / SENSITIVITY, 1.0, 1)]
    return []


def label_counts(labels: list[int], num_labels: int, cfg: RunConfig, seed: int) -> torch.Tensor:
    """The client's count of each label, with N(0, ``label-count-noise``^2) added under DP.

    The noise is secret (OS entropy) unless ``reproducible-noise = true``, as the DP-SGD noise is:
    a server that knows the seed could otherwise subtract it.
    """
    import torch

    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long),
                            minlength=num_labels).to(torch.float64)
    if not count_release(cfg):
        return counts
    generator = torch.Generator().manual_seed(
        noise_seed("label-counts", seed, cfg.reproducible_noise))
    noise = torch.randn(num_labels, generator=generator, dtype=torch.float64)
    return counts + count_noise(cfg) * noise


def logit_offset(counts: torch.Tensor, tau: float) -> torch.Tensor:
    """tau x log(prior), the prior from (noisy) counts floored at :data:`MIN_COUNT`.

    Added to the logits in the training loss only (Menon et al. 2021, "Long-tail learning via
    logit adjustment"): the model then learns the label-balanced posterior, and predicting with
    its plain logits favours no label for being common. Under DP this is what lets a rare label
    be learned at all: without it every common row pushes the rare logit down, and the few rare
    rows' clipped gradients drown in the noise (TREC-6's ABBR was never predicted).
    """
    import torch

    floored = counts.clamp(min=MIN_COUNT)
    prior = floored / floored.sum()
    return (tau * torch.log(prior)).to(torch.float32)

