"""PNG figures for people reading a run folder."""

from __future__ import annotations

import io
from pathlib import Path

from fedtune.atomic import write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def partitions_png(path: str | Path, rows: list[dict], labels: tuple[str, ...]) -> None:
    """Stacked bars: examples per client, split by label."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) + 2), 3.2))
    bottom = [0] * len(rows)
    ids = [r["partition_id"] for r in rows]
    if any(r.get("label_counts") is None for r in rows):  # clients with their own data
        ax.bar(ids, [r["num_examples"] for r in rows], label="examples (labels not shared)")
        labels = ()
    for li, name in enumerate(labels):
        heights = [r["label_counts"][li] for r in rows]
        ax.bar(ids, heights, bottom=bottom, label=f"label {name}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if not labels:  # unlabelled data (causal-lm): sizes only
        ax.bar(ids, [r["num_examples"] for r in rows])
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("examples")
    ax.set_title("Client partitions")
    if 0 < len(labels) <= 10 and rows:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def epsilon_png(path: str | Path, report: dict) -> None:
    """Cumulative epsilon per client per round, against the target."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c in report["clients"]:
        ys = [y for y in c.get("epsilon_per_round", [])]
        if ys and any(y is not None for y in ys):
            ax.plot(range(1, len(ys) + 1), [y if y is not None else float("nan") for y in ys],
                    marker="o", linewidth=1, label=f"client {c['partition_id']}")
    if report.get("target_epsilon"):
        ax.axhline(report["target_epsilon"], color="black", linestyle="--", label="target")
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon (delta={report.get('delta', 0):g})")
    ax.set_title("Cumulative privacy spend per client")
    if len(report["clients"]) <= 12:
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
