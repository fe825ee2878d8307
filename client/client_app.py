"""ClientApp: train the global adapter on local data with DP-SGD; evaluate it locally.

Under ``ffa`` the client keeps LoRA A frozen at the seed-shared init and sends only B and the head;
under ``hetero-rank`` it trains at its own rank (node config ``lora-r`` or the ``hetero-ranks``
rule) and tells the server that rank through a query message.
"""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit_canaries import with_canaries
from client.faults import fault_mod, planned_fault
from client.local_data import client_rows, ledger_fingerprint, rows_digest
from client.mods import client_clipping_mod
from client.noise_seed import round_seed
from client.rank import client_rank
from client.secure_aggregation import secure_aggregation_mod
from client.trainer import LocalResult, train_local
from fedtune.arrays import to_record, to_tensors
from fedtune.config import ConfigError, RunConfig, from_run_config
from fedtune.console import quiet_libraries
from fedtune.model.adapter import AdapterMismatchError, adapter_state, load_adapter_state
from fedtune.model.lora_layout import lora_a_digest, travelling_keys
from fedtune.privacy.budget import ClientBudget, HostPolicy, Release, client_key
from fedtune.privacy.label_counts import count_release, label_counts, logit_offset
from fedtune.privacy.ledger import Ledger
from fedtune.protocol import (
    ARRAYS,
    CONFIG,
    DATASET_SIZE,
    DELTA,
    EPSILON,
    LABEL_COUNTS,
    LABELS,
    LORA_A_SHA256,
    LORA_R,
    METRICS,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    OPTIMIZER_STATE,
    PARTITION_ID,
    PRIVACY,
    REFUSAL,
    ROUNDS_REFUSED,
    ROUNDS_TRAINED,
    RUN_KEY,
    SAMPLE_RATE,
    SERVER_ROUND,
    STEPS,
    TOTAL_STEPS,
    TRAIN_LOSS,
    UNIT_WEIGHT,
)
from fedtune.tasks.registry import task_for

# secure_aggregation_mod outermost: everything inside it sees fedtune's usual training message.
app = ClientApp(mods=[secure_aggregation_mod, fault_mod, client_clipping_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    rank = client_rank(cfg, context.node_config)
    pid, rows, pad_id, labels = _data(msg, context, cfg)
    config = msg.content[CONFIG]
    own_rows, rows = rows, with_canaries(cfg, context, config, pid, rows, labels)
    server_round = int(config[SERVER_ROUND])
    run_key = str(config.get(RUN_KEY, context.run_id))
    charge_id = f"{run_key}/round-{server_round}"
    seed = round_seed(cfg, pid, server_round, charge_id, _ledger_dir(cfg, context))
    privacy = _privacy(cfg, context, config, pid, rows, labels, own_rows)
    kept = _kept_counts(context, privacy, run_key, len(labels))
    privacy.releases = [] if kept is not None else count_release(cfg)
    release = Release(msg.content[ARRAYS], config, seed, rank, rows_digest(rows))
    decision = privacy.admit(run_key, charge_id, release)
    if not decision.allowed:  # no update leaves the client; the reply says why
        context.state[PRIVACY] = privacy.state.to_record()
        metrics = _metrics(cfg, privacy, pid, rank, None, decision.epsilon_before)
        return _reply(msg, metrics, privacy, refusal=decision.reason)
    model = _model(msg, cfg, len(labels), "train", rank)
    broken = planned_fault(cfg.fault_injection, pid, server_round) == "no-noise"
    result = train_local(model, rows, pad_id, cfg, privacy.state, seed=seed,
                         optimizer_state=_moments(context, cfg), skip_noise=broken,
                         logit_offset=_logit_offset(cfg, context, privacy, run_key, rows,
                                                    len(labels), seed, kept))
    privacy.finish(result.steps)
    context.state[PRIVACY] = privacy.state.to_record()
    if result.optimizer_state:  # stays in this node's state; the reply carries the adapter only
        context.state[OPTIMIZER_STATE] = to_record(result.optimizer_state)
    weights = adapter_state(model)
    sent = {k: weights[k] for k in travelling_keys(weights, cfg.aggregation)}
    metrics = _metrics(cfg, privacy, pid, rank, result, privacy.epsilon)
    return _reply(msg, metrics, privacy, arrays=sent)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    if not cfg.client_evaluate:  # the run config's own check refuses this first; kept as a guard
        raise ConfigError("client evaluation releases metrics of this host's held-out rows "
                          "without DP; the run must set client-evaluate = true to ask for them")
    pid, rows, pad_id, labels = _data(msg, context, cfg, "eval")
    model = _model(msg, cfg, len(labels), "eval")
    metrics = task_for(cfg).evaluate(cfg, model, rows, pad_id, len(labels))
    record = MetricRecord({NUM_EXAMPLES: len(rows), **metrics, PARTITION_ID: pid})
    return Message(content=RecordDict({METRICS: record}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which LoRA rank this node trains at (``hetero-rank``), without loading
    any model or data."""
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    record = MetricRecord({LORA_R: client_rank(cfg, context.node_config),
                           PARTITION_ID: int(context.node_config.get(PARTITION_ID, -1))})
    return Message(content=RecordDict({METRICS: record}), reply_to=msg)


# --- the steps ------------------------------------------------------------------------------

def _data(msg: Message, context: Context, cfg: RunConfig, split: str = "train"):
    torch.set_num_threads(cfg.client_threads)
    labels = tuple(msg.content[CONFIG][LABELS])
    pid, rows, pad_id = client_rows(cfg, context.node_config, split, labels)
    return pid, rows, pad_id, labels


def _privacy(cfg: RunConfig, context: Context, config: ConfigRecord, pid: int,
             rows, labels: tuple[str, ...] = (), own_rows=None) -> ClientBudget:
    """This client's budget: its saved state (on a resumed run raised, never lowered, by the
    state the server checkpointed), its ledger on real hosts, and the host's own limits (node
    config ``max-epsilon``, ``max-delta``, ``require-dp``).

    ``rows`` are what it trains on (its size sets q); the ledger is keyed by ``own_rows``, its
    own records without the audit's canaries: a server that switches the audit on must not
    open a fresh ledger, and so a fresh budget, for the same records."""
    own_rows = rows if own_rows is None else own_rows
    ledger = _ledger(cfg, context, own_rows, labels) if cfg.dp_enabled else None
    return ClientBudget.open(cfg, context.state.get(PRIVACY), len(rows), ledger,
                             key=client_key(cfg, context.node_config, context.node_id, pid),
                             config=config, policy=HostPolicy.from_node_config(context.node_config))


def _moments(context: Context, cfg: RunConfig) -> dict | None:
    """The AdamW moments this node kept from its previous round of this run (``optimizer-state =
    keep``). Flower keeps ``context.state`` per node and run: across rounds in a simulation and
    on a real host's SuperNode; a resumed run is a new run and starts Adam afresh."""
    if cfg.optimizer_state != "keep" or OPTIMIZER_STATE not in context.state:
        return None
    return to_tensors(context.state[OPTIMIZER_STATE])


def _kept_counts(context: Context, privacy: ClientBudget, run_key: str,
                 num_labels: int) -> list[float] | None:
    """This run's label counts if this node drew them already: in its state, or (a restarted
    host, a resumed run) in its ledger. Counts of another label set are none: new ones are
    drawn, and so charged."""
    if LABEL_COUNTS in context.state:
        kept = list(context.state[LABEL_COUNTS]["counts"])
    else:
        kept = privacy.ledger.kept_counts(run_key) if privacy.ledger is not None else None
    return kept if kept is not None and len(kept) == num_labels else None


def _logit_offset(cfg: RunConfig, context: Context, privacy: ClientBudget, run_key: str, rows,
                  num_labels: int, seed: int, kept: list[float] | None) -> torch.Tensor | None:
    """tau x log(label prior) for ``logit-adjustment``, from counts drawn once per run (noisy
    under sample-level DP, admitted and charged with the round that draws them) and kept in
    this node's state and its ledger, never sent."""
    if not count_release(cfg):  # off, no labels, or no DP-SGD (nothing for it to correct)
        return None
    if kept is not None:
        counts = torch.tensor(kept, dtype=torch.float64)
    else:
        counts = label_counts(rows.labels, num_labels, cfg, seed)
        if privacy.ledger is not None:
            privacy.ledger.remember_counts(run_key, counts.tolist())
    context.state[LABEL_COUNTS] = ConfigRecord({"counts": [float(c) for c in counts]})
    return logit_offset(counts, cfg.logit_adjustment)


def _model(msg: Message, cfg: RunConfig, num_labels: int, split: str, rank: int | None = None):
    """A model holding the received adapter, at ``rank`` (this client's own under
    ``hetero-rank``) or the run's ``lora-r`` (evaluation scores the global adapter)."""
    model = task_for(cfg).build_model(dataclasses.replace(cfg, lora_r=rank or cfg.lora_r),
                                      num_labels)
    received = to_tensors(msg.content[ARRAYS])
    if split == "train" and cfg.aggregation == "ffa":
        _check_shared_a(model, str(msg.content[CONFIG].get(LORA_A_SHA256, "")))
        load_adapter_state(model, received,
                           expected_keys=travelling_keys(adapter_state(model), cfg.aggregation))
    else:
        load_adapter_state(model, received)
    return model


def _reply(msg: Message, metrics: MetricRecord, privacy: ClientBudget, *,
           arrays: dict | None = None, refusal: str | None = None) -> Message:
    """A trained round: the adapter, metrics and privacy state. A refusal: no arrays at all."""
    content = RecordDict({METRICS: metrics, PRIVACY: privacy.state.to_record()})
    if arrays is not None:
        content[ARRAYS] = to_record(arrays)
    if refusal is not None:
        content[REFUSAL] = ConfigRecord({"reason": refusal})
    return Message(content=content, reply_to=msg)


def _metrics(cfg: RunConfig, privacy: ClientBudget, pid: int, rank: int,
             result: LocalResult | None, eps: float) -> MetricRecord:
    """Everything a training reply says in numbers; ``result`` is None for a refusal.

    Under DP (``dp`` other than ``off``) no training loss is sent: it is computed on private
    batches before any noise, so it is no DP output and would leak outside epsilon. Every value
    here is listed in docs/privacy.md and in the privacy report."""
    state, n = privacy.state, privacy.n
    loss = {} if cfg.dp != "off" else {
        TRAIN_LOSS: result.train_loss if result is not None else 0.0}
    return MetricRecord({
        NUM_EXAMPLES: n if result is not None else 0,
        **loss,
        EPSILON: eps,
        DELTA: cfg.delta,
        NOISE_MULTIPLIER: state.noise_multiplier,
        SAMPLE_RATE: privacy.q,
        STEPS: result.steps if result is not None else 0,
        TOTAL_STEPS: state.total_steps,
        ROUNDS_TRAINED: state.rounds_trained,
        ROUNDS_REFUSED: state.rounds_refused,
        PARTITION_ID: pid,
        DATASET_SIZE: n,
        LORA_R: rank,
        UNIT_WEIGHT: 1 if result is not None else 0,
    })


def _check_shared_a(model, expected: str) -> None:
    """FFA-LoRA is exact only if this client's frozen A is the server's, bit for bit."""
    mine = lora_a_digest(adapter_state(model))
    if expected and mine != expected:
        raise AdapterMismatchError(
            f"FFA-LoRA: this client's frozen LoRA A (sha256 {mine[:12]}) differs from the "
            f"server's ({expected[:12]}); client and server must use the same seed, model and "
            "torch version"
        )


def _ledger_dir(cfg: RunConfig, context: Context) -> str:
    """On real hosts the node config names the ledger folder; in simulation the run config may."""
    return str(context.node_config.get("ledger-dir") or cfg.ledger_dir)


def _ledger(cfg: RunConfig, context: Context, rows, labels: tuple[str, ...]) -> Ledger | None:
    """The ledger of this client's database (a real host: its whole data file, whatever the
    run's seed or the host's holdout), in the host's ledger folder; None without one."""
    folder = _ledger_dir(cfg, context)
    if not folder:
        return None
    fp = ledger_fingerprint(cfg, context.node_config, rows, labels)
    return Ledger.open(folder, fp, len(rows))
