"""PNG figures for people reading a run folder."""

from __future__ import annotations

import io
from pathlib import Path

from outputs.atomic import write_bytes


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
    for li, name in enumerate(labels):
        heights = [r["label_counts"][li] for r in rows]
        ax.bar(ids, heights, bottom=bottom, label=f"label {name}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("examples")
    ax.set_title("Client partitions")
    if len(labels) <= 10:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
