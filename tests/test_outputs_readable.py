"""Run-folder outputs a person can read: file modes, figures, the report without DP, the adapter's
base-model name. Figures are checked through the axes their builders return, not through pixels."""

import json
import os
import stat
from contextlib import contextmanager

import pytest
import torch

from fedtune.atomic import current_umask, write_json, write_text
from fedtune.config import DEFAULT_MODEL
from fedtune.outputs.checkpoint import damage, write_checkpoint
from fedtune.outputs.plots import epsilon_figure, metrics_figure, partitions_figure
from fedtune.outputs.privacy_report import render, write_human_report
from fedtune.outputs.run_folder import RunFolder


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _report(dp: str = "sample", rounds: int = 3) -> dict:
    on = dp in ("sample", "both")
    clients = []
    for pid in range(3):
        eps = [round(4.0 + pid * 0.3 + r, 3) for r in range(rounds)] if on else [None] * rounds
        clients.append({
            "partition_id": pid, "num_examples": 100, "noise_multiplier": 0.9 if on else None,
            "sample_rate": 0.16, "steps": 6 * rounds, "rounds_trained": rounds,
            "epsilon": eps[-1], "epsilon_per_round": eps,
            "refused_rounds": [rounds] if pid == 2 else [],
            "refusal_reasons": ["privacy budget exhausted: test"] if pid == 2 else [],
            **({"crosscheck": {"pld_epsilon": eps[-1], "rdp_epsilon": 9.6}} if on else {}),
        })
    return {"dp": dp, "target_epsilon": 8.0, "delta": 1e-3, "accountant": "prv",
            "max_grad_norm": 1.0, "rounds": rounds, "clients": clients,
            "max_epsilon": max(c["epsilon"] for c in clients) if on else None}


def _integers(values) -> bool:
    return all(float(v).is_integer() for v in values)


# --- file modes ---------------------------------------------------------------------------------

def test_atomic_writes_follow_the_umask(tmp_path):
    with umask(0o022):
        assert current_umask() == 0o022
        write_json(tmp_path / "report.json", {"a": 1})
        assert mode(tmp_path / "report.json") == 0o644
        write_text(tmp_path / "secret", "x", private=True)
        assert mode(tmp_path / "secret") == 0o600
    with umask(0o077):
        write_json(tmp_path / "report.json", {"a": 2})  # a rewrite takes the umask of now
        assert mode(tmp_path / "report.json") == 0o600
    with umask(0o002):
        write_text(tmp_path / "shared.md", "x")
        assert mode(tmp_path / "shared.md") == 0o664


def test_checkpoint_folders_and_files_follow_the_umask(tmp_path):
    def fill(folder):
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))  # 0o600
        (folder / "state").mkdir(mode=0o700)
        write_text(folder / "state" / "server.json", "{}", private=True)

    with umask(0o022):
        write_checkpoint(tmp_path / "checkpoints" / "round-001", fill, {"round": 1})
    folder = tmp_path / "checkpoints" / "round-001"
    assert damage(folder) is None
    assert mode(folder) == 0o755
    assert mode(folder / "manifest.json") == 0o644
    assert mode(folder / "adapter_model.safetensors") == 0o644
    assert mode(folder / "state") == 0o755 and mode(folder / "state" / "server.json") == 0o644


# --- epsilon.png ---------------------------------------------------------------------------------

def test_epsilon_plot_starts_at_zero_with_integer_rounds_and_a_labelled_target():
    fig = epsilon_figure(_report())
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0
    assert ax.get_ylim()[1] > 8.0
    assert _integers(ax.get_xticks())
    clients = [line for line in ax.get_lines() if line.get_label().startswith("client")]
    assert len(clients) == 3
    for line in clients:  # round 0 at epsilon 0: the first round's spend is visible
        assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == 0
        assert list(line.get_xdata()) == [0, 1, 2, 3]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "target epsilon 8" in labels and "refused round" in labels


def test_epsilon_plot_with_many_clients_draws_the_max_without_a_legend_per_client():
    report = _report()
    report["clients"] = [dict(report["clients"][0], partition_id=i) for i in range(20)]
    (ax,) = epsilon_figure(report).axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "max over 20 clients" in labels and not any(x.startswith("client") for x in labels)


@pytest.mark.parametrize("dp", ["off", "client"])
def test_without_sample_level_dp_the_epsilon_figure_says_so_instead_of_an_empty_frame(dp):
    report = _report(dp)
    if dp == "client":
        report["client_level"] = {"epsilon": 3.21}
    (ax,) = epsilon_figure(report).axes
    assert not ax.get_lines() and not ax.axison
    (text,) = ax.texts
    assert "epsilon is infinite" in text.get_text()
    assert ("dp = off" in text.get_text()) == (dp == "off")
    if dp == "client":
        assert "client-level (DP-FedAvg) epsilon 3.210" in text.get_text()


# --- partitions.png ------------------------------------------------------------------------------

def _rows(num_clients: int, num_labels: int) -> list[dict]:
    return [{"partition_id": i, "num_examples": 5 * num_labels,
             "label_counts": [(i + j) % 9 for j in range(num_labels)]}
            for i in range(num_clients)]


def test_partitions_with_many_labels_is_a_heat_map_with_a_colour_bar():
    fig = partitions_figure(_rows(4, 77), tuple(f"intent_{i}" for i in range(77)))
    ax, colorbar = fig.axes
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (4, 77)
    assert colorbar.get_ylabel() == "examples"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
    assert _integers(ax.get_xticks())


def test_partitions_with_few_labels_are_stacked_bars_with_a_legend_and_integer_client_ticks():
    fig = partitions_figure(_rows(3, 2), ("neg", "pos"))
    (ax,) = fig.axes
    assert not ax.images
    assert list(ax.get_xticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["label neg", "label pos"]
    many = partitions_figure(_rows(40, 2), ("neg", "pos")).axes[0]
    assert _integers(many.get_xticks())


def test_partitions_without_labels_draw_sizes():
    rows = [{"partition_id": i, "num_examples": 10 + i, "label_counts": None} for i in range(3)]
    (ax,) = partitions_figure(rows, ()).axes
    assert [p.get_height() for p in ax.patches] == [10, 11, 12]


# --- metrics.png ---------------------------------------------------------------------------------

def _lines(rounds: int, **extra) -> list[dict]:
    out = []
    for r in range(rounds + 1):
        line = {"round": r, "loss": 1.0 / (r + 1), "accuracy": 0.5 + 0.1 * r}
        if r:
            line.update(train_loss=0.4, epsilon_max=2.0 * r, **extra)
        out.append(line)
    return out


def test_append_metrics_draws_metrics_png(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.write_config({"dp": "sample", "target-epsilon": 8.0})
    with umask(0o022):
        for line in _lines(2):
            run.append_metrics(line)
    png = run.root / "metrics.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and mode(png) == 0o644
    before = png.read_bytes()
    run.rewrite_metrics(run.read_metrics()[:2])  # a resume cuts the log: the figure follows
    assert png.read_bytes() != before


def test_metrics_figure_accuracy_and_epsilon_from_zero_with_integer_rounds():
    top, bottom = metrics_figure(_lines(3), {"dp": "sample", "target-epsilon": 8.0}).axes
    (acc,) = top.get_lines()
    assert list(acc.get_xdata()) == [0, 1, 2, 3] and top.get_ylabel() == "validation accuracy"
    eps = bottom.get_lines()[0]
    assert list(eps.get_xdata()) == [0, 1, 2, 3] and list(eps.get_ydata()) == [0, 2, 4, 6]
    assert bottom.get_ylim()[0] == 0 and bottom.get_ylim()[1] > 8
    assert "target epsilon 8" in [t.get_text() for t in bottom.get_legend().get_texts()]
    for ax in (top, bottom):
        assert _integers(ax.get_xticks())


def test_metrics_figure_for_causal_lm_plots_loss_and_without_dp_says_so():
    lines = [{k: v for k, v in x.items() if k != "accuracy"} for x in _lines(2)]
    for x in lines:
        x["perplexity"] = 2.0
        x["epsilon_max"] = None
    top, bottom = metrics_figure(lines, {"dp": "off"}).axes
    assert top.get_ylabel() == "validation loss" and "perplexity 2" in top.get_title()
    assert not bottom.get_lines() and "epsilon is infinite" in bottom.texts[0].get_text()


# --- report.md -----------------------------------------------------------------------------------

def test_report_without_dp_says_so_plainly(tmp_path):
    md = render(_report("off"))
    assert ("No differential privacy: this run trained without DP (dp = off); epsilon is "
            "infinite") in md
    for gone in ("target epsilon", "clipping norm", "DP-SGD", "Sample-level", "epsilon.png"):
        assert gone not in md
    assert "| 2 | 100 | 18 | 3 | 3 |" in md and "budget exhausted" in md
    write_human_report(tmp_path, _report("off"))
    assert (tmp_path / "epsilon.png").read_bytes()[:4] == b"\x89PNG"


def test_report_explains_the_rdp_check_above_the_target():
    md = render(_report())
    assert "target epsilon per client: 8" in md and "clipping norm C = 1" in md
    assert "RDP is a looser upper bound" in md
    assert "The guarantee is the **epsilon** column, from the configured `prv` accountant" in md
    assert "exceeds the target 8 for 3 client(s)" in md
    assert "![epsilon per round](epsilon.png)" in md


# --- final/adapter_config.json -------------------------------------------------------------------

def _tiny_peft(tiny_model):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2,
                                            target_modules=["query", "value"]))
    for p in model.parameters():  # non-zero B, so a wrong load would show
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    return model


def test_adapter_names_its_base_model_by_id_and_still_loads(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.write_config({"model": DEFAULT_MODEL})
    model = _tiny_peft(tiny_model)
    with umask(0o022):
        run.save_adapter(model, run.final_dir, meta={"round": 1})
    assert {mode(p) for p in run.final_dir.iterdir()} == {0o644}
    config = json.loads((run.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_MODEL
    card = run.final_dir / "README.md"
    if card.is_file():
        assert str(tiny_model) not in card.read_text()
    assert damage(run.final_dir) is None  # the manifest covers the rewritten files
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(run.final_dir))
    want = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    got = loaded.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())


def test_adapter_of_a_local_model_folder_keeps_its_path(tiny_model, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.write_config({"model": str(tiny_model)})
    run.save_adapter(_tiny_peft(tiny_model), run.final_dir)
    config = json.loads((run.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
