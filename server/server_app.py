"""ServerApp: set the run up, let the strategy run the rounds, write the final adapter."""

from __future__ import annotations

import random
import time

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from config import ConfigError, from_run_config
from outputs.run_folder import RunFolder
from privacy.calibration import check_delta
from server.round_end import RoundEnd
from simulations.partitioning import describe
from strategies.registry import build_strategy, innermost
from tasks.adapter import adapter_state, from_arrays, load_adapter_state, to_arrays
from tasks.model import load_tokenizer
from tasks.registry import task_for

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
    cfg = from_run_config(context.run_config)
    random.seed(cfg.seed)  # Flower samples clients with the global `random`
    task = task_for(cfg)
    splits = task.load_splits(cfg)
    num_clients = wait_for_nodes(grid, cfg.min_clients)
    partitions = describe(splits.train, cfg, num_clients, splits.num_labels)
    if cfg.dp_enabled:
        for p in partitions:
            check_delta(cfg.delta, p["num_examples"], f"client {p['partition_id']}")
    if cfg.min_clients > num_clients:
        raise ConfigError(f"run-config key 'min-clients' = {cfg.min_clients} exceeds the "
                          f"{num_clients} clients in the federation")

    run = RunFolder.create(cfg)
    model = task.seeded_model(cfg, splits.num_labels)
    run.write_config({**cfg.to_dict(), "output-dir": str(run.root), "num-clients": num_clients,
                      "labels": list(splits.labels), "dataset-source": splits.source,
                      **task.settings(cfg, model, splits)})
    run.write_partitions(partitions, splits.labels, splits.source)

    tokenizer = load_tokenizer(cfg)
    eval_set = task.encode(tokenizer, splits.eval, cfg)
    strategy = build_strategy(cfg, num_clients)
    round_end = RoundEnd(cfg, run, model, eval_set, tokenizer.pad_token_id, splits.num_labels,
                         innermost(strategy).rounds, partitions, num_clients)
    strategy.start(
        grid=grid,
        initial_arrays=to_arrays(adapter_state(model)),
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord({"labels": list(splits.labels), "run-key": str(run.root)}),
        evaluate_config=ConfigRecord({"labels": list(splits.labels)}),
        evaluate_fn=round_end,
    )
    load_adapter_state(model, from_arrays(round_end.latest))
    run.save_adapter(model, run.final_dir)
    samples = task.samples(cfg, model, tokenizer, splits)
    if samples:
        run.write_samples(samples)
