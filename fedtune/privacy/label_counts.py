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

import hashlib
import secrets

import torch

from fedtune.config import RunConfig
from fedtune.protocol import History

SENSITIVITY = 1.0  # one row added or removed moves one count by one
MIN_COUNT = 1.0  # a noisy count is floored here before its log: no label is impossible


def count_release(cfg: RunConfig) -> History:
    """The mechanism a client runs before its first round of a run, as accountant history: one
    Gaussian release of its label counts when the loss needs them under sample-level DP, else
    nothing. Without sample-level DP (``dp = off | client``) the exact counts are used: nothing
    to account (client-level DP clips the whole update, whatever computed it)."""
    if cfg.logit_adjustment > 0 and cfg.task == "seq-cls" and cfg.dp_enabled:
        return [(cfg.label_count_noise / SENSITIVITY, 1.0, 1)]
    return []


def label_counts(labels: list[int], num_labels: int, cfg: RunConfig, seed: int) -> torch.Tensor:
    """The client's count of each label, with N(0, ``label-count-noise``^2) added under DP.

    The noise is secret (OS entropy) unless ``reproducible-noise = true``, as the DP-SGD noise is:
    a server that knows the seed could otherwise subtract it.
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long),
                            minlength=num_labels).to(torch.float64)
    if not count_release(cfg):
        return counts
    if cfg.reproducible_noise:
        digest = hashlib.sha256(f"label-counts/{seed}".encode()).digest()[:8]
        noise_seed = int.from_bytes(digest, "little")
    else:
        noise_seed = secrets.randbits(63)
    generator = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(num_labels, generator=generator, dtype=torch.float64)
    return counts + cfg.label_count_noise * noise


def logit_offset(counts: torch.Tensor, tau: float) -> torch.Tensor:
    """tau x log(prior), the prior from (noisy) counts floored at :data:`MIN_COUNT`.

    Added to the logits in the training loss only (Menon et al. 2021, "Long-tail learning via
    logit adjustment"): the model then learns the label-balanced posterior, and predicting with
    its plain logits favours no label for being common. Under DP this is what lets a rare label
    be learned at all: without it every common row pushes the rare logit down, and the few rare
    rows' clipped gradients drown in the noise (TREC-6's ABBR was never predicted).
    """
    floored = counts.clamp(min=MIN_COUNT)
    prior = floored / floored.sum()
    return (tau * torch.log(prior)).to(torch.float32)

