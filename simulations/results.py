"""Regenerate the results page, ``docs/results.md``, and its plots from the benchmarks' JSON.

    python -m simulations.results                       # docs/results/*.json -> docs/results.md
    python -m simulations.results --results docs/results/quick --page docs/results/quick/results.md

Everything on the page comes from the result files, which each benchmark writes with the machine
it ran on and the exact command: nothing is typed in by hand, so the page cannot drift from the
measurements. A benchmark without a result says so; a target that was missed says MISSED. Rows
measured on a GPU (``<results>/gpu/``, written by ``simulations/gpu_bench.sh``) are marked GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from fedtune.atomic import write_bytes, write_text
from fedtune.project import PROJECT_ROOT

ORDER = ("throughput", "federation", "bytes", "utility", "scale", "strategies", "audit",
         "secagg", "throughput-bert-large", "causal-lm-speed")
# Only ``simulations/gpu_bench.sh`` writes these (docs/results/gpu/); the issue 17 targets.
GPU_ONLY = ("throughput-bert-large", "causal-lm-speed")
GPU_TARGETS = {"throughput": 1.25, "throughput-bert-large": 1.15}
BERT_LARGE_FP32_NODP = 637.0  # samples/s on an H200 before precision = auto (issue 17)
CAUSAL_DP_SHARE = 0.5
FULL_COMMANDS = {
    "throughput": "python -m simulations.bench throughput",
    "federation": "python -m simulations.bench federation",
    "bytes": "python -m simulations.bench bytes",
    "utility": "python -m simulations.bench utility",
    "scale": "python -m simulations.bench scale",
    "strategies": "python -m simulations.bench strategies",
    "audit": "python -m simulations.bench audit",
    "secagg": "python -m simulations.bench secagg",
}


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """``{benchmark: result}`` for every result JSON in ``folder`` (not its subfolders)."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "benchmark" in data:
            out[data["benchmark"]] = data
    return out


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**MISSED**", None: "not measured"}[met]


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def where(result: dict[str, Any]) -> str:
    """One line: where and when a result was measured, and how busy the machine was."""
    m = result.get("machine", {})
    device = f"GPU {m['gpu']}" if m.get("gpu") and result.get("settings", {}).get(
        "device", "auto") != "cpu" else "CPU"
    kind = "quick run (pipeline check, not a measurement)" if result.get("quick") else "full run"
    partial = "" if result.get("complete") else " — **incomplete** (the run stopped early)"
    return (f"*{kind}{partial}; {device}; {m.get('cpu_count', '?')} cores ({m.get('cpu', '?')}), "
            f"{m.get('memory_gb', '?')} GB, torch threads {m.get('torch_threads', '?')}, "
            f"load average {m.get('load_average_1m', '?')} at start; torch {m.get('torch', '?')},"
            f" flwr {m.get('flwr', '?')}, opacus {m.get('opacus', '?')}; "
            f"started {result.get('started', '?')}.*\n\n"
            f"Command: `{result.get('command', '?')}`")


def _default_mode(r: dict[str, Any]) -> str:
    """The DP mode the target is judged on: fused clipping since it became the default, hooks in
    results taken before."""
    return "fused" if any(x["mode"] == "dp-fused" for x in r.get("results", [])) else "hooks"


def section_throughput(r: dict[str, Any]) -> str:
    rows = [[x["mode"], x["samples_per_s"], x["ratio"],
             "–" if x["target_met"] is None else verdict(x["target_met"]), x.get("cpu_ratio")]
            for x in r["results"]]
    s = r["settings"]
    headers = ["mode", "samples/s", "no-DP / DP time ratio", "target <= 1.10",
               "CPU-time ratio (process time)"]
    return (f"{md_table(headers, rows)}"
            f"\n\n{s['rows']:,} SST-2 rows, expected Poisson batch {s['batch-size']}, "
            f"micro-batches of {s['micro-batch-size']}, max length {s['max-length']}, "
            f"{s['steps']} steps x {s['repeats']} repeat(s) per mode (median), "
            f"{s['threads']} thread(s), device {s['device']}. Same Poisson batches in every "
            f"mode: {fmt(r.get('same_batches'))}. Target (default mode, {_default_mode(r)}): "
            f"{verdict(r.get('target_met'))}.")


def section_causal_speed(r: dict[str, Any]) -> str:
    rows = [[x["dp"], x["tokens_per_s"], x["samples_per_s"], x.get("peak_gpu_mem_gib"),
             fmt(x.get("epsilon"))] for x in r["results"]]
    share = r.get("dp_share")
    return (md_table(["DP", "tokens/s", "samples/s", "peak GPU GiB", "epsilon"], rows)
            + f"\n\nModel: {r['results'][0]['model']} (random init), "
            f"{r['results'][0]['tokens_per_row']} tokens per row. DP tokens/s as a share of "
            f"no-DP: {fmt(share)} (target >= {CAUSAL_DP_SHARE:g}: "
            f"{verdict(None if share is None else share >= CAUSAL_DP_SHARE)}).")


def causal_speed(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The two one-mode files of ``simulations.gpu_causal_lm --save`` as one result."""
    runs = [results[k] for k in ("causal-lm-speed-nodp", "causal-lm-speed-dp") if k in results]
    if not runs:
        return None
    by = {x["dp"]: x for x in runs}
    share = (by["on"]["tokens_per_s"] / by["off"]["tokens_per_s"]
             if {"on", "off"} <= set(by) and by["off"]["tokens_per_s"] else None)
    return {**runs[-1], "benchmark": "causal-lm-speed", "results": runs, "dp_share": share}


def section_federation(r: dict[str, Any]) -> str:
    c, f = r.get("central", {}), r.get("federated", {})
    rows = [[f"centralized (1 process, {r.get('central_threads', '?')} threads)",
             c.get("samples_planned"), c.get("wall_s"), r.get("central_samples_per_s"),
             c.get("accuracy"), c.get("epsilon")],
            [f"federated ({r.get('num_clients')} clients, {r.get('parallel_clients')} in "
             "parallel, flwr run)", f.get("samples"), f.get("wall_s"),
             r.get("federated_samples_per_s"), f.get("accuracy"), f.get("epsilon_max")]]
    s = r["settings"]
    return (f"{md_table(['arm', 'samples', 'wall s', 'samples/s', 'accuracy', 'epsilon'], rows)}"
            f"\n\nFederation / centralized samples/s: **{fmt(r.get('ratio'))}** (target >= "
            f"{r.get('target')}: {verdict(r.get('target_met'))}). Of the federation's "
            f"{fmt(f.get('wall_s'), 1)} s, {fmt(r.get('federated_fixed_s'), 1)} s are outside "
            f"its rounds (SuperLink, Ray, process start-up, data loading, shutdown); during its "
            f"rounds it trains {fmt(r.get('federated_rounds_samples_per_s'), 1)} samples/s, the "
            f"centralized trainer {fmt(r.get('central_train_only_samples_per_s'), 1)} samples/s "
            f"(training steps only). {s.get('max-train-samples'):,} rows, "
            f"{s.get('num-server-rounds')} rounds of {s.get('local-epochs')} epoch, batch "
            f"{s.get('batch-size')}, DP epsilon {s.get('target-epsilon')} ({s.get('dp')}, "
            f"{s.get('grad-sample-mode')}).")


def section_bytes(r: dict[str, Any]) -> str:
    rows = [[x["upload"], x["bytes"], x["parameters"], x.get("full_over_this"),
             f">= {x['target']}" if "target" in x else "–",
             verdict(x["target_met"]) if "target_met" in x else "–"] for x in r["results"]]
    s = r["settings"]
    return (md_table(["upload per client per round", "bytes", "parameters", "full model / this",
                      "target", "met"], rows)
            + f"\n\n{s.get('model')}, LoRA r={s.get('lora-r')} on {s.get('lora-targets')} plus "
            f"the classification head, {s.get('dtype')}; payload bytes as the strategies count "
            "them (no framing).")


def section_utility(r: dict[str, Any], plots: list[str]) -> str:
    rows = [[x["name"] + (" (separate run)" if x.get("from_run") else ""), x.get("clients"),
             x.get("samples"), x.get("accuracy"),
             x.get("macro_f1"), x.get("epsilon"), x.get("wall_s"), x.get("target") or "–",
             "FAILED" if not x.get("ok") else
             "–" if x.get("target_met") is None else verdict(x["target_met"])]
            for x in r["results"]]
    d = r.get("data", {})
    sst2, trec = d.get("sst2"), d.get("trec")
    text = md_table(["row", "clients", "samples", "accuracy", "macro-F1", "epsilon", "wall s",
                     "target", "met"], rows)
    text += ("\n\nDP at epsilon 8 (delta 1e-5) per client, or over the whole training set in "
             "the centralized rows; automatic batch size per client; accuracy and macro-F1 on "
             "the validation split after the last round.")
    if sst2:
        text += (f" SST-2 rows: the main job's compute, {sst2['num-server-rounds']} rounds of "
                 f"{sst2['local-epochs']} local epoch over "
                 f"{fmt(sst2['max-train-samples']) if sst2['max-train-samples'] else 'all'} "
                 "training rows, so every row trains on the same samples however they are "
                 "split; targets: 10 clients IID >= 0.82, 10 clients Dirichlet(0.3) >= 0.80, "
                 "100 clients IID >= 0.78 accuracy.")
    if trec:
        text += (f" TREC rows: 5 IID clients, {trec['num-server-rounds']} rounds of "
                 f"{trec['local-epochs']} local epoch over "
                 f"{fmt(trec['max-train-samples']) if trec['max-train-samples'] else 'all'} "
                 "training rows (6 coarse labels, or 50 fine ones); target: TREC-6 with DP within "
                 f"{fmt(r.get('f1_gap_points'), 0)} macro-F1 points of TREC-6 without; TREC-50 "
                 "has no target, its gap is reported.")
    gaps = [f"{x['name']} {x['points_below_nodp']:.1f}" for x in r["results"]
            if "points_below_nodp" in x]
    if gaps:
        text += f" Macro-F1 points below no-DP: {', '.join(gaps)}."
    text += f" All row targets: {verdict(r.get('target_met'))}."
    for x in r["results"]:  # a row from a separate run says so, and how it differed
        if x.get("from_run"):
            text += (f"\n\n*{x['name']}: from the run started {x['from_run']}"
                     f"{'; ' + x['from_note'] if x.get('from_note') else ''}.*")
        if x.get("draws"):  # a mean over seeds: every run's figures beside it
            runs = x["draws"]
            text += (f"\n\n*{x['name']}: the mean of {len(runs)} runs (seeds "
                     f"{', '.join(str(d.get('seed')) for d in runs)}): accuracy "
                     f"{', '.join(fmt(d.get('accuracy'), 4) for d in runs)} (standard deviation "
                     f"{fmt(x.get('accuracy_sd'), 4)}), macro-F1 "
                     f"{', '.join(fmt(d.get('macro_f1'), 4) for d in runs)}.*")
        if x.get("samples_note"):  # a figure corrected after the run, and why
            text += f"\n\n*{x['name']}, samples: {x['samples_note']}*"
    return text + "".join(f"\n\n![{p}]({p})" for p in plots)


def section_scale(r: dict[str, Any]) -> str:
    rows = [[str(x["clients"]), x.get("round_s_mean"), x.get("peak_rss_mb"),
             x.get("peak_pss_mb"), x.get("peak_processes"), x.get("wall_s"),
             "ok" if x.get("ok") else "FAILED"] for x in r["results"]]
    return (md_table(["clients", "s per round", "peak RSS MB (process tree)", "peak PSS MB",
                      "processes", "run wall s", "status"], rows)
            + f"\n\n{r.get('per_round')} clients per round, "
            f"{r['settings'].get('num-server-rounds')} rounds, {r.get('rows_per_client')} rows "
            "per client, DP on. Peak RSS growth "
            f"{fmt(r.get('rss_growth'))}x, PSS {fmt(r.get('pss_growth'))}x, time per round "
            f"{fmt(r.get('round_time_growth'))}x; target (memory flat within "
            f"{r.get('flat_tolerance', 0.1):.0%}): {verdict(r.get('target_met'))}.")


def section_strategies(r: dict[str, Any]) -> str:
    rows = [[x["strategy"], x.get("accuracy"), x.get("bytes_up_per_round"),
             x.get("epsilon_max"), x.get("wall_s")] for x in r["results"]]
    return md_table(["strategy", "accuracy", "bytes up per round", "epsilon", "wall s"], rows)


AUDIT_TARGETS = {"dp8": "audit at epsilon 8: lower bound <= reported epsilon",
                 "off": "audit without DP: lower bound >= 2",
                 "broken": "audit of a noise-free DP-SGD (reports epsilon 1): flagged"}


def section_audit(r: dict[str, Any]) -> str:
    met = r.get("targets_met") or {}
    rows = [[name, x.get("epsilon_lower_bound"), x.get("reported_epsilon"),
             f"{x.get('correct')}/{x.get('guesses')}", x.get("score"), x.get("inserted"),
             x.get("wall_s"), verdict(met.get(name))]
            for name, x in r["results"].items()]
    s = r["settings"]
    return (md_table(["run", "epsilon lower bound", "reported epsilon", "correct / guesses",
                      "best score", "canaries inserted", "run wall s", "target"], rows)
            + f"\n\nSST-2, all-MiniLM-L6-v2, 2 clients of {s.get('max-train-samples', 0) // 2} "
            f"rows; client 0 holds {s.get('audit-canaries')} canaries (each inserted by a "
            f"secret coin); 1 round of {s.get('local-epochs')} local epochs, lr {s.get('lr')}, "
            f"delta {s.get('delta')}. Lower bounds at 95% confidence (one-run audit, Steinke et "
            "al. 2023). `broken` skips the DP noise on the audit client while reporting "
            "epsilon 1 (`fault-injection = 0:*:no-noise`).")


def section_secagg(r: dict[str, Any]) -> str:
    rows = [[name, x.get("round_s"), x.get("bytes_up_per_client_round"),
             x.get("bytes_down_per_round"), x.get("accuracy"), x.get("wall_s")]
            for name, x in r["results"].items()]
    s = r["settings"]
    return (md_table(["arm", "s per round (rounds 2+)", "bytes up per client per round",
                      "bytes down per round", "accuracy", "run wall s"], rows)
            + f"\n\n{r.get('num_clients')} clients, SST-2 ({s.get('max-train-samples')} rows), "
            f"{s.get('num-server-rounds')} rounds of {s.get('local-epochs')} local epoch, DP at "
            f"epsilon {s.get('target-epsilon')}. Bytes count every message of all four SecAgg+ "
            f"stages. SecAgg+ / plain: time {fmt(r.get('time_ratio'))}x, upload "
            f"{fmt(r.get('upload_ratio'))}x; target (each <= {r.get('target')}x): "
            f"{verdict(r.get('target_met'))}.")


def summary_rows(results: dict[str, dict[str, Any]], tag: str) -> list[list[Any]]:
    rows = []
    if (r := results.get("throughput")) and not tag:  # on a GPU: its own target, below
        rows.append([f"throughput{tag}", f"DP ({_default_mode(r)}) / no-DP time <= 1.10",
                     fmt(r.get("ratio_default_mode")), verdict(r.get("target_met"))])
    if r := results.get("federation"):
        rows.append([f"federation{tag}", "federated / centralized samples/s >= 0.85",
                     fmt(r.get("ratio")), verdict(r.get("target_met"))])
    if r := results.get("bytes"):
        for x in r["results"]:
            if "target" in x:
                rows.append([f"bytes{tag}", f"{x['upload']} <= 1/{x['target']} of the full "
                             "model", f"1/{fmt(x['full_over_this'], 1)}",
                             verdict(x["target_met"])])
    if r := results.get("utility"):
        measured = [x for x in r["results"] if x.get("target_met") is not None]
        for x in measured:
            value = (f"{x['points_below_nodp']:.1f} points below" if "points_below_nodp" in x
                     else fmt(x.get("accuracy"), 4))  # 0.7798 must not read as 0.780
            if x.get("draws"):
                value += f" (mean of {len(x['draws'])} runs)"
            rows.append([f"utility{tag}", x["target"], value, verdict(x["target_met"])])
        if not measured:
            rows.append([f"utility{tag}", "row targets", "–", verdict(None)])
    if r := results.get("audit"):
        for name, x in r["results"].items():
            rows.append([f"audit{tag}", AUDIT_TARGETS.get(name, name),
                         fmt(x.get("epsilon_lower_bound")),
                         verdict((r.get("targets_met") or {}).get(name))])
    if r := results.get("secagg"):
        rows.append([f"secagg{tag}", "SecAgg+ round time and upload <= 2x plain fedavg",
                     f"{fmt(r.get('time_ratio'))}x, {fmt(r.get('upload_ratio'))}x",
                     verdict(r.get("target_met"))])
    if r := results.get("scale"):
        rows.append([f"scale{tag}", "peak memory flat in the number of clients",
                     f"{fmt(r.get('rss_growth'))}x", verdict(r.get("target_met"))])
    if tag:  # the GPU targets of issue 17
        for name, limit in GPU_TARGETS.items():
            if (r := results.get(name)) and (ratio := r.get("ratio_default_mode")) is not None:
                rows.append([f"{name}{tag}", f"DP ({_default_mode(r)}) / no-DP time <= {limit:g}",
                             fmt(ratio), verdict(ratio <= limit)])
        if r := results.get("throughput-bert-large"):
            nodp = next((x["samples_per_s"] for x in r["results"] if x["mode"] == "no-dp"), None)
            if nodp is not None:
                rows.append([f"throughput-bert-large{tag}",
                             f"no-DP samples/s >= 3 x {BERT_LARGE_FP32_NODP:g} (fp32 before)",
                             fmt(nodp, 1), verdict(nodp >= 3 * BERT_LARGE_FP32_NODP)])
        if (r := results.get("causal-lm-speed")) and r.get("dp_share") is not None:
            rows.append([f"causal-lm-speed{tag}", "DP tokens/s >= 50% of no-DP",
                         fmt(r["dp_share"]), verdict(r["dp_share"] >= CAUSAL_DP_SHARE)])
    return rows


def plot_utility(r: dict[str, Any], folder: Path, suffix: str) -> list[Path]:
    """Accuracy per round per setting, and epsilon per round per DP setting (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("accuracy", "validation accuracy", "accuracy"),
                              ("epsilon", "epsilon (max over clients)", "epsilon")):
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        drawn = 0
        for x in r["results"]:
            pts = [(p["round"], p[key]) for p in x.get("series", []) if p.get(key) is not None]
            if pts and (key == "accuracy" or x.get("dp") != "off"):
                ax.plot(*zip(*pts, strict=True), marker="o", label=x["name"])
                drawn += 1
        if key == "epsilon":
            ax.axhline(8.0, color="grey", linestyle="--", linewidth=1, label="target 8")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(f"utility: {ylabel} per round{' (GPU)' if suffix else ''}")
        if drawn:
            ax.legend(fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)
        path = folder / f"{name}{suffix}.png"
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def render(results: dict[str, dict[str, Any]], gpu: dict[str, dict[str, Any]],
           plots: dict[str, list[str]], source: str = "docs/results") -> str:
    """The page, as Markdown; ``plots`` maps ``utility``/``utility-gpu`` to image paths."""
    parts = [
        "# Benchmarks\n",
        "Generated by `python -m simulations.results` from the result files in "
        f"`{source}/` (do not edit by hand). Each benchmark prints a table and a last line "
        "`RESULT {json}`, and saves that JSON with the machine it ran on and its command. "
        "Speed figures depend on the machine and on anything else running on it: each section "
        "says where and when it was measured, with the load average at the start.\n",
        "## Summary\n",
    ]
    if speed := causal_speed(gpu):
        gpu = {**gpu, "causal-lm-speed": speed}
    rows = summary_rows(results, "") + summary_rows(gpu, " (GPU)")
    parts.append(md_table(["benchmark", "target", "measured", "verdict"], rows) if rows else
                 "No results yet: run the commands below, then `python -m simulations.results`.")
    sections = {"throughput": ("Throughput: local training, DP vs no DP", section_throughput),
                "federation": ("Federation efficiency", section_federation),
                "bytes": ("Bytes uploaded per client per round", section_bytes),
                "utility": ("Utility: accuracy and macro-F1 at epsilon 8 (SST-2, TREC)", None),
                "scale": ("Scale: 100 and 1,000 simulated clients", section_scale),
                "strategies": ("Strategies: fedavg vs ffa vs hetero-rank", section_strategies),
                "audit": ("Privacy audit: lower bounds on epsilon", section_audit),
                "secagg": ("Secure aggregation: SecAgg+ vs plain fedavg", section_secagg),
                "throughput-bert-large": ("Throughput: BERT-large shape (random init), DP vs no "
                                          "DP", section_throughput),
                "causal-lm-speed": ("Causal-LM tokens/s: 0.5B Llama shape (random init), DP vs "
                                    "no DP", section_causal_speed)}
    for name in ORDER:
        title, fn = sections[name]
        for tag, source in (("", results), (" (GPU)", gpu)):
            r = source.get(name)
            if r is None:
                if not tag and name != "strategies" and name not in GPU_ONLY:
                    parts.append(f"\n## {title}\n\nNot run yet: `{FULL_COMMANDS[name]}`.")
                continue
            body = (section_utility(r, plots.get("utility" + ("-gpu" if tag else ""), []))
                    if name == "utility" else fn(r))
            parts.append(f"\n## {title}{tag}\n\n{body}\n\n{where(r)}")
    parts.append("\n## Reproduce\n\n```bash\n" + "\n".join(FULL_COMMANDS[n] for n in ORDER
                                                           if n not in GPU_ONLY)
                 + "\npython -m simulations.results\n```\n\nOn a machine with a CUDA GPU: "
                 "`bash simulations/gpu_bench.sh` (throughput no-DP vs DP of MiniLM on full SST-2 "
                 "and of a BERT-large-shaped model, causal-LM tokens/s with and without DP of a "
                 "0.5B Llama-shaped model, within 8 minutes; `--utility` adds the utility rows; "
                 "results in `docs/results/gpu/`, marked GPU above). Each benchmark "
                 "takes `--quick` (a minute or two, results in `docs/results/quick/`, never on this"
                 " page) to check the pipeline.")
    return "\n".join(parts) + "\n"


def build(results_dir: Path, page: Path) -> str:
    results = load_results(results_dir)
    gpu = load_results(results_dir / "gpu")
    plots: dict[str, list[str]] = {}
    for key, source, folder, suffix in (("utility", results, results_dir, ""),
                                        ("utility-gpu", gpu, results_dir / "gpu", "-gpu")):
        if "utility" in source:
            paths = plot_utility(source["utility"], folder, suffix)
            plots[key] = [os.path.relpath(p, page.parent) for p in paths]
    try:
        source = str(results_dir.relative_to(PROJECT_ROOT))
    except ValueError:
        source = str(results_dir)
    text = render(results, gpu, plots, source)
    write_text(page, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(PROJECT_ROOT / "docs" / "results"),
                        help="folder of result JSON files (GPU ones in its gpu/ subfolder)")
    parser.add_argument("--page", default="", help="Markdown file to write "
                        "(default: docs/results.md, or results.md inside --results if it is "
                        "not docs/results)")
    args = parser.parse_args(argv)
    results_dir = Path(args.results).resolve()
    default_dir = (PROJECT_ROOT / "docs" / "results").resolve()
    page = Path(args.page) if args.page else (
        PROJECT_ROOT / "docs" / "results.md" if results_dir == default_dir
        else results_dir / "results.md")
    build(results_dir, page.resolve())
    print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
