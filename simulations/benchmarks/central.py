"""The centralized arm of a comparison: one process, all the data, the project's own trainer.

It does what one federated client does with its partition, but with the whole training set:
the same ``train_local`` (Opacus ``make_private``, Poisson sampling, micro-batch skip-steps), the
same noise calibration (``ClientBudget``: the whole training set is the protected database), the
same model build and the same evaluation after every round as the server. A "round" here is
``local-epochs`` over all the rows, so ``num-server-rounds`` rounds train on as many samples as a
federation whose clients each train ``local-epochs`` per round on their partition.

It runs as its own process (``python -m simulations.benchmarks.central SETTINGS.json OUT.json``)
so that its wall time counts interpreter start and imports, as the federation's does.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from fedtune.project import PROJECT_ROOT, project_defaults


def planned_samples(num_examples: int, batch_size: int, local_epochs: float, rounds: int) -> float:
    """Rows a client expects to train on over the run: steps x (expected) batch."""
    from fedtune.privacy.calibration import sample_rate, steps_per_round

    steps = steps_per_round(num_examples, batch_size, local_epochs)
    return rounds * steps * num_examples * sample_rate(num_examples, batch_size)


def central_run(overrides: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train and evaluate round by round; per-round accuracy, epsilon and timings."""
    import torch

    torch.set_num_threads(threads)
    from client.trainer import train_local
    from fedtune.config import from_run_config
    from fedtune.data.batching import TokenizedDataset
    from fedtune.data.loading import load_splits
    from fedtune.model.build import load_tokenizer
    from fedtune.privacy.accounting import epsilon
    from fedtune.privacy.budget import ClientBudget
    from fedtune.privacy.calibration import batch_size_for
    from fedtune.privacy.label_counts import count_release, label_counts, logit_offset
    from fedtune.protocol import PrivacyState
    from fedtune.tasks.evaluation import evaluate
    from fedtune.tasks.registry import task_for

    cfg = from_run_config(project_defaults(PROJECT_ROOT) | overrides)
    splits = load_splits(cfg)
    tokenizer = load_tokenizer(cfg)
    rows = TokenizedDataset.from_texts(tokenizer, splits.train["text"], splits.train["label"],
                                       cfg.max_length)
    eval_set = TokenizedDataset.from_texts(tokenizer, splits.eval["text"], splits.eval["label"],
                                           cfg.max_length)
    pad = tokenizer.pad_token_id
    model = task_for(cfg).seeded_model(cfg, splits.num_labels)
    state = PrivacyState()
    releases = count_release(cfg)  # logit-adjustment's noisy label counts, as a client draws
    if cfg.dp_enabled:
        budget = ClientBudget(cfg, state, len(rows), releases=releases)
        budget.start("central")
        budget.record_releases()
    offset = None
    if releases:  # logit adjustment applies under DP-SGD only
        offset = logit_offset(label_counts(rows.labels, splits.num_labels, cfg, cfg.seed),
                              cfg.logit_adjustment)

    def score() -> dict[str, float]:
        return evaluate(model, eval_set, pad, cfg.eval_batch_size, splits.num_labels)

    series = [{"round": 0, **score(), "epsilon": 0.0 if cfg.dp_enabled else None}]
    train_s = samples = 0.0
    moments = None  # optimizer-state = keep: Adam continues across rounds, as on a client
    for server_round in range(1, cfg.num_server_rounds + 1):
        started = time.perf_counter()
        result = train_local(model, rows, pad, cfg, state,
                             seed=cfg.seed * 1_000_003 + server_round, optimizer_state=moments,
                             logit_offset=offset)
        moments = result.optimizer_state
        took = time.perf_counter() - started
        train_s += took
        samples += result.samples
        state.rounds_trained += 1
        eps = epsilon(state.history, cfg.delta, cfg.accountant) if cfg.dp_enabled else None
        series.append({"round": server_round, **score(), "epsilon": eps,
                       "train_loss": result.train_loss, "train_s": round(took, 3),
                       "samples": result.samples})
    return {
        "num_examples": len(rows),
        "noise_multiplier": state.noise_multiplier if cfg.dp_enabled else None,
        "samples": int(samples),
        "samples_planned": planned_samples(len(rows), batch_size_for(cfg, len(rows)),
                                           cfg.local_epochs, cfg.num_server_rounds),
        "train_s": round(train_s, 3),
        "accuracy": series[-1]["accuracy"],
        "macro_f1": series[-1].get("macro_f1"),
        "epsilon": series[-1]["epsilon"],
        "series": series,
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m simulations.benchmarks.central SETTINGS.json OUT.json",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    result = central_run(job["overrides"], int(job["threads"]))
    from fedtune.atomic import write_json

    write_json(argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
