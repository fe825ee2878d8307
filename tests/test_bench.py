"""The pure parts of the benchmarks: the RESULT line, exact byte counts, the results page."""

import json
import subprocess
import sys

import pytest

from fedtune.config import from_run_config
from simulations.benchmarks.bytes import upload_bytes
from simulations.benchmarks.common import finish, parse_result_line, result_line
from simulations.benchmarks.scale import TreeMemory
from simulations.results import build


def test_result_line_is_one_json_line_and_the_last_one_printed(tmp_path, capsys):
    result = {"benchmark": "demo", "ratio": 1.05, "rows": [{"mode": "a\nb"}]}
    line = result_line(result)
    assert line.startswith("RESULT {") and "\n" not in line
    assert parse_result_line("table\nmore\n" + line + "\n") == result
    with pytest.raises(ValueError, match="not a RESULT line"):
        parse_result_line(line + "\ntrailing output")

    assert finish(dict(result), tmp_path) == 0
    out = capsys.readouterr().out
    saved = parse_result_line(out)
    assert saved == {**result, "complete": True}
    assert json.loads((tmp_path / "demo.json").read_text()) == saved


def test_upload_bytes_are_exact(tiny_model):
    """Tiny BERT: hidden 32, 2 layers, intermediate 64, 33 tokens, 64 positions, 2 labels."""
    cfg = from_run_config({"model": str(tiny_model), "lora-r": 8, "lora-targets": "query,value"})
    rows = upload_bytes(cfg)
    h, layers, inter, vocab, pos, r = 32, 2, 64, 33, 64, 8
    head = h * 2 + 2
    lora_a = lora_b = layers * 2 * r * h  # query and value in every layer
    assert rows["fedavg"]["parameters"] == lora_a + lora_b + head
    assert rows["fedavg"]["bytes"] == 4 * (lora_a + lora_b + head)
    assert rows["ffa"]["bytes"] == 4 * (lora_b + head)  # A stays home
    per_layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    full = (vocab + pos + 2) * h + 2 * h + layers * per_layer + (h * h + h) + head
    assert rows["full"]["parameters"] == full and rows["full"]["bytes"] == 4 * full
    assert rows["fedavg"]["full_over_this"] == round(full / (lora_a + lora_b + head), 1)
    assert rows["fedavg"]["target_met"] is (full / (lora_a + lora_b + head) >= 300)


def _sample_results(folder, gpu_name=None):
    machine = {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2, "memory_gb": 8.0,
               "gpu": gpu_name, "load_average_1m": 0.1, "torch": "x", "flwr": "y",
               "opacus": "z"}
    common = {"quick": False, "complete": True, "command": "python -m simulations.bench X",
              "started": "2026-01-01T00:00:00", "machine": machine}
    throughput = {**common, "benchmark": "throughput", "target": 1.1,
                  "settings": {"rows": 4096, "batch-size": 256, "micro-batch-size": 16,
                               "max-length": 128, "steps": 5, "repeats": 2, "threads": 2,
                               "device": "cuda" if gpu_name else "cpu"},
                  "same_batches": True, "ratio_default_mode": 1.234, "target_met": False,
                  "results": [{"mode": "no-dp", "samples_per_s": 50.0, "ratio": 1.0,
                               "target_met": None},
                              {"mode": "dp-hooks", "samples_per_s": 40.5, "ratio": 1.234,
                               "target_met": False}]}
    series = [{"round": 0, "accuracy": 0.5, "epsilon": 0.0},
              {"round": 1, "accuracy": 0.7, "epsilon": 6.0},
              {"round": 2, "accuracy": 0.8, "epsilon": 7.99}]
    sst2 = {"dataset": "sst2", "max-train-samples": 0, "max-eval-samples": 0,
            "num-server-rounds": 2, "local-epochs": 0.5}
    trec = {"dataset": "trec", "max-train-samples": 0, "max-eval-samples": 0,
            "num-server-rounds": 4, "local-epochs": 1.0}
    row = {"ok": True, "samples": 67349, "wall_s": 30.0, "series": series}
    utility = {**common, "benchmark": "utility", "f1_gap_points": 5.0, "target_met": False,
               "settings": {"target-epsilon": 8.0, "delta": 1e-5, "device": "cpu"},
               "data": {"sst2": sst2, "trec": trec},
               "results": [{**row, "name": "central-nodp", "arm": "central", "clients": 1,
                            "dp": "off", "accuracy": 0.85, "macro_f1": 0.849,
                            "points_below_reference": 0.0, "target": None, "target_met": None},
                           {**row, "name": "fed10-iid-dp8", "arm": "federated", "clients": 10,
                            "dp": "sample", "accuracy": 0.834, "macro_f1": 0.83,
                            "epsilon": 7.99, "points_below_reference": 1.6,
                            "samples_note": "corrected after the run.",
                            "target": "10 clients IID DP accuracy >= 0.82", "target_met": True},
                           {**row, "name": "trec6-fed5-dp8", "arm": "federated", "clients": 5,
                            "dp": "sample", "accuracy": 0.8, "macro_f1": 0.7, "epsilon": 7.98,
                            "points_below_nodp": 12.0, "target": "TREC-6 DP macro-F1 within 5 "
                            "points of no-DP", "target_met": False},
                           {**row, "name": "trec6-fed5-nodp", "arm": "federated",
                            "clients": 5, "dp": "off", "accuracy": 0.9, "macro_f1": 0.82,
                            "target": None, "target_met": None},
                           {**row, "ok": False, "name": "fed100-iid-dp8", "clients": 100,
                            "dp": "sample", "target": "100 clients IID DP accuracy >= 0.78",
                            "target_met": None, "series": []}]}
    audit = {**common, "benchmark": "audit",
             "settings": {"max-train-samples": 600, "audit-canaries": 1000, "local-epochs": 15.0,
                          "lr": 0.003, "delta": 1e-5},
             "targets_met": {"dp8": True, "off": False},
             "results": {"dp8": {"ok": True, "epsilon_lower_bound": 0.0, "reported_epsilon": 7.99,
                                 "correct": 55, "guesses": 100, "score": "black-box margin",
                                 "inserted": 497, "wall_s": 400.0},
                         "off": {"ok": True, "epsilon_lower_bound": 1.5, "reported_epsilon": None,
                                 "correct": 95, "guesses": 100, "score": "white-box gradient",
                                 "inserted": 497, "wall_s": 380.0}}}
    folder.mkdir(parents=True, exist_ok=True)
    for r in (throughput, utility, *([audit] if not gpu_name else [])):
        (folder / f"{r['benchmark']}.json").write_text(json.dumps(r))


def test_results_page_is_rebuilt_from_the_json_files(tmp_path):
    results = tmp_path / "results"
    _sample_results(results)
    _sample_results(results / "gpu", gpu_name="Test GPU 80GB")
    page = tmp_path / "results.md"
    text = build(results, page)
    assert page.read_text() == text
    assert "| throughput | DP (hooks) / no-DP time <= 1.10 | 1.234 | **MISSED** |" in text
    # on a GPU the target is issue 17's 1.25 for MiniLM
    assert "| throughput (GPU) | DP (hooks) / no-DP time <= 1.25 | 1.234 | met |" in text
    assert "| utility | 10 clients IID DP accuracy >= 0.82 | 0.8340 | met |" in text
    assert "| utility | TREC-6 DP macro-F1 within 5 points of no-DP | 12.0 points below " \
           "| **MISSED** |" in text
    assert "| utility | 100 clients" not in text  # failed: not measured, not in the summary
    assert "| fed100-iid-dp8 | 100 |" in text and "| FAILED |" in text
    assert "| trec6-fed5-dp8 | 5 | 67,349 | 0.800 | 0.700 | 7.980 |" in text
    assert "2 rounds of 0.5 local epoch over all training rows" in text
    assert "*fed10-iid-dp8, samples: corrected after the run.*" in text  # why a figure changed
    assert "## Throughput: local training, DP vs no DP (GPU)" in text
    assert "GPU Test GPU 80GB" in text and "CPU; 2 cores (Test CPU)" in text
    assert "Not run yet: `python -m simulations.bench scale`" in text
    assert "| audit | audit without DP: lower bound >= 2 | 1.500 | **MISSED** |" in text
    assert "| off | 1.500 | – | 95/100 | white-box gradient | 497 | 380.000 | **MISSED** |" in text
    for png in ("accuracy.png", "epsilon.png", "gpu/accuracy-gpu.png", "gpu/epsilon-gpu.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](results/{png})" in text
    assert build(results, page) == text  # same inputs, same page


def test_tree_memory_sees_a_child_process():
    code = "import time; x = bytearray(80 * 2**20); x[::4096] = b'1' * len(x[::4096]); " \
           "time.sleep(2)"
    with TreeMemory(interval_s=0.1) as memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak_rss >= 80 * 2**20
    assert memory.peak_processes >= 1 and memory.samples >= 2


def _utility_args(*argv):
    import argparse

    from simulations.benchmarks.utility import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser, parser.parse_args(list(argv))


def test_utility_plan_rows():
    from simulations.benchmarks.utility import ROWS, plan_rows

    parser, args = _utility_args()
    assert "--trec-local-epochs" in parser.format_help()
    rows = {r["name"]: r for r in plan_rows(args)}
    assert list(rows) == [r[0] for r in ROWS] and len(rows) == 9
    for r in rows.values():
        o = r["overrides"]
        assert o["target-epsilon"] == 8.0 and o["delta"] == 1e-5 and o["max-eval-samples"] == 0
        assert "batch-size" not in o  # the project default: automatic per client
    sst2 = [r for r in rows.values() if r["data"] == "sst2"]
    assert len(sst2) == 5  # the same rounds and epochs over the same rows: the same samples
    # each client's rounds: all of them centrally, its turns in a federation
    assert {(r["overrides"].get("planned-rounds") or r["overrides"]["num-server-rounds"],
             r["overrides"]["local-epochs"], r["overrides"]["max-train-samples"],
             r["overrides"]["dataset"]) for r in sst2} == {(2, 0.5, 0, args.dataset)}
    assert [rows[n]["clients"] for n in ("fed10-iid-dp8", "fed10-dir0.3-dp8", "fed100-iid-dp8",
                                          "trec6-fed5-dp8")] == [10, 10, 100, 5]
    assert rows["fed10-dir0.3-dp8"]["overrides"]["dirichlet-alpha"] == 0.3
    fed100 = rows["fed100-iid-dp8"]["overrides"]  # the main job's turns: 20 clients a round
    assert (fed100["client-selection"], fed100["min-clients"], fed100["num-server-rounds"],
            fed100["planned-rounds"]) == ("cyclic", 20, 10, 2)
    assert rows["central-nodp"]["overrides"]["dp"] == "off"
    assert rows["trec50-fed5-dp8"]["overrides"]["label-column"] == "fine_label"
    assert rows["trec6-fed5-nodp"]["overrides"]["label-column"] == "label"
    assert rows["trec50-fed5-nodp"]["overrides"]["dp"] == "off"
    trec = rows["trec6-fed5-dp8"]["overrides"]
    assert trec["dataset"].endswith("shared/data/trec") and trec["planned-rounds"] == 4
    assert trec["num-server-rounds"] == 10  # 2 of 5 clients a round, 4 turns each
    assert trec["local-epochs"] == 1.0
    assert rows["fed10-iid-dp8"]["target"] and rows["trec6-fed5-nodp"]["target"] is None

    _, quick = _utility_args("--quick", "--only", "central-dp8, fed100-iid-dp8,trec50-fed5-dp8",
                             "--run-config", "lr=0.02")
    rows = {r["name"]: r for r in plan_rows(quick)}
    assert list(rows) == ["central-dp8", "fed100-iid-dp8", "trec50-fed5-dp8"]
    assert rows["fed100-iid-dp8"]["clients"] == 4 == rows["trec50-fed5-dp8"]["clients"]
    assert rows["fed100-iid-dp8"]["overrides"]["min-clients"] == 2  # 2 of 4 a round
    assert rows["central-dp8"]["overrides"]["max-train-samples"] == 2000
    assert rows["fed100-iid-dp8"]["overrides"]["max-eval-samples"] == 128
    assert rows["trec50-fed5-dp8"]["overrides"]["max-train-samples"] == 600
    assert rows["trec50-fed5-dp8"]["overrides"]["planned-rounds"] == 2  # turns; 4 rounds
    assert all(r["overrides"]["lr"] == 0.02 for r in rows.values())
    with pytest.raises(SystemExit, match="no such row"):
        plan_rows(_utility_args("--only", "fed-iid-dp8")[1])


def test_utility_judge_fills_in_targets_and_gaps():
    from simulations.benchmarks.utility import judge

    rows = [{"name": "central-nodp", "data": "sst2", "accuracy": 0.85},
            {"name": "fed10-iid-dp8", "data": "sst2", "accuracy": 0.83},
            {"name": "fed100-iid-dp8", "data": "sst2", "accuracy": None},
            {"name": "trec6-fed5-dp8", "data": "trec", "macro_f1": 0.80},
            {"name": "trec6-fed5-nodp", "data": "trec", "macro_f1": 0.84},
            {"name": "trec50-fed5-dp8", "data": "trec", "macro_f1": 0.30},
            {"name": "trec50-fed5-nodp", "data": "trec", "macro_f1": 0.60}]
    assert judge(rows) is True
    by = {r["name"]: r for r in rows}
    assert by["fed10-iid-dp8"]["target_met"] is True
    assert by["fed10-iid-dp8"]["points_below_reference"] == 2.0
    assert by["fed100-iid-dp8"]["target_met"] is None
    assert by["trec6-fed5-dp8"]["points_below_nodp"] == 4.0
    assert by["trec6-fed5-dp8"]["target_met"] is True
    assert by["trec50-fed5-dp8"]["points_below_nodp"] == 30.0
    assert by["trec50-fed5-dp8"]["target_met"] is None
    by["fed10-iid-dp8"]["accuracy"] = 0.81
    assert judge(rows) is False


def test_utility_over_seeds_judges_the_mean_and_keeps_every_run(tmp_path, monkeypatch,
                                                                capsys):
    """--seeds: each row runs once per seed (the seed in its run config, a run folder per seed);
    the row's accuracy is the mean, which the target judges, next to every run's own figures;
    the results page names them."""
    import simulations.benchmarks.utility as utility
    from simulations.results import section_utility

    accuracy = {0: 0.83, 1: 0.80, 2: 0.81}  # one run above 0.82, the mean (0.8133) below
    calls = []

    def fake_federated(overrides, clients, folder, name, **_):
        calls.append((name, overrides["seed"]))
        return {"ok": True, "wall_s": 10.0, "run": str(folder / name), "log": "x.log",
                "accuracy": accuracy[overrides["seed"]], "macro_f1": 0.8, "epsilon_max": 7.99,
                "samples": 67349.0, "series": [{"round": 0, "accuracy": 0.5}]}

    monkeypatch.setattr(utility, "run_federated", fake_federated)
    _, args = _utility_args("--only", "fed10-iid-dp8", "--seeds", "0,1,2", "--out",
                            str(tmp_path), "--runs", str(tmp_path / "runs"))
    utility.run(args)
    assert calls == [(f"fed10-iid-dp8-seed{s}", s) for s in (0, 1, 2)]
    result = json.loads((tmp_path / "utility.json").read_text())
    row = result["results"][0]
    assert result["seeds"] == [0, 1, 2] and row["ok"] is True
    assert row["accuracy"] == pytest.approx(0.8133, abs=1e-4)
    assert row["accuracy_sd"] == pytest.approx(0.01528, abs=1e-4)
    assert row["target_met"] is False and result["target_met"] is False
    assert [d["accuracy"] for d in row["draws"]] == [0.83, 0.80, 0.81]
    assert [d["seed"] for d in row["draws"]] == [0, 1, 2] and row["wall_s"] == 30.0
    assert "mean of 3 runs (seeds 0, 1, 2), accuracy 0.8300, 0.8000, 0.8100" in \
        capsys.readouterr().out
    text = section_utility(result, [])
    assert "*fed10-iid-dp8: the mean of 3 runs (seeds 0, 1, 2): accuracy 0.8300, 0.8000, " \
           "0.8100 (standard deviation 0.0153)" in text
    with pytest.raises(SystemExit, match="--seeds '0,0' repeats a seed"):
        utility.parse_seeds("0,0")
    with pytest.raises(SystemExit, match="comma-separated integers"):
        utility.parse_seeds("a")


def test_gpu_only_sections_join_the_causal_modes_and_judge_their_targets(tmp_path):
    from simulations.benchmarks.common import save
    from simulations.results import build

    gpu = tmp_path / "results" / "gpu"
    gpu.mkdir(parents=True)
    base = {"quick": False, "complete": True, "command": "x", "settings": {},
            "machine": {"gpu": "Test GPU", "cpu": "c", "cpu_count": 1}}
    for dp, tokens in (("off", 1000.0), ("on", 600.0)):
        save(base | {"benchmark": f"causal-lm-speed-{'dp' if dp == 'on' else 'nodp'}",
                     "dp": dp, "tokens_per_s": tokens, "samples_per_s": tokens / 40,
                     "tokens_per_row": 40.0, "model": "llama-0.5b", "epsilon": None}, gpu)
    text = build(tmp_path / "results", tmp_path / "results.md")
    assert "| causal-lm-speed (GPU) | DP tokens/s >= 50% of no-DP | 0.600 | met |" in text
    assert "## Causal-LM tokens/s: 0.5B Llama shape (random init), DP vs no DP (GPU)" in text
    assert "throughput-bert-large" not in text.split("## Reproduce")[1]  # GPU-only: no command


def test_random_models_build_offline_and_run(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from fedtune.config import RunConfig
    from fedtune.model.build import load_tokenizer
    from simulations.random_models import bert_large, llama_05b

    bert = bert_large(tmp_path / "bert", check=True)
    llama = llama_05b(tmp_path / "llama", check=True)
    tok = load_tokenizer(RunConfig(model=str(bert)))
    ids = tok(["a fine film"], return_tensors="pt")
    assert AutoModelForSequenceClassification.from_pretrained(bert)(**ids).logits.shape == (1, 2)
    tok = load_tokenizer(RunConfig(model=str(llama), task="causal-lm"))
    ids = tok(["What is 3 + 4 ?"], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and tok.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        assert torch.isfinite(AutoModelForCausalLM.from_pretrained(llama)(ids).logits).all()
