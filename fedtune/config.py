"""The one typed view of a run's settings, shared by the ServerApp and the ClientApp.

Flower hands both sides the same flat ``context.run_config`` (``[tool.flwr.app.config]`` plus any
``--run-config`` overrides). Everything downstream takes a :class:`RunConfig` instead, so that a bad
value fails here, naming the key and what is allowed, before any model or dataset is loaded.

Each field carries its own documentation and checks in its metadata (as PEFT's ``LoraConfig``
does): ``help`` (what it means), ``choices`` or a range (``min``/``max``, open or closed), or a
``check`` with its message. :func:`validate` enforces them and ``fedtune settings`` prints them;
``docs/settings.md`` is that output, and a test fails when the two drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TASKS = ("seq-cls", "causal-lm")
PROMPT_TEMPLATES = ("alpaca", "plain")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
POOLINGS = ("auto", "mean", "cls", "pooler")
BASE_DROPOUTS = ("auto", "off", "model")
OPTIMIZER_STATES = ("keep", "reset")
AGGREGATIONS = ("fedavg", "ffa", "hetero-rank")
SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi")
CLIENT_SELECTIONS = ("random", "cyclic")
DP_MODES = ("off", "sample", "client", "both")
CLIENT_DP_SIDES = ("server", "client")
SECURE_AGGREGATIONS = ("off", "secagg+")
ACCOUNTANTS = ("prv", "rdp")
LR_SCHEDULES = ("constant", "linear")
GRAD_SAMPLE_MODES = ("auto", "fused", "hooks", "functorch", "ghost")
DEVICES = ("auto", "cpu", "cuda")
PARTITIONERS = ("iid", "dirichlet", "pathological")
CLIENT_DATA = ("partition", "local")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATASET = "stanfordnlp/sst2"


class ConfigError(ValueError):
    """A run setting is invalid; the message names the key, the value and what is allowed."""


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            min: float | None = None, max: float | None = None, min_open: bool = False,
            max_open: bool = False, note: str = "", check: Callable[[Any], bool] | None = None,
            message: str = "", allowed: str = "") -> Any:
    """A :class:`RunConfig` field with its documentation and checks.

    ``help``: the meaning (Markdown). ``choices``: the allowed values. ``min``/``max`` (exclusive
    with ``min_open``/``max_open``): the range; floats must also be finite; ``note`` is added to
    the range's error message. ``check``: any other test of the value alone, failing with
    ``message``; ``allowed`` says the same in a few words for the settings table.
    """
    meta: dict[str, Any] = {"help": help}
    for name, value in (("choices", choices), ("min", min), ("max", max), ("check", check)):
        if value is not None:
            meta[name] = value
    meta.update(min_open=min_open, max_open=max_open, note=note, message=message,
                allowed=allowed)
    return field(default=default, metadata=meta)


_SEQ = "[Causal-LM instruction tuning](causal-lm.md)"


@dataclass(frozen=True)
class RunConfig:
    """Resolved, validated run settings. Field names are the run-config keys with ``-`` -> ``_``."""

    # --- model and data ---
    model: str = setting(
        DEFAULT_MODEL,
        "local folder or hub id of the base model (the default loads from its PyPI package, "
        "offline)",
        check=lambda v: bool(v.strip()), message="give a local folder or a hub id",
        allowed="non-empty")
    task: str = setting(
        "seq-cls",
        "task type: `seq-cls` (sequence classification) or `causal-lm` (instruction tuning of a "
        f"decoder, see {_SEQ})",
        choices=TASKS)
    prompt_template: str = setting(
        "alpaca",
        "`causal-lm`: how instruction (+ input) become the prompt: `alpaca` (the Stanford Alpaca "
        "template) or `plain` (instruction, input, each on its own line)",
        choices=PROMPT_TEMPLATES)
    precision: str = setting(
        "auto",
        "every task, training and evaluation: `auto` = on CUDA bf16 autocast with TF32 matmuls "
        "(`causal-lm` also loads the frozen base in bf16), on CPU fp32; `fp32`; `tf32` (fp32 "
        "with TF32 matmuls on CUDA; fp32 on CPU); `bf16` (bf16 autocast, also on CPU). LoRA and "
        "head weights stay fp32; per-sample gradients are clipped in fp32",
        choices=PRECISIONS)
    load_in_4bit: bool = setting(
        False,
        "`causal-lm`: 4-bit NF4 base weights (QLoRA); needs CUDA and `pip install bitsandbytes`")
    dataset: str = setting(
        DEFAULT_DATASET,
        "a folder with `train.jsonl` + `validation.jsonl` (or `.json`/`.csv`/`.parquet`), a single "
        "such file (10% held out for evaluation, by seed), or a hub id (one with only a training "
        "split gets the same 10% holdout)",
        check=lambda v: bool(v.strip()), message="give a local folder/file or a hub id",
        allowed="non-empty")
    text_column: str = setting(
        "",
        "text column; empty = first of `text`, `sentence`, `content`, `review`, `document`")
    label_column: str = setting(
        "label",
        "label column; labels may be ints or strings, the label set comes from the training split",
        check=bool, message="must name a column", allowed="non-empty")
    train_split: str = setting("train", "training split name (file stem in a folder)")
    eval_split: str = setting("validation", "evaluation split name (file stem in a folder)")
    max_length: int = setting(
        128,
        "truncation length in tokens; batches are padded to their longest row, not to this",
        min=8, max=8192)
    pooling: str = setting(
        "auto",
        "`seq-cls`: the feature the head classifies: `auto` = the base model's own pooling when "
        "it declares one (sentence-transformers' `modules.json`: mean or [CLS]), else `pooler` "
        "(the architecture's standard head, e.g. BERT's [CLS] -> dense -> tanh); `mean` (of the "
        "token states), `cls` ([CLS] token state). The head starts at zero",
        choices=POOLINGS)
    max_train_samples: int = setting(
        0, "rows of the (seed-shuffled) training split used in total, 0 = all", min=0)
    max_eval_samples: int = setting(
        0, "rows of the evaluation split used for central evaluation, 0 = all", min=0)

    # --- LoRA and aggregation ---
    lora_r: int = setting(
        8, "LoRA rank r (under `hetero-rank`: the global adapter's rank; keep it >= the largest "
        "client rank)", min=1)
    lora_alpha: float = setting(16.0, "LoRA scaling numerator (the scale is alpha / r)",
                                min=0, min_open=True)
    lora_dropout: float = setting(0.0, "LoRA dropout", min=0, max=1, max_open=True)
    base_dropout: str = setting(
        "auto",
        "dropout inside the base model while training: `model` = its own config (BERT: 0.1), "
        "`off` = none, `auto` = off under sample-level DP (`dp = sample | both`) when each "
        "client passes over its rows at most once (`local-epochs` x `planned-rounds` <= 1), "
        "else the model's own",
        choices=BASE_DROPOUTS)
    lora_targets: tuple[str, ...] = setting(
        ("query", "value"),
        "comma-separated module names that get LoRA; `auto` = the architecture's query/value "
        "projections (PEFT's table, by `model_type`: Llama/Qwen/Mistral `q_proj,v_proj`, GPT-2 "
        "`c_attn`, BERT `query,value`); with `task=causal-lm` the untouched default "
        "`query,value` also means `auto`",
        check=lambda v: len(v) > 0,
        message="name at least one module, e.g. 'query,value', or 'auto' for the model's own "
                "query/value projections",
        allowed="at least one name")
    aggregation: str = setting(
        "fedavg",
        "server aggregation: `fedavg` (weighted mean of every adapter tensor), `ffa` (FFA-LoRA: A "
        "frozen at a seed-shared init, only B + head trained and sent), `hetero-rank` (clients at "
        "their own ranks; exact mean of delta-W, re-factorised per client by truncated SVD); see "
        "[Aggregation](aggregation.md)",
        choices=AGGREGATIONS)
    hetero_ranks: tuple[str, ...] = setting(
        ("2", "4", "8"),
        "`hetero-rank` only: ranks cycled over partition ids (a node's own `lora-r` node config "
        "wins; empty = every client uses `lora-r`)",
        check=lambda v: all(r.isdigit() and int(r) >= 1 for r in v),
        message="give comma-separated integers >= 1, e.g. '2,4,8' (empty: every client uses "
                "lora-r)",
        allowed="integers >= 1")
    server_optimizer: str = setting(
        "none",
        "server step on the aggregated update: `none`, `fedavgm`, `fedadam`, `fedyogi` (Flower's "
        "update rules)",
        choices=SERVER_OPTIMIZERS)
    server_lr: float = setting(
        0.0,
        "server learning rate; 0 = the optimiser's default (1.0 for `fedavgm`, 0.01 for "
        "`fedadam`/`fedyogi`)",
        min=0)
    server_momentum: float = setting(
        0.9,
        "`fedavgm` momentum; beta1 of `fedadam`/`fedyogi` (beta2 = 0.99, tau = 1e-3 as in Flower)",
        min=0, max=1, max_open=True)
    proximal_mu: float = setting(0.0, "FedProx proximal weight mu on the client (0 = off)", min=0)
    max_update_norm: float = setting(
        0.0,
        "reject a reply whose update (reply minus what its node was sent) has an L2 norm above "
        "this; 0 = off",
        min=0)

    # --- federation and training ---
    num_server_rounds: int = setting(2, "federated rounds", min=1)
    fraction_train: float = setting(1.0, "fraction of clients sampled per round",
                                    min=0, min_open=True, max=1)
    client_selection: str = setting(
        "random",
        "which clients train each round: `random` (Flower's sampling) or `cyclic` (the connected "
        "nodes in id order, `fraction-train` of them per round, each round continuing where the "
        "last stopped, so every client gets the same number of turns; set `planned-rounds` to "
        "that number; for clients whose data look alike: label-skewed clients in turns swing "
        "the model)",
        choices=CLIENT_SELECTIONS)
    fraction_evaluate: float = setting(
        0.0,
        "fraction of clients asked for federated evaluation (central evaluation always runs); "
        "above 0 needs `client-evaluate = true`",
        min=0, max=1)
    client_evaluate: bool = setting(
        False,
        "allow client-side evaluation (`fraction-evaluate` > 0): each sampled client scores the "
        "global adapter on its own held-out rows and sends loss and accuracy **without DP**, "
        "outside epsilon (see [privacy](privacy.md#what-epsilon-covers-what-is-released-the-"
        "threat-model))")
    min_clients: int = setting(
        2, "minimum clients per round; fewer valid replies stops the run with an error", min=1)
    local_epochs: float = setting(
        0.5, "local passes over a client's data per round (fractions allowed)",
        min=0, min_open=True)
    batch_size: int = setting(
        0,
        "batch size; under DP the *expected* Poisson batch size; 0 = auto, from each client's "
        "size: the largest power of two from 16 to 256 that leaves at least 10 steps per epoch "
        "(256 for 2,560 rows or more, 64 for 673 or 1,090), then trimmed so that a round "
        "draws local-epochs of the data, not more (half an epoch: 241 for 6,735 rows, 57 for 673)",
        min=0, note=" (0 = auto, from each client's size)")
    micro_batch_size: int = setting(
        16,
        "rows per forward/backward: each batch is sorted by length and cut into chunks this "
        "size, each padded to its own longest row (same gradient, far less padding); 0 = whole "
        "batch",
        min=0, note=" (0 = the whole batch at once)")
    lr: float = setting(1e-2, "AdamW learning rate (LoRA tensors)", min=0, min_open=True)
    head_lr_scale: float = setting(1.0, "the task head's learning rate is `lr` times this",
                                   min=0, min_open=True)
    lr_schedule: str = setting(
        "linear",
        "`linear`: each client's rate decays to 0 over its planned steps of the whole run; "
        "`constant`",
        choices=LR_SCHEDULES)
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0)
    optimizer_state: str = setting(
        "keep",
        "`keep`: each client continues its AdamW moments from its previous round (kept on the "
        "client, never sent; post-processing of its DP outputs, so free in privacy); `reset`: "
        "a fresh AdamW every round",
        choices=OPTIMIZER_STATES)

    logit_adjustment: float = setting(
        2.0,
        "tau of the logit-adjusted loss under DP-SGD (`seq-cls`, `dp = sample | both`): each "
        "client trains on logits + tau x log(its label prior), from its own label counts under "
        "Gaussian noise (`label-count-noise`, accounted in its epsilon), so that the DP noise "
        "does not drown rare labels and, under label skew, the labels a client lacks; the "
        "logits then lean towards rare labels. Not applied without DP-SGD. 0 = off. See "
        "[Accuracy under DP](../README.md#accuracy-under-dp)",
        min=0)

    # --- privacy ---
    dp: str = setting(
        "sample",
        "`sample`: DP-SGD per client (record-level DP); `off`: the same training without DP; "
        "`client`: client-level DP-FedAvg only; `both`: the two together",
        choices=DP_MODES)
    target_epsilon: float = setting(
        8.0,
        "each client's total epsilon budget on its data (over the whole run, and across runs "
        "when a ledger is kept)",
        min=0, min_open=True)
    delta: float = setting(
        1e-5, "DP delta; must be below 1/(examples of the smallest client)",
        min=0, min_open=True, max=1, max_open=True,
        note=", and below 1/(examples per client)")
    max_grad_norm: float = setting(1.0, "per-sample gradient clipping norm C",
                                   min=0, min_open=True)
    grad_sample_mode: str = setting(
        "auto",
        "how per-sample gradients are clipped: `auto` (`fused` when every trainable tensor is in "
        "a Linear layer, as with LoRA and linear heads, else `hooks`), `fused` (fedtune's: per "
        "layer either materialised per-sample gradients or ghost norms, whichever costs less; "
        "no summed weight gradient), or Opacus's `hooks`, `functorch`, `ghost` (ghost "
        "clipping: norms only, two backward passes; `seq-cls` only)",
        choices=GRAD_SAMPLE_MODES)
    label_count_noise: float = setting(
        0.0,
        "std of the Gaussian noise on each label count a client draws once per run for "
        "`logit-adjustment` under `dp = sample | both` (one row changes one count by 1, so this "
        "is the mechanism's noise multiplier, composed into the client's epsilon); 0 = auto: "
        "3 x max(1, 8 / `target-epsilon`), which costs about 1% more DP-SGD noise at any budget",
        min=0, note=" (0 = auto)")
    accountant: str = setting("prv", "privacy accountant, `prv` or `rdp` (Opacus)",
                              choices=ACCOUNTANTS)
    planned_rounds: int = setting(
        0,
        "rounds the noise is calibrated for (0 = `num-server-rounds`); a client asked for more "
        "refuses once its budget is spent",
        min=0, note=" (0 = num-server-rounds)")
    reproducible_noise: bool = setting(
        False,
        "`false` (default): each client's DP noise comes from OS entropy, a stream apart from its "
        "seeded Poisson sampling, so nobody can regenerate it; `true`: the noise follows from "
        "`seed` too (tests and benchmarks only: anyone with the run folder can regenerate the "
        "noise and subtract it; the privacy report says so)")
    ledger_dir: str = setting(
        "",
        "folder for the clients' on-disk privacy ledgers in a simulation (on real hosts: "
        "node-config `ledger-dir`); empty = no ledger")
    client_noise_multiplier: float = setting(
        1.0, "DP-FedAvg noise multiplier z (`dp` = `client` or `both`)", min=0, min_open=True)
    client_clipping_norm: float = setting(
        1.0, "DP-FedAvg clipping norm of each client's update", min=0, min_open=True)
    client_dp_side: str = setting(
        "server",
        "who clips the updates: `server` or `client` (Flower's `...ServerSideFixedClipping` / "
        "`...ClientSideFixedClipping`)",
        choices=CLIENT_DP_SIDES)
    secure_aggregation: str = setting(
        "off",
        "`secagg+`: the server learns only the weighted sum of the clients' updates (Flower's "
        "SecAgg+ protocol over quantised updates); `off`. See "
        "[secure aggregation](privacy.md#secure-aggregation)",
        choices=SECURE_AGGREGATIONS)
    secagg_num_shares: float = setting(
        1.0,
        "SecAgg+: clients each one shares its secrets with; a fraction of the sampled clients "
        "when <= 1, else a count",
        min=0, min_open=True)
    secagg_reconstruction_threshold: float = setting(
        0.67,
        "SecAgg+: shares needed to unmask a dropped client; a fraction of the shares when <= 1, "
        "else a count; the round fails below it",
        min=0, min_open=True)
    secagg_clipping_range: float = setting(
        1.0,
        "SecAgg+: each update value (reply minus what was sent) must lie in [-range, range]; "
        "values outside are clipped to it and counted in the report",
        min=0, min_open=True)
    secagg_quantization_range: int = setting(
        4194304, "SecAgg+: integer levels of the quantised range (2^22)", min=2)
    secagg_max_weight: float = setting(
        0.0,
        "SecAgg+: the largest client weight (its `num-examples`; 1 under client-level DP); the "
        "quantisation error grows with it, so keep it tight; 0 = auto (the largest partition in "
        "a simulation; real hosts must set it); a client with more fails the round",
        min=0, note=" (0 = auto)")
    audit_canaries: int = setting(
        0,
        "empirical privacy audit (one-run, sample level): `m` canary records, each put into "
        "client `audit-client`'s training rows with probability 1/2 by a secret coin; after the "
        "run the final model is scored on them and `privacy/audit.json` gets an epsilon lower "
        "bound (see [the audit](privacy.md#empirical-privacy-audit)); 0 = off; `seq-cls` only",
        min=0, check=lambda v: v == 0 or v >= 10, message="use 0 (off) or at least 10 canaries",
        allowed="0, or >= 10", note=" (0 = off)")
    audit_client: int = setting(
        0, "partition id of the client whose rows get the audit's canaries", min=0)
    audit_dir: str = setting(
        "",
        "where the audit client keeps the canaries' secret coins; empty = `audit/` in the run "
        "folder (simulation; on real hosts: node config `audit-dir`)")
    audit_canary_clients: int = setting(
        0,
        "client-level audit (`dp` = `client` or `both`): this many canary clients, each "
        "sampled like a real client and sending one fixed random direction, plus as many "
        "never-sent directions; the final model delta's cosines estimate epsilon; 0 = off",
        min=0, check=lambda v: v == 0 or v >= 2, message="use 0 (off) or at least 2",
        allowed="0, or >= 2", note=" (0 = off)")

    # --- client data and partitions ---
    client_data: str = setting(
        "partition",
        "where clients get their rows: `partition` (a share of `dataset`, by node config "
        "`partition-id`/`num-partitions`: simulation) or `local` (each node's own node-config "
        "`data-path`: real hosts; `dataset` is then only the server's evaluation set and label "
        "list); see [Run on real hosts](real-hosts.md)",
        choices=CLIENT_DATA)
    partitioner: str = setting(
        "iid",
        "`iid`, `dirichlet` (by label, `dirichlet-alpha`), `pathological` "
        "(`classes-per-client`); `causal-lm` data has no labels: `iid` only",
        choices=PARTITIONERS)
    dirichlet_alpha: float = setting(0.5, "Dirichlet concentration; smaller is more skewed",
                                     min=0, min_open=True)
    classes_per_client: int = setting(1, "labels per client for `pathological`", min=1)

    # --- the run ---
    seed: int = setting(
        42,
        "seeds shuffling, partitions, initial adapter, client and Poisson sampling (and the DP "
        "noise only with `reproducible-noise`)", min=0)
    output_dir: str = setting(
        "",
        "run folder; empty = `runs/<timestamp>`; an existing run is never overwritten (use "
        "`resume`)")
    resume: bool = setting(
        False,
        "continue the run in `output-dir` from its last intact checkpoint (see "
        "[Failures and resuming](outputs-and-resume.md#failures-and-resuming))")
    round_timeout: float = setting(
        3600.0,
        "seconds the server waits for a round's replies; a client that has not replied by then "
        "is recorded in `failures`",
        min=0, min_open=True)
    fault_injection: str = setting(
        "",
        "testing only: `'<partition>:<round>:<raise|garbage|hang|no-noise>'` items make those "
        "clients fail on purpose (`*` = every round; `no-noise` skips the DP noise while the "
        "accounting goes on: a broken-DP client for the audit, simulations only) (see "
        "[Failures and resuming](outputs-and-resume.md#failures-and-resuming))",
        check=lambda v: all(re.fullmatch(r"\d+:(\d+|\*):(raise|garbage|hang|no-noise)", x.strip())
                            for x in v.split(",") if x.strip()),
        message="give '<partition>:<round>:<raise|garbage|hang|no-noise>' items separated by "
                "commas (round * = every round), "
                "e.g. '1:2:raise' (empty = no faults; for testing only)",
        allowed="`P:R:kind` items")
    eval_batch_size: int = setting(128, "batch size of central evaluation", min=1)
    client_threads: int = setting(
        1, "torch threads per client (one simulated client per CPU is fastest)", min=1)
    device: str = setting(
        "auto",
        "`auto` (a GPU when the process sees one, else the CPU), `cpu` or `cuda`; simulated "
        "clients see a GPU only with `client-resources-num-gpus` > 0 (`--gpus-per-client` for "
        "the launcher)",
        choices=DEVICES)

    # ``x-`` keys: free for experiments, recorded in config.json, read by nothing in fedtune.
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
        """Settings under their run-config key names, as written to ``config.json``, followed by
        the run's ``x-`` keys, so that an experiment's notes are recorded with it."""
        out: dict[str, Any] = {}
        for key, f in _FIELDS.items():
            out[key] = _plain(getattr(self, f.name))
        out.update(self.extra)
        return out


_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunConfig) if f.name != "extra"}

# Section headings of the settings table, at the first key of each section.
SECTIONS = {
    "model": "Model and data",
    "lora-r": "LoRA and aggregation",
    "num-server-rounds": "Federation and training",
    "dp": "Privacy",
    "client-data": "Client data and partitions",
    "seed": "The run",
}

# What people coming from other tools type, and what it is called here. Underscores and case are
# normalised first (``learning_rate`` is ``learning-rate``); close misspellings of a key or of an
# alias are caught by difflib.
ALIASES: dict[str, tuple[str, ...]] = {
    # Hugging Face Trainer / PEFT
    "learning-rate": ("lr",),
    "num-train-epochs": ("local-epochs",),
    "per-device-train-batch-size": ("batch-size",),
    "train-batch-size": ("batch-size",),
    "per-device-eval-batch-size": ("eval-batch-size",),
    "model-name-or-path": ("model",),
    "model-name": ("model",),
    "base-model": ("model",),
    "dataset-name": ("dataset",),
    "data": ("dataset",),
    "max-seq-length": ("max-length",),
    "r": ("lora-r",),
    "rank": ("lora-r",),
    "lora-rank": ("lora-r",),
    "alpha": ("lora-alpha", "dirichlet-alpha"),
    "dropout": ("lora-dropout",),
    "target-modules": ("lora-targets",),
    "lora-target-modules": ("lora-targets",),
    "bf16": ("precision",),
    "fp16": ("precision",),
    "torch-dtype": ("precision",),
    "load-in-4-bit": ("load-in-4bit",),
    "qlora": ("load-in-4bit",),
    "scheduler": ("lr-schedule",),
    "lr-scheduler-type": ("lr-schedule",),
    "output": ("output-dir",),
    "seed-value": ("seed",),
    # Flower
    "rounds": ("num-server-rounds",),
    "num-rounds": ("num-server-rounds",),
    "server-rounds": ("num-server-rounds",),
    "epochs": ("local-epochs",),
    "local-epoch": ("local-epochs",),
    "fraction-fit": ("fraction-train",),
    "fraction-eval": ("fraction-evaluate",),
    "min-fit-clients": ("min-clients",),
    "min-train-clients": ("min-clients",),
    "min-available-clients": ("min-clients",),
    "min-train-nodes": ("min-clients",),
    "strategy": ("aggregation",),
    "server-learning-rate": ("server-lr",),
    "eta": ("server-lr",),
    "momentum": ("server-momentum",),
    "mu": ("proximal-mu",),
    "timeout": ("round-timeout",),
    "partition-by": ("partitioner",),
    # Opacus / DP-SGD
    "epsilon": ("target-epsilon",),
    "eps": ("target-epsilon",),
    "target-eps": ("target-epsilon",),
    "target-delta": ("delta",),
    "max-norm": ("max-grad-norm",),
    "clipping-norm": ("max-grad-norm", "client-clipping-norm"),
    "l2-norm-clip": ("max-grad-norm",),
    "noise-multiplier": ("target-epsilon", "client-noise-multiplier"),
    "sigma": ("target-epsilon", "client-noise-multiplier"),
    "max-physical-batch-size": ("micro-batch-size",),
    "physical-batch-size": ("micro-batch-size",),
    "epochs-planned": ("planned-rounds",),
    "privacy": ("dp",),
    "dp-mode": ("dp",),
}

# Federation settings people try to pass as run settings.
FEDERATION_KEYS = ("num-clients", "num-supernodes", "clients", "num-partitions",
                   "client-resources-num-cpus", "client-resources-num-gpus")


def _plain(value: Any) -> Any:
    """A field's value as the run config spells it (tuples are comma-separated strings)."""
    return ",".join(value) if isinstance(value, tuple) else value


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


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


def _number(x: float) -> str:
    """1e-05 -> 1e-5, 0.0 -> 0, 8192 -> 8192."""
    text = f"{x:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def range_text(meta: Mapping[str, Any]) -> str:
    """The allowed range from a field's metadata, e.g. '> 0', '>= 1', '(0, 1]'; '' if none."""
    low, high = meta.get("min"), meta.get("max")
    if low is None and high is None:
        return ""
    if high is None:
        return f"{'>' if meta['min_open'] else '>='} {_number(low)}"
    if low is None:
        return f"{'<' if meta['max_open'] else '<='} {_number(high)}"
    return (f"{'(' if meta['min_open'] else '['}{_number(low)}, {_number(high)}"
            f"{')' if meta['max_open'] else ']'}")


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    low, high = meta.get("min"), meta.get("max")
    if low is not None and not (value > low if meta["min_open"] else value >= low):
        return False
    return high is None or (value < high if meta["max_open"] else value <= high)


def _check_field(key: str, f: dataclasses.Field, value: Any) -> None:
    """The checks a field's metadata declares."""
    meta = f.metadata
    shown = _plain(value)
    if "choices" in meta:
        _check(value in meta["choices"], key, shown,
               "allowed values are " + " | ".join(meta["choices"]))
    text = range_text(meta)
    if text:
        wording = f"must be in {text}" if text[0] in "[(" else f"must be {text}"
        _check(_in_range(value, meta), key, shown, wording + meta["note"])
    if "check" in meta:
        _check(bool(meta["check"](value)), key, shown, meta["message"])


def validate(cfg: RunConfig) -> RunConfig:
    """Raise :class:`ConfigError` for the first invalid setting; return ``cfg`` unchanged.

    First each field's own checks (its metadata), then the rules that tie settings together.
    """
    for key, f in _FIELDS.items():
        _check_field(key, f, getattr(cfg, f.name))
    causal = cfg.task == "causal-lm"
    _check(causal or not cfg.load_in_4bit, "load-in-4bit", cfg.load_in_4bit,
           "4-bit base weights (QLoRA) are for task = 'causal-lm'; set load-in-4bit = false")
    _check(not causal or cfg.partitioner == "iid", "partitioner", cfg.partitioner,
           "task = 'causal-lm' has no labels to split by; use partitioner = 'iid'")
    _check(cfg.grad_sample_mode != "ghost" or cfg.task == "seq-cls", "grad-sample-mode",
           cfg.grad_sample_mode, "ghost clipping is wired for task = 'seq-cls' only; use "
           "'hooks' or 'functorch' with causal-lm")
    _check(not cfg.client_dp_enabled or cfg.aggregation == "fedavg", "dp", cfg.dp,
           "client-level DP (client | both) clips whole-adapter updates, so it needs "
           "aggregation = 'fedavg'")
    _check(cfg.fraction_evaluate == 0 or cfg.client_evaluate, "fraction-evaluate",
           cfg.fraction_evaluate,
           "client evaluation releases metrics of each client's private held-out rows without "
           "DP; set client-evaluate = true to allow it, or fraction-evaluate = 0")
    # A run config comes from the server: a real host must never be told to drop its noise.
    _check(cfg.client_data == "partition" or "no-noise" not in cfg.fault_injection,
           "fault-injection", cfg.fault_injection,
           "the 'no-noise' fault trains without DP noise while reporting epsilon: it exists for "
           "simulated tests of the privacy audit, and a host with its own data (client-data = "
           "'local') refuses it; remove it from fault-injection")
    if cfg.secure_aggregation != "off":
        _check_secure_aggregation(cfg)
    _check(cfg.audit_canaries == 0 or cfg.task == "seq-cls", "audit-canaries",
           cfg.audit_canaries, "the canary audit scores labelled records: it needs task = "
           "'seq-cls'; set audit-canaries = 0")
    _check(cfg.client_selection == "random" or not cfg.client_dp_enabled, "client-selection",
           cfg.client_selection, "client-level DP's accounting assumes each round samples the "
           "clients at random (its amplification by sampling); a fixed cyclic order has none. "
           "Use client-selection = 'random' with dp = 'client' or 'both'")
    _check(cfg.audit_canary_clients == 0 or cfg.client_dp_enabled, "audit-canary-clients",
           cfg.audit_canary_clients, "the client-level audit measures DP-FedAvg: it needs "
           "dp = 'client' or 'both'; set audit-canary-clients = 0")
    _check(not cfg.resume or bool(cfg.output_dir.strip()), "resume", cfg.resume,
           "resume = true needs 'output-dir' set to the run folder to continue")
    return cfg


def _check_secure_aggregation(cfg: RunConfig) -> None:
    """Settings that need each client's update in clear cannot run under secure aggregation."""
    key, value = "secure-aggregation", cfg.secure_aggregation
    _check(cfg.aggregation in ("fedavg", "ffa"), key, value,
           f"aggregation = '{cfg.aggregation}' needs each client's update (it re-factorises "
           "them one by one); use aggregation = 'fedavg' or 'ffa', or secure-aggregation = 'off'")
    _check(cfg.max_update_norm == 0, key, value,
           "max-update-norm validates each client's update, which the server never sees under "
           "secure aggregation; set max-update-norm = 0 or secure-aggregation = 'off'")
    _check(not cfg.client_dp_enabled or cfg.client_dp_side == "client", key, value,
           "client-level DP with client-dp-side = 'server' clips each update on the server; "
           "use client-dp-side = 'client' (clients clip before masking)")
    _check(cfg.client_data == "partition" or cfg.client_dp_enabled or cfg.secagg_max_weight > 0,
           "secagg-max-weight", cfg.secagg_max_weight,
           "with client-data = 'local' the server cannot know the clients' sizes: set "
           "secagg-max-weight to the largest num-examples a client may have")
    _check(cfg.min_clients >= 2, key, value,
           "secure aggregation needs at least 2 clients per round; set min-clients >= 2")
    _check(cfg.secagg_quantization_range < 2**32 // max(int(cfg.secagg_num_shares), 1), key,
           value, "secagg-quantization-range times secagg-num-shares must stay below the "
           "modulus 2^32")


def suggest(key: str) -> list[str]:
    """Run-config keys someone who typed ``key`` probably meant, best first."""
    norm = key.strip().lower().replace("_", "-")
    if norm in _FIELDS:
        return [norm]
    if norm in ALIASES:
        return list(ALIASES[norm])
    out: list[str] = []
    for match in difflib.get_close_matches(norm, [*_FIELDS, *ALIASES], n=3, cutoff=0.75):
        for name in ALIASES.get(match, (match,)):
            if name not in out:
                out.append(name)
    return out


def unknown_key_message(key: str) -> str:
    """'unknown run-config key ...' with a suggestion, or where the setting really lives."""
    message = f"unknown run-config key '{key}'"
    norm = key.strip().lower().replace("_", "-")
    if norm in FEDERATION_KEYS:
        return (f"{message}: the number of clients and their resources are federation "
                "settings: --federation-config 'num-supernodes=N client-resources-num-cpus=C' "
                "(python -m simulations.launch: --num-clients N --cpus-per-client C); the "
                "fewest clients a round needs is 'min-clients'")
    close = suggest(key)
    if close:
        names = [repr(k) for k in close]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return f"{message}; did you mean {listed}?"
    return (f"{message}; `fedtune settings` lists every key (keys starting with 'x-' are free "
            "for experiments)")


def planned_rounds(cfg: RunConfig) -> int:
    """Every round is planned for (any round may sample this client) unless ``planned-rounds``."""
    return cfg.planned_rounds or cfg.num_server_rounds


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
            raise ConfigError(unknown_key_message(key))
        values[f.name] = _coerce(key, raw, _default(f))
    return validate(RunConfig(**values, extra=extra))


def from_stored(config: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a finished run from its ``config.json``, which also records
    what the server found (``num-clients``, ``labels``, ...): only settings are read."""
    return from_run_config({k: v for k, v in config.items()
                            if k in _FIELDS or k.startswith("x-")})


def describe() -> list[dict[str, Any]]:
    """Every setting as the docs show it: key, default (as the run config spells it), allowed
    values or range, meaning, and the section it opens (if any)."""
    rows = []
    for key, f in _FIELDS.items():
        meta = f.metadata
        if "choices" in meta:
            allowed = " | ".join(meta["choices"])
        elif range_text(meta):
            allowed = range_text(meta)
        elif isinstance(_default(f), bool):
            allowed = "true | false"
        else:
            allowed = meta["allowed"]
        rows.append({"key": key, "default": _plain(_default(f)), "allowed": allowed,
                     "help": meta["help"], "section": SECTIONS.get(key, "")})
    return rows
