"""Run fedtune as a Flower simulation with one command, and leave nothing running afterwards.

A thin front for :func:`fedtune.launch.simulation.run_simulation`: check the settings and paths
first (in well under a second), then start a private SuperLink, submit the run with
``flwr run --stream`` and stop everything by PID. The console shows one line per round, real
warnings and errors, and a progress bar; the full log goes to ``run.log`` in the run folder.

    python -m simulations.launch --num-clients 10 --run-config "dataset='../shared/data/sst2'"
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import deque
from pathlib import Path

from fedtune.config import ConfigError, from_run_config
from fedtune.console import (
    PROGRESS_ENV,
    VERBOSE_ENV,
    clean,
    quiet_warnings,
    run_summary,
    verbose_from_env,
)
from fedtune.launch.console_view import ConsoleView
from fedtune.launch.flwr_cli import parse_run_config
from fedtune.launch.preflight import preflight
from fedtune.launch.simulation import run_simulation
from fedtune.project import PROJECT_ROOT, project_defaults

LOG_NAME = "run.log"
TURNS = 2  # rounds each client trains in under the main job's schedule
SCHEDULE_KEYS = ("client-selection", "fraction-train", "num-server-rounds", "planned-rounds")


def turn_taking(num_clients: int, min_clients: int, turns: int = TURNS) -> dict:
    """The main job's schedule for ``num_clients`` (IID partitions only): a fifth of the clients
    train each round, in turns, each client ``turns`` times (``planned-rounds``), for turns x
    clients / per-round rounds.

    Why here and not in pyproject.toml: the schedule depends on the federation's size, which a
    run config cannot know. Measured on SST-2 with 10 clients at epsilon 8 and the same compute
    (docs/results.md, "Accuracy under DP"): every client every round (2 rounds) reached 0.727
    after half the data; 2 clients a round in turns reached 0.812. The run is step-limited, and
    turns multiply the sequential steps at the same per-client epsilon. With label-skewed
    partitions (Dirichlet 0.3) turns made the model swing to whichever labels the last clients
    held (0.49-0.64 in the first 4 rounds), so those keep every client in every round.
    """
    per_round = min(num_clients, max(num_clients // 5, min_clients))
    rounds = -(-turns * num_clients // per_round)
    fraction = per_round / num_clients
    while int(num_clients * fraction) < per_round:  # Flower takes int(N * fraction-train)
        fraction = math.nextafter(fraction, 2.0)
    return {"client-selection": "cyclic", "fraction-train": fraction,
            "num-server-rounds": rounds, "planned-rounds": turns}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default == "":
            return f"{action.help} (default: none)"
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.launch", description=__doc__.split("\n\n")[0],
        formatter_class=_Help,
        epilog="Run-config keys, their defaults and allowed values: [tool.flwr.app.config] in "
               "pyproject.toml and fedtune/config.py. Relative paths in the run config are "
               f"taken from the project root ({PROJECT_ROOT}).")
    parser.add_argument("--num-clients", type=int, default=10,
                        help="simulated clients (SuperNodes) in the federation")
    parser.add_argument("--run-config", default="",
                        help="run-config overrides, as for flwr run: \"key=value key2='text'\"; "
                             "the rest come from pyproject.toml")
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="CPU cores Ray reserves for each simulated client")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="GPU share per simulated client (e.g. 0.5: two clients per GPU)")
    parser.add_argument("--timeout-s", type=float, default=3600.0,
                        help="stop the run (and everything it started) after this many seconds")
    parser.add_argument("--verbose", action="store_true",
                        help=f"show every line of every process (Hugging Face progress bars, "
                             f"library warnings, Flower's INFO lines); same as {VERBOSE_ENV}=1")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or verbose_from_env()
    quiet_warnings(verbose)  # the preflight's noise plan runs the accountants here too
    try:  # fail in a second, not after the SuperLink and Ray have started
        overrides = parse_run_config(args.run_config)
        schedule = {}
        if not any(k in overrides for k in SCHEDULE_KEYS):
            cfg = from_run_config(project_defaults(PROJECT_ROOT) | overrides)  # checked below
            if cfg.partitioner == "iid":  # label-skewed clients in turns swing the model
                schedule = turn_taking(args.num_clients, cfg.min_clients)
                overrides = {**schedule, **overrides}
        checked = preflight(overrides, PROJECT_ROOT)
        if args.num_clients < checked.cfg.min_clients:
            raise ConfigError(f"--num-clients {args.num_clients} is below run-config key "
                              f"'min-clients' = {checked.cfg.min_clients}; raise --num-clients "
                              "or lower min-clients")
        log_path = checked.run_root / LOG_NAME
        try:
            checked.run_root.mkdir(parents=True, exist_ok=True)
            log_path.open("ab").close()
        except OSError as exc:
            raise ConfigError(f"run-config key 'output-dir': cannot write {log_path} "
                              f"({exc.strerror}); choose a folder you can write to") from None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    view = ConsoleView(verbose=verbose)
    if schedule:
        view.say("schedule    " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in schedule.items())
                 + f" (clients take turns; set any of {', '.join(SCHEDULE_KEYS)} to choose)")
    view.say(f"run folder  {checked.run_root}")
    view.say(f"full log    {log_path}")
    try:
        code = run_simulation(
            checked.overrides, args.num_clients, cpus_per_client=args.cpus_per_client,
            gpus_per_client=args.gpus_per_client, timeout_s=args.timeout_s,
            workdir=tempfile.mkdtemp(prefix="fedtune-sim-"), log_path=log_path, console=view,
            extra_env={VERBOSE_ENV: "1" if verbose else "0", PROGRESS_ENV: "1"})
    except KeyboardInterrupt:
        view.finish()
        print("\ninterrupted; every process the run started has been stopped", file=sys.stderr)
        code = 130
    except Exception as exc:  # noqa: BLE001 (a timeout, a SuperLink that did not start)
        view.finish()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    view.finish()
    print(run_summary(checked.run_root))
    if code != 0:
        if view.errors_shown == 0 and not verbose:
            for line in _tail(log_path):
                print(f"  | {line}", file=sys.stderr)
        print(f"flwr run exited with code {code}; full log: {log_path}", file=sys.stderr)
    return code


def _tail(path: Path, n: int = 12) -> list[str]:
    """The last ``n`` non-empty lines of the log, for a failure the console filter did not name."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return list(deque((t for t in map(clean, f) if t.strip()), maxlen=n))
    except OSError:
        return []


if __name__ == "__main__":
    sys.exit(main())
