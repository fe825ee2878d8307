"""PNG figures for people reading a run folder.

Each figure has a builder that returns a matplotlib ``Figure`` (so tests inspect its axes, not
pixels) and a ``*_png`` function that saves it with the atomic writer. Figures are made without
``pyplot``: no global state, no backend switch in the caller's process, nothing to close.

Conventions: rounds and client ids are integers on their axes; epsilon starts at 0 (round 0, before
any training, is drawn at 0) so the first round's spend is visible, with the target as a labelled
line; a run without DP says so in words instead of drawing an empty frame.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from fedtune.atomic import write_bytes

HEATMAP_MIN_LABELS = 11  # from this many labels on, partitions.png is a clients x labels heat map
MANY_CLIENTS = 12  # above this, the epsilon plot draws thin lines without a legend per client


def _new_figure(width: float, height: float, rows: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save_png(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())


def _message(ax, text: str) -> None:
    """A panel that explains in words why there is nothing to plot."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize="medium",
            transform=ax.transAxes)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


# --- partitions.png ----------------------------------------------------------------------------

def partitions_figure(rows: list[dict], labels: tuple[str, ...] | list[str]):
    """Examples per client: stacked bars with a legend for a few labels, a clients x labels heat
    map with a colour bar for many, plain bars when labels are unknown (causal-lm, local data)."""
    labels = tuple(labels)
    ids = [int(r["partition_id"]) for r in rows]
    known = bool(labels) and all(r.get("label_counts") is not None for r in rows)
    if known and len(labels) >= HEATMAP_MIN_LABELS:
        return _partitions_heatmap(rows, labels, ids)
    fig, (ax,) = _new_figure(max(4.5, 0.35 * len(rows) + 2.5), 3.4)
    if known:
        bottom = [0] * len(rows)
        for li, name in enumerate(labels):
            heights = [r["label_counts"][li] for r in rows]
            ax.bar(ids, heights, bottom=bottom, label=f"label {name}")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
    else:
        note = "labels not shared" if labels else "no labels"
        ax.bar(ids, [r["num_examples"] for r in rows], label=f"examples ({note})")
    if 0 < len(ids) <= 30:
        ax.set_xticks(ids)
    else:
        _integer_ticks(ax.xaxis)
    _integer_ticks(ax.yaxis)
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("examples")
    ax.set_title("Client partitions")
    fig.tight_layout()
    return fig


def _partitions_heatmap(rows: list[dict], labels: tuple[str, ...], ids: list[int]):
    width = min(16.0, max(6.0, 0.12 * len(labels) + 3.0))
    height = min(12.0, max(3.2, 0.25 * len(rows) + 1.8))
    fig, (ax,) = _new_figure(width, height)
    grid = [[float(x) for x in r["label_counts"]] for r in rows]
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=0, origin="lower")
    fig.colorbar(image, ax=ax, label="examples")
    if len(rows) <= 30:
        ax.set_yticks(range(len(rows)), [str(i) for i in ids])
    else:
        _integer_ticks(ax.yaxis)
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), [str(x)[:14] for x in labels], rotation=90,
                      fontsize="x-small")
        ax.set_xlabel("label")
    else:
        _integer_ticks(ax.xaxis)
        ax.set_xlabel("label (index into 'labels' in partitions.json)")
    ax.set_ylabel("client (partition id)")
    ax.set_title(f"Client partitions: examples per label ({len(labels)} labels)")
    fig.tight_layout()
    return fig


def partitions_png(path: str | Path, rows: list[dict], labels: tuple[str, ...]) -> None:
    save_png(partitions_figure(rows, labels), path)


# --- privacy/epsilon.png -------------------------------------------------------------------------

def sample_level_dp(report: dict) -> bool:
    """Whether the report is about DP-SGD on the clients (``dp`` = ``sample`` or ``both``)."""
    return report.get("dp") in ("sample", "both") and report.get("max_epsilon") is not None


def no_dp_text(report: dict) -> str:
    """One plain sentence for a run whose sample-level epsilon is infinite."""
    dp = report.get("dp")
    if dp == "client":
        level = report.get("client_level") or {}
        eps = _finite(level.get("epsilon"))
        extra = f"; client-level (DP-FedAvg) epsilon {eps:.3f}" if eps is not None else ""
        return ("No sample-level DP (dp = client): clients trained without DP-SGD, so the "
                f"sample-level epsilon is infinite{extra}")
    if dp == "off":
        return ("No differential privacy: this run trained without DP (dp = off); "
                "epsilon is infinite")
    return "No finite epsilon was reported: epsilon is infinite"


def epsilon_figure(report: dict):
    """Cumulative epsilon per client per round from 0, against the labelled target."""
    fig, (ax,) = _new_figure(6.4, 3.8)
    clients = report.get("clients", [])
    series = []
    for c in clients:
        ys = [_finite(y) for y in c.get("epsilon_per_round", [])]
        if any(y is not None for y in ys):
            series.append((c, ys))
    if not sample_level_dp(report) or not series:
        ax.set_title("Privacy spend per client")
        _message(ax, no_dp_text(report))
        return fig
    many = len(series) > MANY_CLIENTS
    top = 0.0
    rounds = max(len(ys) for _, ys in series)
    for c, ys in series:
        xs = list(range(len(ys) + 1))
        vals = [0.0, *(float("nan") if y is None else y for y in ys)]
        top = max(top, *(y for y in ys if y is not None))
        style = {"linewidth": 0.8, "alpha": 0.5, "color": "tab:blue"} if many else \
            {"linewidth": 1.2, "marker": "o", "markersize": 3.5,
             "label": f"client {c['partition_id']}"}
        (line,) = ax.plot(xs, vals, **style)
        refused = [r for r in c.get("refused_rounds", []) if 1 <= r <= len(ys)]
        if refused:
            ax.plot(refused, [vals[r] for r in refused], linestyle="none", marker="x",
                    markersize=7, color=line.get_color())
    if many:
        best = [max((ys[i] for _, ys in series if i < len(ys) and ys[i] is not None),
                    default=float("nan")) for i in range(rounds)]
        ax.plot(range(rounds + 1), [0.0, *best], color="black", linewidth=2,
                label=f"max over {len(series)} clients")
    target = _finite(report.get("target_epsilon"))
    if target:
        ax.axhline(target, color="black", linestyle="--", linewidth=1,
                   label=f"target epsilon {target:g}")
        top = max(top, target)
    if any(c.get("refused_rounds") for c, _ in series):
        ax.plot([], [], linestyle="none", marker="x", color="grey", label="refused round")
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    ax.set_xlim(-0.2, max(rounds, 1) + 0.2)  # a margin, so end points are not cut in half
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel(f"epsilon (delta = {report.get('delta', 0):g})")
    ax.set_title(f"Cumulative privacy spend per client ({report.get('accountant', '?')})")
    ax.legend(fontsize="x-small", ncol=2 if len(series) > 4 and not many else 1)
    fig.tight_layout()
    return fig


def epsilon_png(path: str | Path, report: dict) -> None:
    save_png(epsilon_figure(report), path)


# --- metrics.png ---------------------------------------------------------------------------------

def _by_round(lines: list[dict]) -> list[dict]:
    """One line per round (the last one written wins), in round order."""
    out: dict[int, dict] = {}
    for x in lines:
        if isinstance(x.get("round"), int):
            out[x["round"]] = x
    return [out[r] for r in sorted(out)]


def metrics_figure(lines: list[dict], config: dict | None = None):
    """Top: validation accuracy per round (seq-cls), or validation loss (causal-lm, with the
    last perplexity in the title). Bottom: the largest epsilon any client has reported so far,
    against the target; or, without DP, a sentence that says so."""
    config = config or {}
    lines = _by_round(lines)
    fig, (top, bottom) = _new_figure(6.4, 5.6, rows=2, sharex=True)
    key = "accuracy" if any(_finite(x.get("accuracy")) is not None for x in lines) else "loss"
    pts = [(x["round"], _finite(x.get(key))) for x in lines]
    pts = [(r, y) for r, y in pts if y is not None]
    if pts:
        top.plot(*zip(*pts, strict=True), marker="o", label=f"validation {key}")
    if key == "accuracy":
        top.set_ylim(0, 1)
        top.set_ylabel("validation accuracy")
    else:
        top.set_ylabel("validation loss")
        train = [(x["round"], _finite(x.get("train_loss"))) for x in lines]
        train = [(r, y) for r, y in train if y is not None]
        if train:
            top.plot(*zip(*train, strict=True), marker=".", linestyle=":",
                     label="train loss (clients)")
    title = f"validation {key} per round"
    ppl = [_finite(x.get("perplexity")) for x in lines]
    ppl = [p for p in ppl if p is not None]
    if ppl:
        title += f" (last perplexity {ppl[-1]:.3g})"
    top.set_title(title)
    if pts:
        top.legend(fontsize="small")
    top.grid(alpha=0.3)

    dp = config.get("dp")
    target = _finite(config.get("target-epsilon"))
    eps, best = [], None
    for x in lines:
        e = _finite(x.get("epsilon_max"))
        if x["round"] == 0 and dp in ("sample", "both"):
            e = 0.0
        if e is not None:
            best = e if best is None else max(best, e)
        if best is not None:
            eps.append((x["round"], best))
    if eps and dp not in ("off", "client"):
        bottom.plot(*zip(*eps, strict=True), marker="o", color="tab:red",
                    label="max epsilon over clients")
        high = max(y for _, y in eps)
        if target and dp in ("sample", "both"):
            bottom.axhline(target, color="black", linestyle="--", linewidth=1,
                           label=f"target epsilon {target:g}")
            high = max(high, target)
        bottom.set_ylim(0, high * 1.1 if high > 0 else 1.0)
        bottom.set_ylabel("epsilon (cumulative)")
        bottom.set_title("privacy spend: the largest epsilon of any client so far")
        bottom.legend(fontsize="small")
        bottom.grid(alpha=0.3)
    else:
        _message(bottom, no_dp_text({"dp": dp}))
    last = max((x["round"] for x in lines), default=0)
    for ax in (top, bottom):
        ax.set_xlim(-0.2, max(last, 1) + 0.2)
        _integer_ticks(ax.xaxis)
    bottom.set_xlabel("round (0 = before training)")
    bottom.xaxis.set_tick_params(labelbottom=True)
    # Fixed margins: tight_layout would measure every label, doubling the cost of a redraw that
    # happens after every round.
    fig.subplots_adjust(left=0.11, right=0.97, top=0.94, bottom=0.09, hspace=0.28)
    return fig


def metrics_png(path: str | Path, lines: list[dict], config: dict | None = None) -> None:
    save_png(metrics_figure(lines, config), path)
