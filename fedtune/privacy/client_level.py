"""Client-level (user-level) DP for DP-FedAvg: the epsilon of the noisy aggregate over rounds.

Each round releases the sum of clipped client updates plus Gaussian noise of std ``z * C``,
divided by ``m``, the number of clients sampled per round (``denominator`` in the report) whatever
the number that replied: a sampled client that refused, failed or was rejected adds a zero update.
That is a Gaussian mechanism with noise multiplier ``z`` on a sum with sensitivity ``C``, noise
std ``z * C / m`` on the mean as in Flower's fixed-clipping wrappers. The noise is added before
the server optimiser, whose step is then post-processing. Sampling ``m`` of ``N`` clients is
accounted as Poisson subsampling at rate ``m / N`` (Flower samples a fixed-size subset, for which
this is the usual approximation; with every client sampled, ``q = 1`` and there is no
amplification at all). Rounds compose in an RDP accountant.
"""

from __future__ import annotations

from typing import Any

from dp_accounting import rdp

from fedtune.config import RunConfig
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.crosscheck import dp_event

SAMPLING_APPROXIMATION = (
    "approximation: Flower samples a fixed number m of the N clients each round; this is "
    "accounted as Poisson sampling at rate m/N, the usual approximation (exact when m = N)")
SAMPLING_EXACT = "exact: every client is sampled each round (m = N, rate 1, no amplification)"


def sampled_per_round(cfg: RunConfig, num_clients: int) -> int:
    """What FedAvg samples: max(int(N * fraction-train), min-clients)."""
    return min(num_clients, max(int(num_clients * cfg.fraction_train), cfg.min_clients))


def client_level_report(*, noise_multiplier: float, clipping_norm: float, sampled: int,
                        population: int, rounds: int, delta: float, side: str,
                        server_optimizer: str = "none") -> dict[str, Any]:
    q = min(1.0, sampled / population)
    history = [(noise_multiplier, q, rounds)] if rounds else []
    check = None
    if rounds:
        acc = rdp.RdpAccountant()
        acc.compose(dp_event(history))
        check = float(acc.get_epsilon(delta))
    return {
        "side": side,
        "noise_multiplier": noise_multiplier,
        "clipping_norm": clipping_norm,
        "sampled_per_round": sampled,
        # m: the clipped sum is divided by the clients sampled, not by the replies received
        "denominator": sampled,
        "noise_stdv": noise_multiplier * clipping_norm / sampled,  # on the mean: z * C / m
        "server_optimizer": server_optimizer,
        "noise_before_server_optimizer": True,
        "population": population,
        "sample_rate": q,
        "sampling": SAMPLING_EXACT if sampled >= population else SAMPLING_APPROXIMATION,
        "rounds": rounds,
        "delta": delta,
        "accountant": "rdp",
        "epsilon": epsilon(history, delta, "rdp"),
        "crosscheck_rdp_epsilon": check,
    }
