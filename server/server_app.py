"""ServerApp: prepare the run, run the rounds, write the final adapter.

The steps live beside it: ``prepare.py`` (everything before round 1), ``round_loop.py`` (Flower's
round loop, able to start at any round), ``round_end.py`` (after every round: evaluate, record,
report, checkpoint).
"""

from __future__ import annotations

from logging import ERROR, INFO, WARNING

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedtune.arrays import to_tensors
from fedtune.audit.run_audit import audit_run, summary
from fedtune.config import ConfigError, from_run_config
from fedtune.console import quiet_libraries, run_summary
from fedtune.deploy.object_pulls import shorten_object_pulls
from fedtune.model.adapter import load_adapter_state
from fedtune.outputs.run_folder import RunFolder
from server.prepare import PreparedRun, prepare_run
from server.round_loop import run_rounds
from server.secure_rounds import run_secure_rounds

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_libraries()
    shorten_object_pulls()  # a reply's objects are pulled as they arrive (real hosts)
    cfg = from_run_config(context.run_config)
    run = prepare_run(grid, cfg)
    try:
        if cfg.secure_aggregation == "secagg+":
            final = run_secure_rounds(
                run.strategy, grid, context, run.arrays, cfg=cfg,
                partitions=run.round_end.partitions, first_round=run.first_round,
                last_round=cfg.num_server_rounds, train_config=run.train_config,
                evaluate_config=run.evaluate_config, evaluate_fn=run.round_end)
        else:
            final = run_rounds(run.strategy, grid, run.arrays, first_round=run.first_round,
                               last_round=cfg.num_server_rounds, timeout=cfg.round_timeout,
                               train_config=run.train_config,
                               evaluate_config=run.evaluate_config, evaluate_fn=run.round_end)
    except Exception as exc:
        record_failure(run.folder, run.round_end.completed, exc)
        report_failure(run, run.round_end.completed + 1)
        raise
    finish_run(run, final)
    log(INFO, "%s", run_summary(run.folder.root))


def finish_run(run: PreparedRun, final) -> None:
    """The final adapter in ``final/`` (and, for causal-lm, sample generations)."""
    run.folder.clear_failure()
    load_adapter_state(run.model, to_tensors(final))
    run.folder.save_adapter(run.model, run.folder.final_dir,
                            meta={"round": run.cfg.num_server_rounds})
    samples = run.task.samples(run.cfg, run.model, run.tokenizer, run.splits)
    if samples:
        run.folder.write_samples(samples)
    if run.cfg.audit_canaries or run.cfg.audit_canary_clients:
        audit_at_end(run)


def audit_at_end(run: PreparedRun) -> None:
    """The run's privacy audit, once its final adapter is saved. On real hosts the canaries'
    coins are on the audit client's disk, not here: the log says how to audit there."""
    try:
        result = audit_run(run.folder.root, audit_dir=run.cfg.audit_dir or None,
                           model=run.model, tokenizer=run.tokenizer)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        log(WARNING, "privacy audit not done here: %s; on the audit client's host run: fedtune "
            "privacy audit %s --audit-dir <its audit folder>", exc, run.folder.root)
        return
    log(INFO, "%s", summary(result))


def report_failure(run: PreparedRun, failed_round: int) -> None:
    """The privacy report with the failed round counted: its clients may have spent privacy on
    it although it released nothing. Never masks the error that stopped the run."""
    try:
        run.round_end.report_failure(failed_round)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one raised
        log(ERROR, "the privacy report after failed round %s could not be written: %s: %s",
            failed_round, type(exc).__name__, exc)


def record_failure(folder: RunFolder, completed: int, exc: Exception) -> None:
    """``failed.json`` says what stopped the run and how to continue it from its checkpoint."""
    last = max(completed, 0)
    folder.write_failure({
        "round": completed + 1,
        "error": f"{type(exc).__name__}: {exc}",
        "last_checkpoint": str(folder.checkpoint_dir(last)) if last > 0 else None,
        "resume": f"fix the cause, then rerun with --run-config \"resume=true "
                  f"output-dir='{folder.root}'\" to continue after round {last}",
    })
