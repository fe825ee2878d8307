"""Everything the ServerApp does before round 1, as named steps: the federation, the run folder,
the initial model and evaluation set, the strategy, and (on ``resume``) where to continue from.

Each step fails with a :class:`ConfigError` naming the setting before any round starts.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from fedtune.arrays import to_record
from fedtune.config import ConfigError, RunConfig
from fedtune.data.partitioning import describe
from fedtune.model.adapter import adapter_state
from fedtune.model.build import load_tokenizer
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.calibration import check_delta, turns_warning
from fedtune.privacy.fused_clipping import resolve_grad_sample_mode
from fedtune.privacy.label_counts import check_count_release
from fedtune.privacy.signal_to_noise import server_check, trainable_count
from fedtune.protocol import LABELS, RESUME_PRIVACY, RUN_KEY
from fedtune.tasks.registry import Task, task_for
from server.local_clients import LocalClients
from server.resume import ResumePoint, check_settings, load_resume_point
from server.round_end import CentralEvaluation, RoundEnd
from strategies.registry import build_strategy, innermost


@dataclass
class PreparedRun:
    """What the round loop and the run's end need."""

    cfg: RunConfig
    task: Task
    splits: object  # fedtune.data.loading.Splits
    folder: RunFolder
    model: object  # the server's PEFT model: evaluates and saves each global adapter
    tokenizer: object
    strategy: object  # the strategy Flower drives (maybe wrapped for client-level DP)
    arrays: ArrayRecord  # the global adapter the first round starts from
    first_round: int
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    round_end: RoundEnd


def prepare_run(grid: Grid, cfg: RunConfig) -> PreparedRun:
    random.seed(cfg.seed)  # Flower samples clients with the global `random`
    check_count_release(cfg)  # label counts that alone spend the budget: fail before any output
    task = task_for(cfg)
    splits = task.load_splits(cfg)
    num_clients = wait_for_nodes(grid, cfg.min_clients)
    partitions = _partitions(cfg, splits, num_clients)
    folder = RunFolder.create(cfg)
    log(INFO, "run folder: %s", folder.root)
    model = task.seeded_model(cfg, splits.num_labels)
    point = _resume_point(cfg, folder, num_clients)
    if point is None:
        folder.write_config({**cfg.to_dict(), "output-dir": str(folder.root),
                             "num-clients": num_clients, "labels": list(splits.labels),
                             "dataset-source": splits.source, **task.settings(cfg, model, splits)})
    local = None
    if cfg.client_data == "local":
        local = LocalClients(list(grid.get_node_ids()), folder, splits.labels, splits.source)
        partitions = local.partitions
        if point is None:
            local.write()
    elif point is None:
        folder.write_partitions(partitions, splits.labels, splits.source)
    if snr := server_check(cfg, partitions, num_clients, trainable_count(model)):
        log(snr[0], "%s", snr[1])  # will DP-SGD's noise drown the run? said before round 1
    if turns := turns_warning(cfg, num_clients):
        log(WARNING, "%s", turns)
    if cfg.dp_enabled:  # an explicit 'fused' the model cannot take fails here, before round 1
        log(INFO, "per-sample clipping: %s",
            resolve_grad_sample_mode(cfg.grad_sample_mode, model))

    tokenizer = load_tokenizer(cfg)
    eval_set = task.encode(tokenizer, splits.eval, cfg)
    strategy = build_strategy(cfg, num_clients)
    inner = innermost(strategy)
    arrays = to_record(adapter_state(model))
    labels = list(splits.labels)
    train_config = ConfigRecord({LABELS: labels, RUN_KEY: str(folder.root)})
    first_round = 1
    if point is not None:
        first_round = _continue_from(point, folder, inner, train_config)
        if point.arrays:
            arrays = to_record(point.arrays)
    evaluation = CentralEvaluation(cfg, task, model, eval_set, tokenizer.pad_token_id,
                                   splits.num_labels)
    round_end = RoundEnd(cfg, folder, evaluation, inner, partitions, num_clients,
                         resumed=point.describe() if point is not None else None, local=local)
    return PreparedRun(cfg, task, splits, folder, model, tokenizer, strategy, arrays,
                       first_round, train_config, ConfigRecord({LABELS: labels}), round_end)


def wait_for_nodes(grid: Grid, minimum: int, timeout_s: float = 300.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {n} client(s) connected after {timeout_s:.0f}s, "
                              f"min-clients = {minimum}; start more clients or lower min-clients")
        time.sleep(1.0)
    return n


def _partitions(cfg: RunConfig, splits, num_clients: int) -> list[dict]:
    """The simulated clients' partitions (sizes, label counts); clients with their own data
    check delta themselves."""
    partitions: list[dict] = []
    if cfg.client_data == "partition":
        partitions = describe(splits.train, cfg, num_clients, splits.num_labels)
        if cfg.dp_enabled:
            for p in partitions:
                check_delta(cfg.delta, p["num_examples"], f"client {p['partition_id']}")
    if cfg.min_clients > num_clients:
        raise ConfigError(f"run-config key 'min-clients' = {cfg.min_clients} exceeds the "
                          f"{num_clients} clients in the federation")
    return partitions


def _resume_point(cfg: RunConfig, folder: RunFolder, num_clients: int) -> ResumePoint | None:
    if not cfg.resume:
        return None
    check_settings(folder, cfg, num_clients)
    return load_resume_point(folder)


def _continue_from(point: ResumePoint, folder: RunFolder, strategy,
                   train_config: ConfigRecord) -> int:
    """Restore the server's side of the run; returns the first round still to run."""
    log(INFO, "resuming %s after round %s", folder.root, point.round)
    keep = point.round if point.round > 0 else -1  # from scratch: round 0 is evaluated again
    folder.rewrite_metrics([x for x in folder.read_metrics() if int(x["round"]) <= keep])
    strategy.rounds.update(point.rounds)
    if point.arrays:
        strategy.load_state_arrays(point.strategy_state, point.arrays)
    if point.random_state is not None:
        random.setstate(point.random_state)
    clients = point.client_states()
    if clients:
        train_config[RESUME_PRIVACY] = json.dumps(clients)
    return point.round + 1
