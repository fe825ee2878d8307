"""Server optimisers (FedAvgM, FedAdam, FedYogi) as a step on the aggregated update.

Flower ships these as FedAvg subclasses that take the pseudo-gradient between the ArrayRecord they
sent and the one their parent's ``aggregate_train`` returned. That composes with plain FedAvg, but
not with the LoRA strategies here: under ``hetero-rank`` the arrays that travel are per-client SVD
factors, which are defined only up to rotation and sign, so their difference between rounds is not
an update at all; the update lives in delta-W = B·A. Each strategy therefore hands its optimiser
the quantity it really averages (all adapter tensors for ``fedavg``; B and the head for ``ffa``;
delta-W per module and the head for ``hetero-rank``), and the step below applies Flower's update
rules to it, formula for formula (``tests/test_server_optimizers.py`` checks them against
Flower's own strategies on a FedAvg round).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedtune.arrays import Arrays
from fedtune.config import RunConfig

DEFAULT_LR = {"fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2}
BETA_2 = 0.99  # Flower's default for FedAdam and FedYogi
TAU = 1e-3  # Flower's default adaptivity


class ServerOptimizer:
    """No server optimiser: the new global state is the weighted mean of the replies."""

    name = "none"

    def step(self, server_round: int, current: Mapping[str, np.ndarray],
             mean: Mapping[str, np.ndarray]) -> Arrays:
        """New global state from the current one and this round's weighted mean."""
        return dict(mean)

    def state(self) -> Arrays:
        """What a resumed run needs to continue exactly (momentum, moments), keyed flat."""
        return {f"{slot}/{k}": v for slot in self.slots
                if (d := getattr(self, slot)) is not None for k, v in d.items()}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        for slot in self.slots:
            part = {k.removeprefix(slot + "/"): np.asarray(v) for k, v in arrays.items()
                    if k.startswith(slot + "/")}
            setattr(self, slot, part or None)

    slots: tuple[str, ...] = ()


def _delta(current: Mapping[str, np.ndarray], mean: Mapping[str, np.ndarray]) -> Arrays:
    if set(current) != set(mean):
        raise ValueError("server optimiser: the aggregated tensors changed keys between rounds")
    return {k: np.asarray(mean[k], dtype=np.float64) - np.asarray(current[k], dtype=np.float64)
            for k in mean}


def _like(values: Arrays, reference: Mapping[str, np.ndarray]) -> Arrays:
    return {k: v.astype(np.asarray(reference[k]).dtype, copy=False) for k, v in values.items()}


class FedAvgM(ServerOptimizer):
    """Hsu et al. 2019, as Flower's ``FedAvgM``: SGD with momentum on old - mean."""

    name = "fedavgm"
    slots = ("velocity",)

    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum
        self.velocity: Arrays | None = None

    def step(self, server_round, current, mean):
        grad = {k: -d for k, d in _delta(current, mean).items()}
        if self.momentum > 0.0:
            if self.velocity is None:
                self.velocity = grad
            else:
                self.velocity = {k: self.momentum * self.velocity[k] + g for k, g in grad.items()}
            grad = self.velocity
        new = {k: np.asarray(current[k], dtype=np.float64) - self.lr * g for k, g in grad.items()}
        return _like(new, mean)


class FedAdam(ServerOptimizer):
    """Reddi et al. 2021, as Flower's ``FedAdam`` (with its bias-corrected step size)."""

    name = "fedadam"
    slots = ("m", "v")

    def __init__(self, lr: float, beta_1: float, beta_2: float = BETA_2, tau: float = TAU):
        self.lr, self.beta_1, self.beta_2, self.tau = lr, beta_1, beta_2, tau
        self.m: Arrays | None = None
        self.v: Arrays | None = None

    def _moments(self, delta: Arrays) -> None:
        if self.m is None:
            self.m = {k: np.zeros_like(d) for k, d in delta.items()}
        self.m = {k: self.beta_1 * self.m[k] + (1 - self.beta_1) * d for k, d in delta.items()}
        if self.v is None:
            self.v = {k: np.zeros_like(d) for k, d in delta.items()}
        self.v = self._second_moment(delta)

    def _second_moment(self, delta: Arrays) -> Arrays:
        return {k: self.beta_2 * self.v[k] + (1 - self.beta_2) * d**2 for k, d in delta.items()}

    def _lr(self, server_round: int) -> float:
        return (self.lr * np.sqrt(1 - self.beta_2 ** (server_round + 1.0))
                / (1 - self.beta_1 ** (server_round + 1.0)))

    def step(self, server_round, current, mean):
        self._moments(_delta(current, mean))
        lr = self._lr(server_round)
        new = {k: np.asarray(current[k], dtype=np.float64)
               + lr * self.m[k] / (np.sqrt(self.v[k]) + self.tau) for k in mean}
        return _like(new, mean)


class FedYogi(FedAdam):
    """Reddi et al. 2021, as Flower's ``FedYogi``: additive second moment, no bias correction."""

    name = "fedyogi"

    def _second_moment(self, delta: Arrays) -> Arrays:
        return {k: self.v[k] - (1 - self.beta_2) * d**2 * np.sign(self.v[k] - d**2)
                for k, d in delta.items()}

    def _lr(self, server_round: int) -> float:
        return self.lr


def build_server_optimizer(cfg: RunConfig) -> ServerOptimizer:
    """``server-lr`` 0 picks the optimiser's default: 1.0 for FedAvgM (plain FedAvg steps), 1e-2
    for FedAdam/FedYogi (Flower's 0.1 moves every LoRA coordinate by about 0.07 in the first
    round, more than a whole round of local training does)."""
    name = cfg.server_optimizer
    if name == "none":
        return ServerOptimizer()
    lr = cfg.server_lr or DEFAULT_LR[name]
    if name == "fedavgm":
        return FedAvgM(lr=lr, momentum=cfg.server_momentum)
    if name == "fedadam":
        return FedAdam(lr=lr, beta_1=cfg.server_momentum)
    return FedYogi(lr=lr, beta_1=cfg.server_momentum)
