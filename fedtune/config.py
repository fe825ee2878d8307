"""The one typed view of a run's settings, shared by the ServerApp and the ClientApp.

Flower hands both sides the same flat ``context.run_config`` (``[tool.flwr.app.config]`` plus any
``--run-config`` overrides). Everything downstream takes a :class:`RunConfig` instead, so that a bad
value fails here, naming the key and what is allowed, before any model or dataset is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TASKS = ("seq-cls", "causal-lm")
PROMPT_TEMPLATES = ("alpaca", "plain")
PRECISIONS = ("auto", "fp32", "bf16")
AGGREGATIONS = ("fedavg", "ffa", "hetero-rank")
SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi")
DP_MODES = ("off", "sample", "client", "both")
CLIENT_DP_SIDES = ("server", "client")
ACCOUNTANTS = ("prv", "rdp")
LR_SCHEDULES = ("constant", "linear")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
DEVICES = ("auto", "cpu", "cuda")
PARTITIONERS = ("iid", "dirichlet", "pathological")
CLIENT_DATA = ("partition", "local")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATASET = "stanfordnlp/sst2"


class ConfigError(ValueError):
    """A run setting is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """Resolved, validated run settings. Field names are the run-config keys with ``-`` -> ``_``."""

    model: str = DEFAULT_MODEL
    task: str = "seq-cls"
    prompt_template: str = "alpaca"
    precision: str = "auto"
    load_in_4bit: bool = False
    dataset: str = DEFAULT_DATASET
    text_column: str = ""
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = "validation"
    max_length: int = 128
    max_train_samples: int = 0
    max_eval_samples: int = 0
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    aggregation: str = "fedavg"
    hetero_ranks: tuple[str, ...] = ("2", "4", "8")
    server_optimizer: str = "none"
    server_lr: float = 0.0
    server_momentum: float = 0.9
    proximal_mu: float = 0.0
    max_update_norm: float = 0.0
    num_server_rounds: int = 2
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_clients: int = 2
    local_epochs: float = 0.5
    batch_size: int = 256
    micro_batch_size: int = 16
    lr: float = 1e-2
    head_lr_scale: float = 1.0
    lr_schedule: str = "linear"
    weight_decay: float = 0.0
    dp: str = "sample"
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "hooks"
    accountant: str = "prv"
    planned_rounds: int = 0
    ledger_dir: str = ""
    client_noise_multiplier: float = 1.0
    client_clipping_norm: float = 1.0
    client_dp_side: str = "server"
    client_data: str = "partition"
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 1
    seed: int = 42
    output_dir: str = ""
    resume: bool = False
    round_timeout: float = 3600.0
    fault_injection: str = ""
    eval_batch_size: int = 128
    client_threads: int = 1
    device: str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def dp_enabled(self) -> bool:
        """Sample-level DP-SGD on each client (``sample`` or ``both``)."""
        return self.dp in ("sample", "both")

    @property
    def client_dp_enabled(self) -> bool:
        """Client-level DP-FedAvg on the server (``client`` or ``both``)."""
        return self.dp in ("client", "both")

    @property
    def rank_rule(self) -> tuple[int, ...]:
        """``hetero-ranks`` as integers (validated), cycled over partition ids."""
        return tuple(int(r) for r in self.hetero_ranks)

    def to_dict(self) -> dict[str, Any]:
        """Settings under their run-config key names, as written to ``config.json``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            out[f.name.replace("_", "-")] = value
        return out


_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunConfig) if f.name != "extra"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert one raw run-config value to the type of its default (TOML/CLI give mixed types)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(s.strip() for s in items if str(s).strip())
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if not isinstance(default, tuple) else "comma-separated list"
        raise ConfigError(f"run-config key '{key}': expected {kind}, got {value!r}") from None


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"run-config key '{key}' = {value!r} is invalid: {allowed}")


def validate(cfg: RunConfig) -> RunConfig:
    """Raise :class:`ConfigError` for the first out-of-range setting; return ``cfg`` unchanged."""

    def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
        _check(value in allowed, key, value, "allowed values are " + " | ".join(allowed))

    def positive(key: str, value: float, strict: bool = True) -> None:
        ok = math.isfinite(value) and (value > 0 if strict else value >= 0)
        _check(ok, key, value, "must be " + ("> 0" if strict else ">= 0"))

    choice("task", cfg.task, TASKS)
    choice("prompt-template", cfg.prompt_template, PROMPT_TEMPLATES)
    choice("precision", cfg.precision, PRECISIONS)
    causal = cfg.task == "causal-lm"
    _check(causal or cfg.precision == "auto", "precision", cfg.precision,
           "only task = 'causal-lm' has a precision setting; leave it at 'auto' for seq-cls")
    _check(causal or not cfg.load_in_4bit, "load-in-4bit", cfg.load_in_4bit,
           "4-bit base weights (QLoRA) are for task = 'causal-lm'; set load-in-4bit = false")
    _check(not causal or cfg.partitioner == "iid", "partitioner", cfg.partitioner,
           "task = 'causal-lm' has no labels to split by; use partitioner = 'iid'")
    choice("aggregation", cfg.aggregation, AGGREGATIONS)
    choice("server-optimizer", cfg.server_optimizer, SERVER_OPTIMIZERS)
    choice("dp", cfg.dp, DP_MODES)
    choice("accountant", cfg.accountant, ACCOUNTANTS)
    choice("grad-sample-mode", cfg.grad_sample_mode, GRAD_SAMPLE_MODES)
    _check(cfg.grad_sample_mode != "ghost" or cfg.task == "seq-cls", "grad-sample-mode",
           cfg.grad_sample_mode, "ghost clipping is wired for task = 'seq-cls' only; use "
           "'hooks' or 'functorch' with causal-lm")
    choice("device", cfg.device, DEVICES)
    choice("client-dp-side", cfg.client_dp_side, CLIENT_DP_SIDES)
    _check(cfg.planned_rounds >= 0, "planned-rounds", cfg.planned_rounds,
           "must be >= 0 (0 = num-server-rounds)")
    positive("client-noise-multiplier", cfg.client_noise_multiplier)
    _check(not cfg.client_dp_enabled or cfg.aggregation == "fedavg", "dp", cfg.dp,
           "client-level DP (client | both) clips whole-adapter updates, so it needs "
           "aggregation = 'fedavg'")
    positive("client-clipping-norm", cfg.client_clipping_norm)
    choice("client-data", cfg.client_data, CLIENT_DATA)
    choice("partitioner", cfg.partitioner, PARTITIONERS)
    _check(bool(cfg.model.strip()), "model", cfg.model, "give a local folder or a hub id")
    _check(bool(cfg.dataset.strip()), "dataset", cfg.dataset,
           "give a local folder/file or a hub id")
    _check(bool(cfg.label_column), "label-column", cfg.label_column, "must name a column")
    _check(8 <= cfg.max_length <= 8192, "max-length", cfg.max_length, "must be in [8, 8192]")
    positive("max-train-samples", cfg.max_train_samples, strict=False)
    positive("max-eval-samples", cfg.max_eval_samples, strict=False)
    _check(cfg.lora_r >= 1, "lora-r", cfg.lora_r, "must be an integer >= 1")
    positive("lora-alpha", cfg.lora_alpha)
    _check(0.0 <= cfg.lora_dropout < 1.0, "lora-dropout", cfg.lora_dropout, "must be in [0, 1)")
    _check(len(cfg.lora_targets) > 0, "lora-targets", ",".join(cfg.lora_targets),
           "name at least one module, e.g. 'query,value', or 'auto' for the "
           "model's own query/value projections")
    _check(all(r.isdigit() and int(r) >= 1 for r in cfg.hetero_ranks), "hetero-ranks",
           ",".join(cfg.hetero_ranks), "give comma-separated integers >= 1, e.g. '2,4,8' "
           "(empty: every client uses lora-r)")
    positive("server-lr", cfg.server_lr, strict=False)
    _check(0.0 <= cfg.server_momentum < 1.0, "server-momentum", cfg.server_momentum,
           "must be in [0, 1)")
    positive("proximal-mu", cfg.proximal_mu, strict=False)
    positive("max-update-norm", cfg.max_update_norm, strict=False)
    _check(cfg.num_server_rounds >= 1, "num-server-rounds", cfg.num_server_rounds, "must be >= 1")
    _check(0.0 < cfg.fraction_train <= 1.0, "fraction-train", cfg.fraction_train,
           "must be in (0, 1]")
    _check(0.0 <= cfg.fraction_evaluate <= 1.0, "fraction-evaluate", cfg.fraction_evaluate,
           "must be in [0, 1]")
    _check(cfg.min_clients >= 1, "min-clients", cfg.min_clients, "must be >= 1")
    positive("local-epochs", cfg.local_epochs)
    _check(cfg.batch_size >= 1, "batch-size", cfg.batch_size, "must be >= 1")
    _check(cfg.micro_batch_size >= 0, "micro-batch-size", cfg.micro_batch_size,
           "must be >= 0 (0 = the whole batch at once)")
    positive("lr", cfg.lr)
    positive("head-lr-scale", cfg.head_lr_scale)
    choice("lr-schedule", cfg.lr_schedule, LR_SCHEDULES)
    positive("weight-decay", cfg.weight_decay, strict=False)
    positive("target-epsilon", cfg.target_epsilon)
    _check(math.isfinite(cfg.delta) and 0.0 < cfg.delta < 1.0, "delta", cfg.delta,
           "must be in (0, 1), and below 1/(examples per client)")
    positive("max-grad-norm", cfg.max_grad_norm)
    positive("dirichlet-alpha", cfg.dirichlet_alpha)
    _check(cfg.classes_per_client >= 1, "classes-per-client", cfg.classes_per_client,
           "must be >= 1")
    _check(not cfg.resume or bool(cfg.output_dir.strip()), "resume", cfg.resume,
           "resume = true needs 'output-dir' set to the run folder to continue")
    positive("round-timeout", cfg.round_timeout)
    _check(all(re.fullmatch(r"\d+:\d+:(raise|garbage|hang)", x.strip())
               for x in cfg.fault_injection.split(",") if x.strip()),
           "fault-injection", cfg.fault_injection,
           "give '<partition>:<round>:<raise|garbage|hang>' items separated by commas, "
           "e.g. '1:2:raise' (empty = no faults; for testing only)")
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _check(cfg.eval_batch_size >= 1, "eval-batch-size", cfg.eval_batch_size, "must be >= 1")
    _check(cfg.client_threads >= 1, "client-threads", cfg.client_threads, "must be >= 1")
    return cfg


def from_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from Flower's ``context.run_config``.

    Unknown keys are rejected (a typo such as ``target-epsion`` must not silently fall back to the
    default) unless they start with ``x-``, kept in ``extra`` for experiments.
    """
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in run_config.items():
        if key.startswith("x-"):
            extra[key] = raw
            continue
        f = _FIELDS.get(key)
        if f is None:
            close = sorted(k for k in _FIELDS if k.split("-")[0] == key.split("-")[0])
            hint = f"; did you mean {', '.join(repr(k) for k in close)}?" if close else ""
            raise ConfigError(f"unknown run-config key '{key}'{hint}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[f.name] = _coerce(key, raw, default)
    return validate(RunConfig(**values, extra=extra))
