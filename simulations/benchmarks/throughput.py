"""``throughput``: local training samples/s without DP and with DP-LoRA, on the same batches.

Every mode runs the project's own trainer (``client/trainer.py`` ``train_local``) on the same rows,
from the same initial adapter, with the same seed, so each draws the same Opacus Poisson batches
(the non-private baseline is asked for Poisson sampling too; the benchmark checks that every mode
trained on the same number of rows). DP modes differ only in how Opacus gets per-sample gradient
norms: ``fused`` (fedtune's, what ``auto`` picks for LoRA), or Opacus's ``hooks``, ``functorch`` or
``ghost`` (``grad-sample-mode``). Modes run in turn, ``repeats``
times (the order rotates, so no mode always runs first), after one untimed warm-up step; each
mode's figure is its median over the repeats.

The ratio printed is no-DP samples/s divided by DP samples/s: how much longer DP training takes
(1.10 = 10% slower). Target: at most 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from fedtune.project import PROJECT_ROOT, project_defaults
from simulations.benchmarks.cli import common_arguments
from simulations.benchmarks.common import finish, header, result_dir, save, table

MODES = (("no-dp", "off", "hooks"), ("dp-fused", "sample", "fused"),
         ("dp-hooks", "sample", "hooks"), ("dp-functorch", "sample", "functorch"),
         ("dp-ghost", "sample", "ghost"))
TARGET = 1.10
DEFAULT_MODE = "dp-fused"  # grad-sample-mode = auto on a LoRA model

FULL = {"rows": 4096, "steps": 8, "repeats": 3, "settings": {}}
QUICK = {"rows": 512, "steps": 3, "repeats": 1, "settings": {"batch-size": 32}}


def summarise(times: dict[str, list[float]], samples: dict[str, list[int]],
              cpu: dict[str, list[float]]) -> dict[str, Any]:
    """Median samples/s per mode over the repeats so far, and each DP mode's time ratio.

    Beside wall time, the process's CPU time: on a machine shared with other work, wall time
    also counts waiting for a core, CPU time much less so."""
    done = [name for name, _, _ in MODES if times[name]]
    same_batches = all(samples[name] == samples["no-dp"] for name in done)
    rates = {name: statistics.median(s / t for s, t in zip(samples[name], times[name],
                                                           strict=True)) for name in done}
    cpu_rates = {name: statistics.median(s / t for s, t in zip(samples[name], cpu[name],
                                                               strict=True)) for name in done}
    rows: list[dict[str, Any]] = []
    for name, dp, mode in MODES:
        if name not in rates:
            continue
        ratio = rates["no-dp"] / rates[name] if "no-dp" in rates else None
        rows.append({"mode": name, "dp": dp, "grad_sample_mode": mode if dp != "off" else None,
                     "samples_per_s": round(rates[name], 2),
                     "samples": samples[name], "seconds": [round(t, 2) for t in times[name]],
                     "ratio": None if ratio is None else round(ratio, 3),
                     "cpu_samples_per_s": round(cpu_rates[name], 2),
                     "cpu_ratio": round(cpu_rates["no-dp"] / cpu_rates[name], 3)
                     if "no-dp" in cpu_rates else None,
                     "target_met": None if dp == "off" or ratio is None else ratio <= TARGET})
    default = next((r for r in rows if r["mode"] == DEFAULT_MODE), {})
    return {"results": rows, "same_batches": same_batches, "target": TARGET,
            "ratio_default_mode": default.get("ratio"), "target_met": default.get("target_met")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "512 rows, batch 32, 3 steps per mode: about a minute")
    parser.add_argument("--rows", type=int, default=0,
                        help="training rows (the protected dataset; q = batch/rows); 0 = the "
                             "preset, -1 = the whole training split")
    parser.add_argument("--steps", type=int, default=0, help="timed DP steps per mode and repeat")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per mode")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: every core, as one training process would)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--modes", default="",
                        help="comma-separated modes to time (default: all of "
                             f"{', '.join(m[0] for m in MODES)}; no-dp is always one)")
    parser.add_argument("--name", default="throughput",
                        help="result name (file <name>.json), e.g. throughput-bert-large for "
                             "another --run-config model")


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from client.trainer import train_local
    from fedtune.config import from_run_config
    from fedtune.data.batching import TokenizedDataset
    from fedtune.data.loading import load_splits
    from fedtune.model.build import load_tokenizer
    from fedtune.model.precision import resolve_device
    from fedtune.privacy.budget import ClientBudget
    from fedtune.privacy.calibration import batch_size_for, steps_per_epoch
    from fedtune.protocol import PrivacyState
    from fedtune.tasks.registry import task_for

    preset = QUICK if args.quick else FULL
    rows_wanted = args.rows or preset["rows"]
    steps = args.steps or preset["steps"]
    repeats = args.repeats or preset["repeats"]
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    overrides = {"dataset": args.dataset, "max-train-samples": max(rows_wanted, 0),
                 "device": args.device, "num-server-rounds": 1, "target-epsilon": 8.0,
                 "lr-schedule": "constant", **preset["settings"],
                 **parse_run_config(args.run_config)}
    base = from_run_config(project_defaults(PROJECT_ROOT) | overrides)
    splits = load_splits(base)
    tokenizer = load_tokenizer(base)
    data = TokenizedDataset.from_texts(tokenizer, splits.train["text"], splits.train["label"],
                                       base.max_length)
    n = len(data)
    # local-epochs such that one call takes exactly `steps` Poisson steps, at a batch pinned so
    # that the new local-epochs does not trim it again
    batch = batch_size_for(base, n)
    base = dataclasses.replace(base, batch_size=batch,
                               local_epochs=steps / steps_per_epoch(n, batch))
    sigma_state = PrivacyState()
    ClientBudget(base, sigma_state, n).start("throughput")  # a realistic noise level
    settings = {**overrides, "rows": n, "steps": steps, "repeats": repeats, "threads": threads,
                "batch-size": batch_size_for(base, n), "micro-batch-size": base.micro_batch_size,
                "max-length": base.max_length, "noise-multiplier": sigma_state.noise_multiplier,
                "device": str(resolve_device(base))}
    folder = result_dir(args.quick, args.out)
    result = header(args.name, args.quick, settings)
    wanted = {m.strip() for m in args.modes.split(",") if m.strip()} | {"no-dp"}
    unknown = wanted - {name for name, _, _ in MODES}
    if args.modes and unknown:
        raise SystemExit(f"throughput: no such mode(s): {', '.join(sorted(unknown))}")
    modes = tuple(m for m in MODES if not args.modes or m[0] in wanted)

    def one(dp: str, mode: str, seed: int, cfg_steps: float | None = None
            ) -> tuple[float, int, float]:
        cfg = dataclasses.replace(base, dp=dp, grad_sample_mode=mode,
                                  local_epochs=cfg_steps or base.local_epochs)
        model = task_for(cfg).seeded_model(cfg, splits.num_labels)
        state = PrivacyState(noise_multiplier=sigma_state.noise_multiplier,
                             sample_rate=sigma_state.sample_rate)
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        out = train_local(model, data, tokenizer.pad_token_id, cfg, state, seed=seed,
                          poisson=True)
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out.samples, time.process_time() - cpu_started

    print(f"throughput: {n} rows, {steps} steps x {repeats} repeat(s) per mode, expected batch "
          f"{batch_size_for(base, n)}, {threads} thread(s), {settings['device']}", flush=True)
    batch = batch_size_for(base, n)
    for _, dp, mode in modes:  # warm-up: one step of every mode
        one(dp, mode, seed=0, cfg_steps=1 / steps_per_epoch(n, batch))
    times: dict[str, list[float]] = {name: [] for name, _, _ in MODES}
    samples: dict[str, list[int]] = {name: [] for name, _, _ in MODES}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in MODES}
    for rep in range(repeats):
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for name, dp, mode in order:
            took, seen, cpu_s = one(dp, mode, seed=1000 + rep)
            times[name].append(took)
            samples[name].append(seen)
            cpu[name].append(cpu_s)
            print(f"  repeat {rep + 1}: {name:<13} {seen} samples in {took:.1f} s "
                  f"= {seen / took:.1f} samples/s", flush=True)
            save(result | summarise(times, samples, cpu), folder)  # a run cut short keeps its rows
    result.update(summarise(times, samples, cpu))
    save(result, folder)
    print("\n" + table(["mode", "samples/s", "no-DP / DP", f"<= {TARGET}", "CPU-time ratio"],
                       [[r["mode"], r["samples_per_s"], r["ratio"], r["target_met"],
                         r["cpu_ratio"]]
                        for r in result["results"]]))
    print(f"same Poisson batches in every mode: {'yes' if result['same_batches'] else 'NO'}; "
          f"DP/no-DP time ratio with the default mode (fused): {result['ratio_default_mode']:.3f}"
          f" (target <= {TARGET}: {'met' if result['target_met'] else 'MISSED'})")
    return finish(result, folder, ok=result["same_batches"])
