"""``bytes``: what one client uploads per round under fedavg and ffa, against the full model.

Counted exactly as the strategies count traffic (``strategies.base.record_bytes``: payload bytes
of the tensors a reply carries, without framing), on the tensors the client really sends
(``fedtune.model.lora_layout.travelling_keys`` of the adapter state): fedavg sends LoRA A, B and the
head; ffa keeps the seed-shared A at home. The full model is every parameter of the same base
model with its classification head, what full fine-tuning with FedAvg would upload. Targets:
fedavg at most 1/300 of the full model, ffa at most 1/600.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fedtune.launch.flwr_cli import parse_run_config
from fedtune.project import PROJECT_ROOT, project_defaults
from simulations.benchmarks.cli import common_arguments
from simulations.benchmarks.common import finish, header, result_dir, table

TARGETS = {"fedavg": 300, "ffa": 600}


def upload_bytes(cfg, num_labels: int = 2) -> dict[str, Any]:
    """Upload per client per round of each aggregation and of the full model, in bytes."""
    from transformers import AutoModelForSequenceClassification

    from fedtune.arrays import record_bytes
    from fedtune.model.adapter import adapter_state
    from fedtune.model.build import build_model, resolve_model_path
    from fedtune.model.lora_layout import travelling_keys

    rows: dict[str, Any] = {}
    for aggregation in TARGETS:
        model = build_model(dataclasses.replace(cfg, aggregation=aggregation, device="cpu"),
                            num_labels)
        state = adapter_state(model)
        sent = {k: state[k].numpy() for k in travelling_keys(state, aggregation)}
        rows[aggregation] = {"bytes": record_bytes(sent), "tensors": len(sent),
                             "parameters": int(sum(v.size for v in sent.values()))}
    full = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model),
                                                              num_labels=num_labels)
    params = {k: p.detach().numpy() for k, p in full.named_parameters()}
    rows["full"] = {"bytes": record_bytes(params), "tensors": len(params),
                    "parameters": int(sum(v.size for v in params.values()))}
    for aggregation, target in TARGETS.items():
        fraction = rows["full"]["bytes"] / rows[aggregation]["bytes"]
        rows[aggregation].update({"full_over_this": round(fraction, 1), "target": target,
                                  "target_met": fraction >= target})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "the same as the full run (it takes seconds)")


def run(args: argparse.Namespace) -> int:
    from fedtune.config import from_run_config

    overrides = parse_run_config(args.run_config)
    cfg = from_run_config(project_defaults(PROJECT_ROOT) | overrides)
    folder = result_dir(args.quick, args.out)
    result = header("bytes", args.quick, {"model": cfg.model, "lora-r": cfg.lora_r,
                                          "lora-targets": ",".join(cfg.lora_targets),
                                          "num-labels": 2, "dtype": "float32", **overrides})
    rows = upload_bytes(cfg)
    result["results"] = [{"upload": name, **row} for name, row in rows.items()]
    result["target_met"] = all(rows[a]["target_met"] for a in TARGETS)
    print(table(["upload per client per round", "bytes", "parameters", "full / this", "target",
                 "met"],
                [[name, row["bytes"], row["parameters"], row.get("full_over_this"),
                  f">= {row['target']}" if "target" in row else None, row.get("target_met")]
                 for name, row in rows.items()]))
    return finish(result, folder)
