"""Client-level DP-FedAvg around a LoRA strategy, inside Flower's fixed-clipping wrappers.

The mechanism (McMahan et al. 2018, DP-FedAvg with a fixed denominator): clip each client's update
(reply minus what it was sent) to L2 norm ``C``, sum the clipped updates, add Gaussian noise of
std ``z * C`` to the sum and divide by ``m``, the number of clients *sampled* per round, the same
``m`` the noise is calibrated with (Flower's ``compute_stdv``: ``z * C / m`` on the mean). A client
that was sampled but refused, failed, timed out or sent a reply the checks rejected contributes a
zero update: it is not dropped from ``m``. Dividing by the replies received instead (what Flower's
wrappers do around a FedAvg that averages the replies) shrinks the effective noise multiplier to
``z * m' / m`` when only ``m'`` of ``m`` reply.

The noise goes onto the clipped mean *before* the server optimiser (FedAvgM, FedAdam, FedYogi):
the optimiser then only ever sees the Gaussian mechanism's output, and its step and state
(momentum, moments) are post-processing. Flower's wrappers add it to what the inner strategy
returns, after the optimiser, so the momentum carries noise-free means from round to round.

So the strategy (:meth:`strategies.fedavg.LoraFedAvg.aggregate`) clips, sums and noises with
:class:`ClientLevelDP`; the wrappers keep Flower's configuration (client-side clipping puts the
norm into the round's config for ``fixedclipping_mod``; the server re-clips, which changes nothing
for a client that clipped) and hand every reply, errors included, to the strategy, which logs each
one for the privacy report. Flower's wrappers ship their own accountant, but it only accepts an
unmodified ``FedAvg``; ours (``fedtune/privacy/client_level.py``) accounts the same Gaussian
releases. DP-FedAvg's sensitivity bound needs uniform client weights, so under client-level DP the
inner strategy checks the ``unit-weight`` every client sends (1) instead of ``num-examples``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_stdv

from fedtune.arrays import Arrays
from fedtune.config import RunConfig
from fedtune.privacy.client_level import sampled_per_round
from fedtune.protocol import UNIT_WEIGHT  # noqa: F401 - the weight key the wrappers need


@dataclass
class ClientLevelDP:
    """The Gaussian mechanism of one DP-FedAvg round: clip, sum, noise, divide by ``denominator``.

    The noise comes from OS entropy (``numpy.random.default_rng()``), not from a seeded or global
    generator: the server's seed must not predict it.
    """

    noise_multiplier: float
    clipping_norm: float
    denominator: int  # m: clients sampled per round
    rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)

    @property
    def stdv(self) -> float:
        """Noise std on the mean, as Flower's wrappers compute it: z * C / m."""
        return compute_stdv(self.noise_multiplier, self.clipping_norm, self.denominator)

    def clipped_update(self, arrays: Mapping[str, np.ndarray],
                       reference: Mapping[str, np.ndarray]) -> Arrays:
        """``arrays - reference`` scaled to L2 norm at most C over all tensors (Flower's FlatClip),
        in float64."""
        delta = {k: np.asarray(arrays[k], np.float64) - np.asarray(v, np.float64)
                 for k, v in reference.items()}
        norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
        scale = min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0
        return {k: d * scale for k, d in delta.items()}

    def noisy_mean(self, reference: Mapping[str, np.ndarray],
                   replies: Iterable[Mapping[str, np.ndarray]],
                   canaries: Iterable[Mapping[str, np.ndarray]] = ()) -> Arrays:
        """``reference + (sum of clipped updates + N(0, (z C)^2)) / m``, in ``reference``'s
        dtypes; every sampled client that sent nothing usable counts as a zero update.
        ``canaries``: the audit's canary clients' replies, clipped and summed like any other
        (they are extra clients of the audit run, not counted against the sampled ``m``)."""
        total = {k: np.zeros(np.shape(v), np.float64) for k, v in reference.items()}
        for arrays in canaries:
            for k, d in self.clipped_update(arrays, reference).items():
                total[k] += d
        count = 0
        for arrays in replies:
            count += 1
            for k, d in self.clipped_update(arrays, reference).items():
                total[k] += d
        if count > self.denominator:
            log(WARNING, "client-level DP: %s replies but %s sampled clients planned; the noise "
                "stays calibrated to the sum (multiplier z), the client sampling rate is higher "
                "than accounted", count, self.denominator)
        return self.noisy_mean_of_sum(reference, total)

    def noisy_mean_of_sum(self, reference: Mapping[str, np.ndarray],
                          total: Mapping[str, np.ndarray]) -> Arrays:
        """``reference + (total + N(0, (z C)^2)) / m``: the mechanism on a sum of clipped
        updates already formed (by secure aggregation, of client-clipped updates)."""
        sigma = self.noise_multiplier * self.clipping_norm  # on the sum; z * C / m on the mean
        return {k: (np.asarray(reference[k], np.float64)
                    + (np.asarray(t, np.float64) + self.rng.normal(0.0, sigma, np.shape(t)))
                    / self.denominator).astype(np.asarray(reference[k]).dtype)
                for k, t in total.items()}


class _InnerMechanism:
    """What both wrappers change in Flower's: the inner strategy clips, sums and adds the noise
    (before its server optimiser), and sees every reply."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float,
                 num_sampled_clients: int, *, rng: np.random.Generator | None = None):
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        if not getattr(strategy, "supports_client_dp", False):
            raise ValueError(f"{type(strategy).__name__} cannot apply client-level DP: it must "
                             "clip, sum and noise the updates before its server optimiser")
        strategy.client_dp = ClientLevelDP(
            noise_multiplier, clipping_norm, num_sampled_clients,
            **({"rng": rng} if rng is not None else {}))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's wrappers skip the round on any error reply without showing the replies to the
        # inner strategy (their spend then never reaches the privacy report), clip before the
        # inner checks (a reply of the wrong layout crashes the round) and noise after the inner
        # strategy's optimiser. With the fixed denominator an error is just a zero update.
        return self.strategy.aggregate_train(server_round, replies)


class ServerSideFixedClipping(_InnerMechanism, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, with the mechanism of :class:`ClientLevelDP`."""


class ClientSideFixedClipping(_InnerMechanism, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping (the norm travels in the round's config for
    ``fixedclipping_mod``), with the mechanism of :class:`ClientLevelDP`."""


def wrap(strategy: Strategy, cfg: RunConfig, num_clients: int) -> Strategy:
    wrapper = ServerSideFixedClipping if cfg.client_dp_side == "server" \
        else ClientSideFixedClipping
    return wrapper(strategy, cfg.client_noise_multiplier, cfg.client_clipping_norm,
                   sampled_per_round(cfg, num_clients))
