"""Calibrating one client's DP-SGD noise to its whole planned training, once.

The noise multiplier is solved for the *total* number of steps the client may take over every round
(rounds x steps per round), so that after its last round the client's cumulative epsilon is at most
the target. Calibrating per round, as many examples do, lets the real epsilon grow with the rounds.
"""

from __future__ import annotations

import math

from opacus.accountants.utils import get_noise_multiplier

from config import ConfigError, RunConfig


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson rate q, as Opacus derives it from a DataLoader: 1 / number of batches."""
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def steps_per_round(num_examples: int, batch_size: int, local_epochs: float) -> int:
    return max(1, round(local_epochs * steps_per_epoch(num_examples, batch_size)))


def planned_steps(cfg: RunConfig, num_examples: int) -> int:
    """Every round is planned for, since any round may sample this client."""
    return cfg.num_server_rounds * steps_per_round(num_examples, cfg.batch_size, cfg.local_epochs)


def check_delta(delta: float, num_examples: int, who: str = "a client") -> None:
    if num_examples < 1:
        raise ConfigError(f"{who} has no training examples; use fewer clients or more data")
    if delta >= 1.0 / num_examples:
        raise ConfigError(
            f"run-config key 'delta' = {delta:g} must be below 1/n = {1.0 / num_examples:.3g} for "
            f"{who} with n = {num_examples} examples; lower 'delta' (e.g. {0.1 / num_examples:.1e})"
            " or give each client more data"
        )


def noise_multiplier(
    *, target_epsilon: float, delta: float, num_examples: int, batch_size: int, steps: int,
    accountant: str,
) -> float:
    """Smallest sigma whose epsilon after ``steps`` is <= target (Opacus tolerance 0.01)."""
    check_delta(delta, num_examples)
    if target_epsilon <= 0:
        raise ConfigError(f"run-config key 'target-epsilon' = {target_epsilon} must be > 0")
    try:
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate(num_examples, batch_size),
            steps=steps,
            accountant=accountant,
        ))
    except ValueError as exc:
        raise ConfigError(
            f"run-config key 'target-epsilon' = {target_epsilon}: no noise level reaches it for "
            f"{steps} steps ({exc}); raise the target or train fewer steps"
        ) from exc


def calibrate(cfg: RunConfig, num_examples: int) -> float:
    return noise_multiplier(
        target_epsilon=cfg.target_epsilon,
        delta=cfg.delta,
        num_examples=num_examples,
        batch_size=cfg.batch_size,
        steps=planned_steps(cfg, num_examples),
        accountant=cfg.accountant,
    )
