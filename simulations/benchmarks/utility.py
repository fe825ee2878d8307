"""``utility``: what DP at epsilon 8 costs in accuracy and macro-F1, centralized and federated.

Rows (epsilon 8, delta 1e-5 wherever DP is on; evaluated on the full validation split; the run
config otherwise the project defaults: automatic batch size per client, pooling auto, Adam state
kept across rounds):

SST-2, every row with the main job's compute (2 rounds of half a local epoch over all 67,349
training rows: each row trains on about 67,349 samples, however they are split), so that the rows
differ only in who holds the data and whether it is private:

1. ``central-nodp``, 2. ``central-dp8``: one process, the whole training set (the protected
   database under DP), evaluated after each round like the server does
3. ``fed10-iid-dp8``, 4. ``fed10-dir0.3-dp8``, 5. ``fed100-iid-dp8``: ``flwr run``, DP per client

TREC (``../shared/data/trec``: 5,452 questions, 500 to evaluate), 5 IID clients, 4 rounds of one
local epoch: the small-data, many-class counterpart, where macro-F1 shows what DP does to rare
classes: 6. ``trec6-fed5-dp8``, 7. ``trec6-fed5-nodp`` (6 coarse labels), 8. ``trec50-fed5-dp8``,
9. ``trec50-fed5-nodp`` (50 fine labels).

Targets: the three federated SST-2 rows reach 0.82, 0.80 and 0.78 accuracy; TREC-6 with DP is
within 5 macro-F1 points of TREC-6 without. TREC-50 has no target (too few rows per class for DP
at epsilon 8): its gap is reported. Each SST-2 row is also compared with ``central-nodp``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from fedtune.project import PROJECT_ROOT
from simulations.benchmarks.arms import run_central, run_federated
from simulations.benchmarks.cli import common_arguments, device_arguments
from simulations.benchmarks.common import finish, header, result_dir, runs_dir, save, table
from simulations.launch import turn_taking
from simulations.results import fmt

TREC = PROJECT_ROOT.parent / "shared" / "data" / "trec"
F1_GAP_POINTS = 5.0
MIN_CLIENTS = 2
QUICK_CLIENTS = 4  # enough to exercise partitioning and aggregation in a couple of minutes

DP = {"dp": "sample"}
NODP = {"dp": "off"}
IID = {"partitioner": "iid"}
# (name, arm, clients, data, overrides)
ROWS: tuple[tuple[str, str, int, str, dict[str, Any]], ...] = (
    ("central-nodp", "central", 1, "sst2", NODP),
    ("central-dp8", "central", 1, "sst2", DP),
    ("fed10-iid-dp8", "federated", 10, "sst2", DP | IID),
    ("fed10-dir0.3-dp8", "federated", 10, "sst2",
     DP | {"partitioner": "dirichlet", "dirichlet-alpha": 0.3}),
    ("fed100-iid-dp8", "federated", 100, "sst2", DP | IID),
    ("trec6-fed5-dp8", "federated", 5, "trec", DP | IID | {"label-column": "label"}),
    ("trec6-fed5-nodp", "federated", 5, "trec", NODP | IID | {"label-column": "label"}),
    ("trec50-fed5-dp8", "federated", 5, "trec", DP | IID | {"label-column": "fine_label"}),
    ("trec50-fed5-nodp", "federated", 5, "trec", NODP | IID | {"label-column": "fine_label"}),
)
ACCURACY_TARGETS = {
    "fed10-iid-dp8": (0.82, "10 clients IID DP accuracy >= 0.82"),
    "fed10-dir0.3-dp8": (0.80, "10 clients Dirichlet(0.3) DP accuracy >= 0.80"),
    "fed100-iid-dp8": (0.78, "100 clients IID DP accuracy >= 0.78"),
}
# DP row -> its dp=off twin; only TREC-6 has a target on the gap
NODP_TWIN = {"trec6-fed5-dp8": "trec6-fed5-nodp", "trec50-fed5-dp8": "trec50-fed5-nodp"}
GAP_TARGETS = {"trec6-fed5-dp8": f"TREC-6 DP macro-F1 within {F1_GAP_POINTS:g} points of no-DP"}
NO_TARGET = {"trec50-fed5-dp8": "none (TREC-50 DP macro-F1 gap to no-DP reported)"}

FULL = {"rows": 0, "trec_rows": 0, "trec_rounds": 4, "eval": 0}
QUICK = {"rows": 2_000, "trec_rows": 600, "trec_rounds": 2, "eval": 128}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "SST-2 from 2,000 rows, TREC from 600 rows in 2 rounds, 128 eval "
                             "rows, at most 4 clients: checks the pipeline")
    device_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds each client trains in, in the SST-2 rows (default 2, as the "
                             "main job; federated rows take turns as the main job does)")
    parser.add_argument("--local-epochs", type=float, default=0.5,
                        help="local epochs per round of the SST-2 rows (default 0.5)")
    parser.add_argument("--rows", type=int, default=-1,
                        help="SST-2 training rows drawn from (0 = all 67,349, the default; "
                             "2,000 with --quick)")
    parser.add_argument("--trec", default=str(TREC), help="TREC folder (train/validation jsonl)")
    parser.add_argument("--trec-rounds", type=int, default=0,
                        help="rounds each client trains in, in the TREC rows (default 4, 2 with "
                             "--quick)")
    parser.add_argument("--trec-local-epochs", type=float, default=1.0,
                        help="local epochs per round of the TREC rows (default 1.0)")
    parser.add_argument("--only", default="",
                        help="comma-separated row names to run (default: all nine)")
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds: each row runs once per seed and reports "
                             "the mean (targets are judged on it) and every run's figures "
                             "(default: one run at the run config's seed)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"utility: --seeds '{text}' must be comma-separated integers, "
                         "e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"utility: --seeds '{text}' repeats a seed")
    return seeds


def combine_draws(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its runs at several seeds: the mean of each figure (what the targets judge:
    one run is one draw, and the main job's accuracy moved by a point between seeds), the
    spread, the largest epsilon, and every run's own figures. The per-round series is the first
    run's (a plot of means would show a curve no run took)."""
    if len(draws) == 1:
        return draws[0]
    ok = [d for d in draws if d["ok"]]
    row = dict(ok[0] if ok else draws[0])
    row.update(ok=len(ok) == len(draws), wall_s=round(sum(d["wall_s"] for d in draws), 2),
               draws=[{k: d.get(k) for k in ("seed", "ok", "accuracy", "macro_f1", "epsilon",
                                             "samples", "wall_s", "run", "log")}
                      for d in draws])
    for key in ("accuracy", "macro_f1"):
        values = [d[key] for d in ok if d.get(key) is not None]
        if values:
            row[key] = statistics.fmean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    epsilons = [d["epsilon"] for d in ok if d.get("epsilon") is not None]
    row["epsilon"] = max(epsilons) if epsilons else None
    return row


def target_text(name: str) -> str | None:
    if name in ACCURACY_TARGETS:
        return ACCURACY_TARGETS[name][1]
    return GAP_TARGETS.get(name) or NO_TARGET.get(name)


def plan_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row to run, with its complete overrides: what a run does is decided here alone."""
    preset = QUICK if args.quick else FULL
    common = {"target-epsilon": 8.0, "delta": 1e-5, "max-eval-samples": preset["eval"],
              "client-threads": 1, "device": args.device}
    data = {
        # the same rounds and epochs in every SST-2 row: the same samples, however split
        "sst2": {"dataset": args.dataset,
                 "max-train-samples": preset["rows"] if args.rows < 0 else args.rows,
                 "num-server-rounds": args.rounds, "local-epochs": args.local_epochs},
        "trec": {"dataset": str(Path(args.trec).resolve()),
                 "max-train-samples": preset["trec_rows"],
                 "num-server-rounds": args.trec_rounds or preset["trec_rounds"],
                 "local-epochs": args.trec_local_epochs},
    }
    extra = parse_run_config(args.run_config)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - {r[0] for r in ROWS}
    if unknown:
        raise SystemExit(f"utility: no such row(s): {', '.join(sorted(unknown))} "
                         f"(rows: {', '.join(r[0] for r in ROWS)})")
    planned = []
    for name, arm, clients, kind, row in ROWS:
        if only and name not in only:
            continue
        if args.quick and arm == "federated":
            clients = min(clients, QUICK_CLIENTS)
        overrides = {**common, **data[kind], **extra, **row}
        if arm == "federated" and overrides.get("partitioner") == "iid":
            # the main job's turns: each client trains `rounds` times, every one that takes a
            # turn must reply
            schedule = turn_taking(clients, MIN_CLIENTS, overrides["num-server-rounds"])
            overrides |= schedule
            overrides["min-clients"] = int(clients * schedule["fraction-train"])
        elif arm == "federated":  # label skew: every client every round (turns swing the model)
            overrides["min-clients"] = clients
        planned.append({"name": name, "arm": arm, "clients": clients, "data": kind,
                        "target": target_text(name), "overrides": overrides})
    return planned


def judge(results: list[dict[str, Any]]) -> bool | None:
    """Fill in each row's comparisons and ``target_met``; True when every measured target is."""
    by_name = {r["name"]: r for r in results}
    reference = by_name.get("central-nodp", {}).get("accuracy")
    for r in results:
        r["target_met"] = None
        if r["data"] == "sst2" and reference is not None and r.get("accuracy") is not None:
            r["points_below_reference"] = round(100 * (reference - r["accuracy"]), 2)
        if r["name"] in ACCURACY_TARGETS and r.get("accuracy") is not None:
            r["target_met"] = r["accuracy"] >= ACCURACY_TARGETS[r["name"]][0]
        twin = by_name.get(NODP_TWIN.get(r["name"], ""), {})
        if r.get("macro_f1") is not None and twin.get("macro_f1") is not None:
            r["points_below_nodp"] = round(100 * (twin["macro_f1"] - r["macro_f1"]), 2)
            if r["name"] in GAP_TARGETS:
                r["target_met"] = r["points_below_nodp"] <= F1_GAP_POINTS
    measured = [r["target_met"] for r in results if r["target_met"] is not None]
    return all(measured) if measured else None


def run_row(p: dict[str, Any], args: argparse.Namespace, runs: Path, threads: int,
            seed: int | None) -> dict[str, Any]:
    """One run of a planned row (at ``seed``, when given: its run folder is named for it)."""
    name, o = p["name"], dict(p["overrides"])
    label = name
    if seed is not None:
        o["seed"], label = seed, f"{name}-seed{seed}"
    if p["arm"] == "central":
        out = run_central(o, threads, runs, label, timeout_s=args.timeout)
        out.setdefault("run", str(runs / f"{label}.json"))
        samples, eps = out.get("samples_planned"), out.get("epsilon")
    else:
        out = run_federated(o, p["clients"], runs, label, timeout_s=args.timeout,
                            cpus_per_client=args.cpus_per_client,
                            gpus_per_client=args.gpus_per_client)
        samples, eps = out.get("samples"), out.get("epsilon_max")
    return {"name": name, "arm": p["arm"], "data": p["data"], "dataset": o["dataset"],
            "label_column": o.get("label-column", "label"), "clients": p["clients"],
            "dp": o["dp"], "target": p["target"], **out, "seed": o.get("seed"),
            "samples": None if samples is None else round(samples), "epsilon": eps,
            "target_met": None}


def run(args: argparse.Namespace) -> int:
    planned = plan_rows(args)
    threads = os.cpu_count() or 1
    runs = Path(args.runs) if args.runs else runs_dir("utility")
    folder = result_dir(args.quick, args.out)
    data = {}
    for p in planned:
        o = p["overrides"]
        data.setdefault(p["data"], {k: o[k] for k in (
            "dataset", "max-train-samples", "max-eval-samples", "num-server-rounds",
            "local-epochs")})
    settings = {"target-epsilon": 8.0, "delta": 1e-5, "device": args.device,
                **parse_run_config(args.run_config)}
    result = header("utility", args.quick, settings) | {
        "runs": str(runs), "f1_gap_points": F1_GAP_POINTS, "data": data, "results": []}
    print(f"utility: {len(planned)} rows, runs in {runs}", flush=True)
    # The rows with targets run first (their figures are what a partial run should have);
    # the results keep the table's order.
    position = {p["name"]: i for i, p in enumerate(planned)}
    seeds = parse_seeds(args.seeds)
    if seeds:
        result["seeds"] = seeds
    for p in sorted(planned, key=lambda p: (p["target"] is None, position[p["name"]])):
        draws: list[dict[str, Any]] = []
        for seed in seeds or [None]:  # saved after every run: an interrupted row keeps its runs
            draws.append(run_row(p, args, runs, threads, seed))
            result["results"] = [r for r in result["results"] if r["name"] != p["name"]]
            result["results"].append(combine_draws(draws))
            result["results"].sort(key=lambda r: position[r["name"]])
            result["target_met"] = judge(result["results"])
            save(result, folder)

    result["target_met"] = judge(result["results"])
    print("\n" + table(
        ["name", "clients", "samples", "accuracy", "macro-F1", "epsilon", "wall_s", "target",
         "met"],
        [[r["name"], r["clients"], r.get("samples"), r.get("accuracy"), r.get("macro_f1"),
          r.get("epsilon"), r["wall_s"], r["target"] or "-",
          f"FAILED ({r['log']})" if not r["ok"] else
          "-" if r["target_met"] is None else r["target_met"]]
         for r in result["results"]]))
    for r in result["results"]:
        if r.get("draws"):
            print(f"{r['name']}: mean of {len(r['draws'])} runs (seeds "
                  f"{', '.join(str(d['seed']) for d in r['draws'])}), accuracy "
                  f"{', '.join(fmt(d.get('accuracy'), 4) for d in r['draws'])} "
                  f"(sd {fmt(r.get('accuracy_sd'), 4)})")
    verdict = {True: "met", False: "MISSED", None: "not measured"}[result["target_met"]]
    print(f"row targets: {verdict}")
    return finish(result, folder, ok=all(r["ok"] for r in result["results"]))
