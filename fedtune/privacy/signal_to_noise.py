"""Will a DP-SGD federation learn? A predicted signal-to-noise ratio, before any training.

Each DP step of a client adds Gaussian noise of std ``sigma * C`` per coordinate to the sum of
the clipped per-sample gradients and divides by the expected batch ``B``: noise of norm about
``sigma * C * sqrt(d) / B`` over ``d`` trainable parameters, against a clipped mean gradient of norm
at most ``C``. Averaging ``K`` clients divides the noise std by ``sqrt(K)`` (their noise is
independent) while a shared direction stays, and over ``T`` steps the signal adds up linearly and
the noise as ``sqrt(T)``. ``C`` cancels:

    step_snr = B * sqrt(K) / (sigma * sqrt(d))
    run_snr  = B * sqrt(K * T) / (sigma * sqrt(d))

Both are optimistic upper bounds: they assume every per-sample gradient points the same way and
is clipped to exactly ``C``. Real gradients disagree and shrink as training converges, so a
setting near the threshold is already in trouble; one below it cannot learn more than noise.

Pure arithmetic on a few numbers (no torch), so the planner and the server can afford it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from fedtune.config import ConfigError, RunConfig

# Below 1, the noise the whole run accumulates is larger than the largest signal it can carry,
# even under the optimistic assumptions above: the adapter ends up mostly noise.
NOISE_DOMINATED_BELOW = 1.0

ADVICE = ("to raise it: a larger batch-size, fewer trainable parameters (a smaller lora-r, or "
          "aggregation=ffa), more data per client (or fewer clients sharing it), or a larger "
          "target-epsilon")


def step_snr(*, batch_size: float, noise_multiplier: float, trainable_params: int,
             clients: int = 1) -> float:
    """One step's figure; ``batch_size`` is the *expected* Poisson batch (it divides the noise)."""
    if noise_multiplier <= 0:
        return math.inf
    return batch_size * math.sqrt(clients) / (noise_multiplier * math.sqrt(trainable_params))


def run_snr(*, batch_size: float, noise_multiplier: float, trainable_params: int, steps: int,
            clients: int = 1) -> float:
    """The whole run's figure: ``step_snr * sqrt(steps)``."""
    return step_snr(batch_size=batch_size, noise_multiplier=noise_multiplier,
                    trainable_params=trainable_params, clients=clients) * math.sqrt(steps)


def noise_dominated(run_snr: float) -> bool:
    return run_snr < NOISE_DOMINATED_BELOW


# --- d, the trainable parameters, from a model's config.json alone -----------------------------

BERT_AUTO_TARGETS = ("query", "value")  # PEFT's default for model_type bert, as lora-targets=auto


def bert_linears(config: dict) -> list[tuple[str, int, int]]:
    """Every linear layer LoRA could wrap in a BERT encoder: (name, in, out).

    The pooler exists in both bases a classifier is built on (``BertModel`` and
    ``BertForSequenceClassification``), so a ``dense`` target wraps it too.
    """
    h = int(config["hidden_size"])
    inner = int(config.get("intermediate_size", 4 * h))
    layers: list[tuple[str, int, int]] = []
    for i in range(int(config["num_hidden_layers"])):
        at = f"encoder.layer.{i}"
        layers += [(f"{at}.attention.self.query", h, h), (f"{at}.attention.self.key", h, h),
                   (f"{at}.attention.self.value", h, h), (f"{at}.attention.output.dense", h, h),
                   (f"{at}.intermediate.dense", h, inner), (f"{at}.output.dense", inner, h)]
    return [*layers, ("pooler.dense", h, h)]


def lora_trainable_params(model_config: dict, lora_r: int, targets: tuple[str, ...],
                          num_labels: int) -> int:
    """LoRA (``r * (in + out)`` per wrapped linear) plus the head, without loading a weight.

    Targets match as PEFT matches them (a module's name or its dotted suffix). Only BERT encoders
    are counted (the default model is one); other architectures lay out their layers and heads
    differently, and a wrong ``d`` would make the check lie.
    """
    kind = model_config.get("model_type")
    if kind != "bert" or not {"hidden_size", "num_hidden_layers"} <= set(model_config):
        raise ConfigError(f"cannot count the trainable parameters of a '{kind}' model from its "
                          "config; pass --trainable-params (the server logs the real count)")
    targets = BERT_AUTO_TARGETS if tuple(targets) == ("auto",) else tuple(targets)
    linears = bert_linears(model_config)
    wrapped = [(name, n_in, n_out) for name, n_in, n_out in linears
               if any(name == t or name.endswith("." + t) for t in targets)]
    if not wrapped:
        raise ConfigError(f"--lora-targets {','.join(targets)} matches no layer of this BERT "
                          "(e.g. query,value)")
    lora = sum(lora_r * (n_in + n_out) for _, n_in, n_out in wrapped)
    hidden = int(model_config["hidden_size"])
    return lora + hidden * num_labels + num_labels


def read_model_config(folder: str) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"no config.json in '{folder}' to count the trainable parameters from;"
                          " pass --trainable-params (or --model with a local folder)")
    return json.loads(path.read_text())


def trainable_count(model) -> int:
    """What DP-SGD noises: every parameter that trains (LoRA, the head; FFA-LoRA's frozen A not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the server's check before round 1 ----------------------------------------------------------

def server_check(cfg: RunConfig, partitions: list[dict], num_clients: int,
                 trainable_params: int) -> tuple[int, str] | None:
    """``(log level, line)`` for the smallest client of a DP-SGD run, or None when there is
    nothing to predict (no DP-SGD, or client sizes the server does not know yet).

    The smallest client has the most noise per example; ``K`` counts the clients that train in
    each round; ``d`` is the server's model (under ``hetero-rank`` the global rank, at least any
    client's). A warning only: the run is the user's call, and the bound is optimistic anyway.
    """
    if not cfg.dp_enabled:
        return None
    sizes = [int(p["num_examples"]) for p in partitions if p.get("num_examples")]
    if not sizes:
        return None
    from fedtune.privacy.calibration import (  # imports Opacus: only when there is DP-SGD
        batch_size_for,
        calibrate,
        planned_steps,
        sample_rate,
    )
    from fedtune.privacy.label_counts import count_release

    n = min(sizes)
    try:
        # RDP, not the run's accountant: a prediction needs sigma to a few percent, and PRV's
        # search took minutes inside the simulated ServerApp (seconds on its own); RDP is
        # closed-form. The clients calibrate their real noise with the run's accountant.
        sigma = calibrate(dataclasses.replace(cfg, accountant="rdp"), n,
                          prior=count_release(cfg))
    except ConfigError as exc:
        return WARNING, f"signal-to-noise check skipped: {exc}"
    if sigma is None:
        return WARNING, ("signal-to-noise check skipped: the noisy label counts of "
                         "logit-adjustment leave no budget for DP-SGD; raise label-count-noise "
                         "(0 = auto) or set logit-adjustment = 0")
    batch = n * sample_rate(n, batch_size_for(cfg, n))
    steps = planned_steps(cfg, n)
    clients = max(1, round(cfg.fraction_train * num_clients))
    figures = dict(batch_size=batch, noise_multiplier=sigma, trainable_params=trainable_params,
                   clients=clients)
    run = run_snr(steps=steps, **figures)
    ratios = f"step {step_snr(**figures):.3g}, run {run:.3g}"
    setting = (f"smallest client {n} examples, expected batch {batch:.0f}, noise multiplier "
               f"{sigma:.3f}, {steps} steps; {clients} clients per round; {trainable_params:,} "
               "trainable parameters")
    if noise_dominated(run):
        return WARNING, (f"predicted signal-to-noise {ratios} is below "
                         f"{NOISE_DOMINATED_BELOW:g}: this run is likely noise-dominated "
                         f"({setting}); {ADVICE}")
    return INFO, (f"predicted signal-to-noise {ratios} (an optimistic bound; below "
                  f"{NOISE_DOMINATED_BELOW:g} is noise-dominated; {setting})")
