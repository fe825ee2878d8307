"""ServerApp: set the run up, let the strategy run the rounds, write the final adapter."""

from __future__ import annotations

import json
import random
import time
from logging import INFO

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedtune.config import ConfigError, from_run_config
from fedtune.console import quiet_libraries, run_summary
from fedtune.data.partitioning import describe
from fedtune.model.adapter import adapter_state, from_arrays, load_adapter_state, to_arrays
from fedtune.model.build import load_tokenizer
from fedtune.outputs.run_folder import RunFolder
from fedtune.privacy.calibration import check_delta
from fedtune.tasks.registry import task_for
from server.local_clients import LocalClients
from server.resume import check_settings, load_resume_point
from server.round_end import RoundEnd
from server.round_loop import run_rounds
from strategies.base import to_record
from strategies.registry import build_strategy, innermost

app = ServerApp()


def wait_for_nodes(grid: Grid, minimum: int, timeout_s: float = 300.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {n} client(s) connected after {timeout_s:.0f}s, "
                              f"min-clients = {minimum}; start more clients or lower min-clients")
        time.sleep(1.0)
    return n


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_libraries()
    cfg = from_run_config(context.run_config)
    random.seed(cfg.seed)  # Flower samples clients with the global `random`
    task = task_for(cfg)
    splits = task.load_splits(cfg)
    num_clients = wait_for_nodes(grid, cfg.min_clients)
    partitions: list[dict] = []
    if cfg.client_data == "partition":  # with their own data, clients check delta themselves
        partitions = describe(splits.train, cfg, num_clients, splits.num_labels)
        if cfg.dp_enabled:
            for p in partitions:
                check_delta(cfg.delta, p["num_examples"], f"client {p['partition_id']}")
    if cfg.min_clients > num_clients:
        raise ConfigError(f"run-config key 'min-clients' = {cfg.min_clients} exceeds the "
                          f"{num_clients} clients in the federation")

    run = RunFolder.create(cfg)
    log(INFO, "run folder: %s", run.root)
    model = task.seeded_model(cfg, splits.num_labels)
    point = None
    if cfg.resume:
        check_settings(run, cfg, num_clients)
        point = load_resume_point(run)
    else:
        run.write_config({**cfg.to_dict(), "output-dir": str(run.root),
                          "num-clients": num_clients, "labels": list(splits.labels),
                          "dataset-source": splits.source, **task.settings(cfg, model, splits)})
    local = None
    if cfg.client_data == "local":
        local = LocalClients(list(grid.get_node_ids()), run, splits.labels, splits.source)
        partitions = local.partitions
        if point is None:
            local.write()
    elif point is None:
        run.write_partitions(partitions, splits.labels, splits.source)

    tokenizer = load_tokenizer(cfg)
    eval_set = task.encode(tokenizer, splits.eval, cfg)
    strategy = build_strategy(cfg, num_clients)
    inner = innermost(strategy)
    arrays = to_arrays(adapter_state(model))
    train_config = ConfigRecord({"labels": list(splits.labels), "run-key": str(run.root)})
    first_round = 1
    if point is not None:
        first_round = _continue_from(point, run, inner, train_config)
        if point.arrays:
            arrays = to_record(point.arrays)
    round_end = RoundEnd(cfg, run, model, eval_set, tokenizer.pad_token_id, splits.num_labels,
                         inner, partitions, num_clients, latest=arrays,
                         resumed=point.describe() if point is not None else None,
                         local=local)
    try:
        run_rounds(strategy, grid, arrays, first_round=first_round,
                   last_round=cfg.num_server_rounds, timeout=cfg.round_timeout,
                   train_config=train_config,
                   evaluate_config=ConfigRecord({"labels": list(splits.labels)}),
                   evaluate_fn=round_end)
    except Exception as exc:
        _record_failure(run, round_end.completed, exc)
        raise
    run.clear_failure()
    load_adapter_state(model, from_arrays(round_end.latest))
    run.save_adapter(model, run.final_dir, meta={"round": cfg.num_server_rounds})
    samples = task.samples(cfg, model, tokenizer, splits)
    if samples:
        run.write_samples(samples)
    log(INFO, "%s", run_summary(run.root))


def _continue_from(point, run: RunFolder, strategy, train_config: ConfigRecord) -> int:
    """Restore the server's side of the run; returns the first round still to run."""
    log(INFO, "resuming %s after round %s", run.root, point.round)
    keep = point.round if point.round > 0 else -1  # from scratch: round 0 is evaluated again
    run.rewrite_metrics([x for x in run.read_metrics() if int(x["round"]) <= keep])
    strategy.rounds.update(point.rounds)
    if point.arrays:
        strategy.load_state_arrays(point.strategy_state, point.arrays)
    if point.random_state is not None:
        random.setstate(point.random_state)
    clients = point.client_states()
    if clients:
        train_config["resume-privacy"] = json.dumps(clients)
    return point.round + 1


def _record_failure(run: RunFolder, completed: int, exc: Exception) -> None:
    """``failed.json`` says what stopped the run and how to continue it from its checkpoint."""
    last = max(completed, 0)
    run.write_failure({
        "round": completed + 1,
        "error": f"{type(exc).__name__}: {exc}",
        "last_checkpoint": str(run.checkpoint_dir(last)) if last > 0 else None,
        "resume": f"fix the cause, then rerun with --run-config \"resume=true "
                  f"output-dir='{run.root}'\" to continue after round {last}",
    })
