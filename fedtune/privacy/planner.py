"""Plan a client's DP-SGD before a run: the noise it needs, the epsilon after every round, and
whether the run can learn (its predicted signal-to-noise), with the batch size that learns best."""

from __future__ import annotations

import math
from typing import Any

from fedtune.config import ConfigError
from fedtune.privacy.accounting import epsilon
from fedtune.privacy.calibration import (
    auto_batch_size,
    exact_epochs_batch,
    noise_multiplier,
    noise_multiplier_after,
    sample_rate,
    steps_per_epoch,
    steps_per_round,
    trimmed_auto_batch,
)
from fedtune.privacy.noise_search import shared_rdp_terms
from fedtune.privacy.signal_to_noise import noise_dominated, run_snr, step_snr

BATCH_SIZES = tuple(16 * 2**i for i in range(7))  # 16 ... 1024


def plan(*, num_examples: int, batch_size: int, local_epochs: float, rounds: int,
         target_epsilon: float, delta: float, accountant: str = "prv", num_clients: int = 1,
         trainable_params: int | None = None, label_count_noise: float = 0.0
         ) -> dict[str, Any]:
    """Noise multiplier for the whole run and the cumulative epsilon after each round; with
    ``trainable_params`` also the predicted signal-to-noise of ``num_clients`` such clients.
    ``label_count_noise`` > 0 composes the noisy label counts of ``logit-adjustment`` first.

    Infeasible requests raise :class:`ConfigError` with a feasible alternative.
    """
    if num_examples < 1:
        raise ConfigError("--num-examples must be >= 1")
    if batch_size < 0 or rounds < 1 or local_epochs <= 0:
        raise ConfigError("--batch-size must be >= 0 (0 = auto, as the run does), --rounds >= 1 "
                          "and --local-epochs > 0")
    batch_size = batch_size or trimmed_auto_batch(num_examples, local_epochs)  # as the run
    _check_request(num_examples, target_epsilon, delta, num_clients, trainable_params)
    q = sample_rate(num_examples, batch_size)
    per_round = steps_per_round(num_examples, batch_size, local_epochs)
    releases = [(label_count_noise, 1.0, 1)] if label_count_noise > 0 else []
    if releases:
        sigma = noise_multiplier_after(releases, target_epsilon=target_epsilon, delta=delta,
                                       q=q, steps=rounds * per_round, accountant=accountant)
        if sigma is None:
            raise ConfigError(f"--label-count-noise {label_count_noise:g} alone spends the "
                              f"whole --target-epsilon {target_epsilon:g}; raise the noise")
    else:
        sigma = noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                 num_examples=num_examples, batch_size=batch_size,
                                 steps=rounds * per_round, accountant=accountant)
    with shared_rdp_terms():  # every round's epsilon has the same (sigma, q): one RDP series
        per_round_eps = [epsilon([*releases, (sigma, q, r * per_round)], delta, accountant)
                         for r in range(1, rounds + 1)]
    result = {
        "num_examples": num_examples, "batch_size": batch_size, "local_epochs": local_epochs,
        "rounds": rounds, "target_epsilon": target_epsilon, "delta": delta,
        "accountant": accountant, "noise_multiplier": sigma, "sample_rate": q,
        "steps_per_round": per_round, "steps": rounds * per_round,
        "label_count_noise": label_count_noise,
        "epsilon": per_round_eps[-1], "epsilon_per_round": per_round_eps,
    }
    if trainable_params is not None:
        result.update(num_clients=num_clients, trainable_params=trainable_params,
                      **_snr(num_examples, q, sigma, rounds * per_round, num_clients,
                             trainable_params))
    return result


def recommend(*, num_examples: int, num_clients: int, samples_per_client: float, rounds: int,
              target_epsilon: float, delta: float, trainable_params: int, accountant: str = "prv",
              min_steps_per_round: int = 4) -> dict[str, Any]:
    """The batch size (16 ... 1024, at most a quarter of the data) whose run learns best for
    the same compute: ``samples_per_client`` examples processed per client over the run
    (local-epochs x rounds x examples). Each power of two is trimmed as the automatic batch is
    (:func:`exact_epochs_batch`, e.g. 256 -> 241 for half an epoch of 6,735 rows) so that its
    whole steps spend that budget exactly where they can, and never more than it.

    With the compute fixed, steps x batch is fixed, so run_snr = B sqrt(K T) / (sigma sqrt d) is
    proportional to sqrt(B x samples) / sigma(B): larger batches always win on that figure,
    because under subsampled DP sigma grows more slowly than sqrt(B). Measured, they stop
    winning: on SST-2 (the notes on issue 14) 512 lost to 256 on 6,735-row clients (0.8016 vs
    0.8188) and 128 lost to 64 on TREC-6's 1,090-row clients (macro-F1 0.817 vs 0.834). The
    bound ignores that Adam needs steps to move and that a larger batch averages away the
    disagreement between examples only up to a point. So the recommendation is the best figure
    among the batches inside the measured range (at most 256 and at least 10 steps per epoch,
    the automatic batch's rule); the larger ones are listed, marked ``beyond_measured``, and
    chosen only when no batch inside the range leaves ``min_steps_per_round`` steps per round.
    """
    if num_examples < 1 or rounds < 1 or samples_per_client <= 0:
        raise ConfigError("--num-examples and --rounds must be >= 1 and the training budget "
                          "(local-epochs x rounds x examples) > 0")
    _check_request(num_examples, target_epsilon, delta, num_clients, trainable_params)
    candidates = []
    measured_max = auto_batch_size(num_examples)
    epochs = samples_per_client / (rounds * num_examples)
    for power in (b for b in BATCH_SIZES if b <= num_examples // 4):
        batch_size = exact_epochs_batch(num_examples, power, epochs)
        q = sample_rate(num_examples, batch_size)
        # whole steps from the k batches an epoch the loader draws, not from the accounted
        # 1/q, which float rounding makes k - 1 for some k (one step short of the budget)
        batches = steps_per_epoch(num_examples, batch_size)
        per_round = math.floor(epochs * batches + 1e-9)
        if per_round < min_steps_per_round:
            continue
        sigma = noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                 num_examples=num_examples, batch_size=batch_size,
                                 steps=rounds * per_round, accountant=accountant)
        candidates.append({
            "batch_size": batch_size,
            "local_epochs": _epochs_for(per_round, num_examples, batch_size),
            "steps_per_round": per_round, "steps": rounds * per_round, "noise_multiplier": sigma,
            "samples": round(num_examples / batches * rounds * per_round),
            "beyond_measured": power > measured_max,
            **_snr(num_examples, q, sigma, rounds * per_round, num_clients, trainable_params),
        })
    if not candidates:
        raise ConfigError(
            f"no batch size from {BATCH_SIZES[0]} to a quarter of the {num_examples} examples "
            f"leaves {min_steps_per_round} steps per round for {samples_per_client:g} examples "
            f"over {rounds} round(s); train more local epochs or give each client more data")
    candidates.sort(key=lambda c: c["run_snr"], reverse=True)
    inside = [c for c in candidates if not c["beyond_measured"]]
    return {"num_examples": num_examples, "num_clients": num_clients, "rounds": rounds,
            "samples_per_client": samples_per_client, "target_epsilon": target_epsilon,
            "delta": delta, "accountant": accountant, "trainable_params": trainable_params,
            "min_steps_per_round": min_steps_per_round,
            "measured_max_batch": measured_max, "best": (inside or candidates)[0],
            "candidates": candidates}


def _epochs_for(per_round: int, num_examples: int, batch_size: int) -> float:
    """The shortest local-epochs (as --run-config text would give it) that a run turns into
    exactly ``per_round`` steps."""
    exact = per_round / steps_per_epoch(num_examples, batch_size)
    for digits in range(2, 17):
        short = float(f"{exact:.{digits}g}")
        if steps_per_round(num_examples, batch_size, short) == per_round:
            return short
    return exact


def _snr(num_examples: int, q: float, sigma: float, steps: int, clients: int,
         trainable_params: int) -> dict[str, Any]:
    """The noise is divided by the *expected* batch n q, which Poisson sampling makes smaller
    than the nominal batch size when it does not divide n (673 rows at 256: 224)."""
    figures = dict(batch_size=num_examples * q, noise_multiplier=sigma,
                   trainable_params=trainable_params, clients=clients)
    run = run_snr(steps=steps, **figures)
    return {"step_snr": step_snr(**figures), "run_snr": run,
            "noise_dominated": noise_dominated(run)}


def _check_request(num_examples: int, target_epsilon: float, delta: float, num_clients: int,
                  trainable_params: int | None) -> None:
    if target_epsilon <= 0:
        raise ConfigError(f"--target-epsilon {target_epsilon:g} is infeasible: epsilon must be "
                          "> 0 (e.g. 1, 3 or 8)")
    if not 0 < delta < 1.0 / num_examples:
        raise ConfigError(
            f"--delta {delta:g} is infeasible for {num_examples} examples: it must be in "
            f"(0, 1/N = {1.0 / num_examples:.3g}); e.g. --delta {min(1e-5, 0.1 / num_examples):.1e}"
        )
    if num_clients < 1 or (trainable_params is not None and trainable_params < 1):
        raise ConfigError("--num-clients and --trainable-params must be >= 1")
