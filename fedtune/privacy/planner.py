"""Plan a client's DP-SGD before a run: the noise it needs and the epsilon after every round."""

from __future__ import annotations

from typing import Any

from fedtune.config import ConfigError
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import noise_multiplier, sample_rate, steps_per_round
from fedtune.privacy.noise_search import shared_rdp_terms


def plan(*, num_examples: int, batch_size: int, local_epochs: float, rounds: int,
         target_epsilon: float, delta: float, accountant: str = "prv") -> dict[str, Any]:
    """Noise multiplier for the whole run and the cumulative epsilon after each round.

    Infeasible requests raise :class:`ConfigError` with a feasible alternative.
    """
    if num_examples < 1:
        raise ConfigError("--num-examples must be >= 1")
    if batch_size < 1 or rounds < 1 or local_epochs <= 0:
        raise ConfigError("--batch-size and --rounds must be >= 1 and --local-epochs > 0")
    if target_epsilon <= 0:
        raise ConfigError(f"--target-epsilon {target_epsilon:g} is infeasible: epsilon must be "
                          "> 0 (e.g. 1, 3 or 8)")
    if not 0 < delta < 1.0 / num_examples:
        raise ConfigError(
            f"--delta {delta:g} is infeasible for {num_examples} examples: it must be in "
            f"(0, 1/N = {1.0 / num_examples:.3g}); e.g. --delta {min(1e-5, 0.1 / num_examples):.1e}"
        )
    q = sample_rate(num_examples, batch_size)
    per_round = steps_per_round(num_examples, batch_size, local_epochs)
    sigma = noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                             num_examples=num_examples, batch_size=batch_size,
                             steps=rounds * per_round, accountant=accountant)
    with shared_rdp_terms():  # every round's epsilon has the same (sigma, q): one RDP series
        per_round_eps = [epsilon([(sigma, q, r * per_round)], delta, accountant)
                         for r in range(1, rounds + 1)]
    return {
        "num_examples": num_examples, "batch_size": batch_size, "local_epochs": local_epochs,
        "rounds": rounds, "target_epsilon": target_epsilon, "delta": delta,
        "accountant": accountant, "noise_multiplier": sigma, "sample_rate": q,
        "steps_per_round": per_round, "steps": rounds * per_round,
        "epsilon": per_round_eps[-1], "epsilon_per_round": per_round_eps,
    }
