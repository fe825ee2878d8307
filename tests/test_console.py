"""The quiet console: library noise off, one line per round, a run summary, the launcher's
filter over ``flwr run`` output and its progress bar."""

import io
import json
import logging
import warnings
from types import SimpleNamespace

import pytest

from fedtune.console import (
    HARMLESS_WARNINGS,
    PROGRESS_ENV,
    ConsoleFilter,
    progress_line,
    quiet_libraries,
    round_line,
    run_summary,
)
from fedtune.launch.console_view import ConsoleView


@pytest.fixture
def restore_libraries():
    propagate = logging.getLogger("flwr").propagate
    yield
    quiet_libraries(verbose=True)  # takes our filters out again and re-enables the bars
    logging.getLogger("flwr").propagate = propagate


def _warn_all():
    for message, category in HARMLESS_WARNINGS:
        warnings.warn(f"{message} and then some detail", category, stacklevel=1)
    warnings.warn("Something unrelated went wrong", UserWarning, stacklevel=1)


def test_quiet_libraries_silences_the_known_warnings_only(restore_libraries):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert quiet_libraries(verbose=False) is False
        _warn_all()
    assert [str(w.message) for w in seen] == ["Something unrelated went wrong"]


def test_verbose_mode_keeps_every_warning(monkeypatch, restore_libraries):
    monkeypatch.setenv("FEDTUNE_VERBOSE", "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries(verbose=False)  # a quiet earlier call in the same process
        assert quiet_libraries() is True  # the environment decides
        _warn_all()
    assert len(seen) == len(HARMLESS_WARNINGS) + 1


def test_quiet_libraries_drops_dp_accounting_noise_and_keeps_other_log_warnings(
        restore_libraries):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    absl = logging.getLogger("absl")
    absl.addHandler(handler)
    try:
        quiet_libraries(verbose=False)
        absl.warning("_compute_log_a_frac failed to converge after 1000 iterations with q=0.05")
        absl.warning("a real problem")
    finally:
        absl.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a real problem"]


def test_flower_lines_are_printed_once_even_after_opacus_configured_the_root_logger(
        restore_libraries):
    """Opacus calls logging.basicConfig on import: the root logger then printed every record
    of Flower's propagating logger a second time."""
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logging.getLogger().addHandler(handler)
    try:
        quiet_libraries(verbose=False)
        logging.getLogger("flwr").info("round 1/2 ...")
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen == []


def test_hugging_face_progress_bars_go_off_and_come_back(restore_libraries):
    from datasets.utils import are_progress_bars_disabled
    from transformers.utils import logging as tf_logging

    quiet_libraries(verbose=False)
    assert are_progress_bars_disabled() and not tf_logging.is_progress_bar_enabled()
    quiet_libraries(verbose=True)
    assert not are_progress_bars_disabled() and tf_logging.is_progress_bar_enabled()


LINE = {"round": 2, "loss": 0.45123, "accuracy": 0.79104, "train_loss": 0.5, "clients": 9,
        "sampled": 10, "epsilon_max": 5.3149, "failures": [{"node": 3}], "refused": [],
        "rejected": [], "wall_s": 41.23, "elapsed_s": 90.0}


def test_round_line_is_one_short_line():
    assert round_line(LINE, 3) == ("round 2/3  accuracy 0.7910  loss 0.4512  max epsilon 5.31  "
                                   "clients 9/10  failures 1  41.2 s")
    assert round_line({"round": 0, "loss": 0.69, "accuracy": 0.5, "wall_s": 0.08}, 12) == (
        "round  0/12  accuracy 0.5000  loss 0.6900  (before training)  0.1 s")
    causal = {"round": 1, "loss": 2.5, "perplexity": 12.18, "clients": 2, "sampled": 2,
              "epsilon_max": None, "wall_s": 3.0}
    assert round_line(causal, 1) == "round 1/1  perplexity 12.1800  loss 2.5000  clients 2/2  3.0 s"


def _run_folder(tmp_path, *, finished=True):
    run = tmp_path / "run"
    (run / "privacy").mkdir(parents=True)
    lines = [{"round": 0, "accuracy": 0.5, "loss": 0.7, "wall_s": 0.1}, LINE]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "config.json").write_text(json.dumps({"num-server-rounds": 2, "dp": "sample"}))
    (run / "privacy" / "report.json").write_text(json.dumps(
        {"max_epsilon": 5.3149, "delta": 1e-5, "clients": [{}] * 10}))
    (run / "privacy" / "report.md").write_text("# report")
    if finished:
        (run / "final").mkdir()
    else:
        (run / "failed.json").write_text(json.dumps({
            "round": 3, "error": "TooFewRepliesError: 1 valid reply", "resume":
            "fix the cause, then rerun with --run-config \"resume=true output-dir='x'\""}))
    return run


def test_run_summary_names_scores_privacy_and_paths(tmp_path):
    run = _run_folder(tmp_path)
    text = run_summary(run)
    assert text.splitlines()[0] == "run finished after round 2/2: accuracy 0.7910, loss 0.4512"
    assert "max epsilon 5.315 at delta 1e-05" in text
    assert f"final adapter  {run / 'final'}" in text
    assert f"privacy report {run / 'privacy' / 'report.md'}" in text


def test_run_summary_of_a_stopped_run_says_how_to_continue(tmp_path):
    text = run_summary(_run_folder(tmp_path, finished=False))
    assert text.startswith("run stopped after round 2/2")
    assert "final adapter" not in text
    assert "TooFewRepliesError" in text and "resume=true" in text
    assert run_summary(tmp_path / "nothing").startswith("run stopped before its first")


# A shortened real `flwr run --stream` output (colours and Ray prefixes included).
G, Y, R, C, X = "\x1b[92m", "\x1b[93m", "\x1b[91m", "\x1b[36m", "\x1b[0m"
SAMPLE = f"""Using SuperLink: fedtune (127.0.0.1:60041)
Successfully started run 10509035948783536507
{G}INFO {X}:      Starting Flower Simulation
{Y}WARNING {X}:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.
\rGenerating train split: 0 examples [00:00, ? examples/s]\rGenerating train split: 600 examples [00:00, 62930.29 examples/s]
\rLoading weights:   0%|          | 0/41 [00:00<?, ?it/s]\rLoading weights: 100%|##########| 41/41 [00:00<00:00, 5218.22it/s]
/site-packages/transformers/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is deprecated and will be removed in v6.
  warnings.warn(
{G}INFO {X}:      round 0/2  accuracy 0.4833  loss 0.6933  (before training)  0.1 s
{G}INFO {X}:      [ROUND 1/2]
{G}INFO {X}:      configure_train: Sampled 2 nodes (out of 2)
{G}INFO {X}:      {progress_line(1, 2, "train", 0, 2)}
{C}(ClientAppActor pid=8108){X} /site-packages/opacus/accountants/analysis/rdp.py:332: UserWarning: Optimal order is the largest alpha. Please consider expanding the range
{C}(ClientAppActor pid=8108){X}   warnings.warn(
{C}(ClientAppActor pid=8108){X} /work/client/trainer.py:99: UserWarning: learning rate is nan
{C}(ClientAppActor pid=8108){X}   warnings.warn(
{C}(ClientAppActor pid=8114){X} /work/client/trainer.py:99: UserWarning: learning rate is nan
{C}(ClientAppActor pid=8114){X}   warnings.warn(
{G}INFO {X}:      {progress_line(1, 2, "train", 1, 2)}
{G}INFO {X}:      aggregate_train: Received 1 results and 1 failures
11/30/2026 01:38:06:WARNING:_compute_log_a_frac failed to converge after 1000 iterations with q=0.052632, sigma=0.455627, alpha=1.100000.
{G}INFO {X}:      round 1/2  accuracy 0.4833  loss 0.6952  max epsilon 6.25  clients 1/2  failures 1  63.0 s
{R}ERROR {X}:     Simulation raised an exception
Traceback (most recent call last):
  File "/site-packages/flwr/simulation/app.py", line 337, in run_simulation_process
    simulation_result = _run_simulation(
OSError: cannot reach the disk

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/apps/fedtune/privacy/calibration.py", line 53, in check_delta
    raise ConfigError(
fedtune.config.ConfigError: run-config key 'delta' = 0.1 must be below 1/n = 0.00333
{R}ERROR {X}:     Exit Code: 700

An unhandled exception occurred when running the simulation.
{C}(ClientAppActor pid=8108){X} {Y}WARNING {X}:   Manually terminating ClientAppActor
"""  # noqa: E501 (real lines are long)


def _lines(text):
    """Lines as the launcher reads them: split at newlines only (a bar redraws with \\r)."""
    return [line + "\n" for line in text.split("\n")[:-1]]


def _events(text):
    f = ConsoleFilter()
    out = [e for line in _lines(text) for e in f.feed(line)]
    return out + f.close()


def test_the_filter_keeps_rounds_progress_real_warnings_and_the_error_line():
    events = _events(SAMPLE)
    shown = [(e.kind, e.text) for e in events if e.kind != "progress"]
    assert shown == [
        ("round", "round 0/2  accuracy 0.4833  loss 0.6933  (before training)  0.1 s"),
        ("warning", "warning: UserWarning: learning rate is nan (trainer.py:99)"),  # once
        ("warning", "warning: aggregate_train: Received 1 results and 1 failures"),
        ("round", "round 1/2  accuracy 0.4833  loss 0.6952  max epsilon 6.25  clients 1/2  "
                  "failures 1  63.0 s"),
        ("error", "error: ConfigError: run-config key 'delta' = 0.1 must be below 1/n = "
                  "0.00333"),
    ]
    progress = [e.progress for e in events if e.kind == "progress"]
    assert [(p.server_round, p.num_rounds, p.phase, p.done, p.total) for p in progress] == [
        (1, 2, "train", 0, 2), (1, 2, "train", 1, 2)]


def test_an_error_without_a_traceback_is_shown_with_its_lines():
    events = _events(f"{R}ERROR {X}:     something broke\nthe details\n"
                     f"{G}INFO {X}:      next\n")
    assert [(e.kind, e.text) for e in events] == [("error", "error: something broke\n"
                                                            "  the details")]


def test_a_warning_that_differs_only_in_numbers_is_shown_once():
    events = _events(f"{Y}WARNING {X}:   Retrying in 1s [Retry 1/5].\n"
                     f"{Y}WARNING {X}:   Retrying in 2s [Retry 2/5].\n")
    assert [e.text for e in events] == ["warning: Retrying in 1s [Retry 1/5]."]


def test_the_view_draws_a_bar_in_place_on_a_terminal_and_nothing_extra_otherwise():
    lines = _lines(SAMPLE)[:12]  # up to the first progress marker
    tty, plain = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (plain, False)):
        view = ConsoleView(out, tty=is_tty)
        for line in lines:
            view.raw(line)
        view.raw(f"{G}INFO {X}:      round 1/2  accuracy 0.5  1.0 s\n")
        view.close()
    assert "\rround 1/2 train [--------------------] 0/2 clients" in tty.getvalue()
    assert "\r\x1b[K" in tty.getvalue()  # cleared before the round line
    assert plain.getvalue() == ("round 0/2  accuracy 0.4833  loss 0.6933  (before training)  "
                                "0.1 s\nround 1/2  accuracy 0.5  1.0 s\n")


def test_verbose_view_passes_everything_through():
    out = io.StringIO()
    view = ConsoleView(out, verbose=True, tty=False)
    for line in _lines(SAMPLE):
        view.raw(line)
    view.close()
    assert out.getvalue() == SAMPLE


class _Grid:
    """Replies arrive one pull at a time."""

    def __init__(self, n):
        self.n, self.pulls = n, 0

    def push_messages(self, messages):
        return [f"id{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        first = sorted(ids)[:1]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in first]

    def send_and_receive(self, messages, timeout):
        return ["flower's own"]


def test_the_server_logs_progress_markers_only_for_the_launcher(monkeypatch):
    import server.progress as progress

    logged = []
    monkeypatch.setattr(progress, "log", lambda level, msg: logged.append(msg))
    monkeypatch.setattr(progress, "PULL_INTERVAL_S", 0.0)
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    kwargs = {"timeout": 10.0, "server_round": 1, "num_rounds": 2, "phase": "train"}
    grid = _Grid(3)  # its own fast pull loop, not Flower's (which pulls every 3 s)
    assert len(progress.send_and_receive(grid, [1, 2, 3], **kwargs)) == 3 and grid.pulls == 3
    assert logged == []
    monkeypatch.setenv(PROGRESS_ENV, "1")
    replies = progress.send_and_receive(_Grid(3), [1, 2, 3], **kwargs)
    assert len(replies) == 3
    assert logged == [progress_line(1, 2, "train", k, 3) for k in range(4)]
    assert progress.send_and_receive(_Grid(0), [], **kwargs) == []


def test_the_prv_accountants_log_of_zero_is_dropped_there_only(restore_libraries):
    """The PRV accountant's masked log(0) is noise on a newcomer's console; a divide by zero
    anywhere else may be a real bug and stays visible."""
    import numpy as np
    from opacus.accountants import PRVAccountant

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries(verbose=False)
        accountant = PRVAccountant()
        accountant.history = [(3.0, 1.0, 1), (0.5347, 1 / 28, 28)]  # label counts at q = 1
        assert 7 < accountant.get_epsilon(delta=1e-5) < 9
        with np.errstate(divide="warn"):
            np.log(np.zeros(1))
    messages = [str(w.message) for w in seen]
    assert messages == ["divide by zero encountered in log"]
    assert seen[0].filename == __file__


def test_the_privacy_planner_prints_no_accountant_noise():
    """`fedtune privacy plan` runs the PRV accountant at q = 1 for the label counts; its masked
    log(0) warnings once filled the planner's console, because only the launcher filtered them."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fedtune.cli", "privacy", "plan", "--num-examples", "6735",
         "--batch-size", "241", "--rounds", "2", "--local-epochs", "0.5",
         "--target-epsilon", "8", "--delta", "1e-5"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "noise multiplier" in done.stdout
    assert "divide by zero" not in done.stderr
    assert "Warning" not in done.stderr
