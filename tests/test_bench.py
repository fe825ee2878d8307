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
    utility = {**common, "benchmark": "utility", "samples": 1000, "num_clients": 2,
               "target_points": 3.0, "target_met": True,
               "settings": {"num-server-rounds": 2, "batch-size": 256},
               "results": [{"name": "central-nodp", "dp": "off", "ok": True, "samples": 1000,
                            "accuracy": 0.81, "points_below_reference": 0.0, "wall_s": 9.0,
                            "series": series},
                           {"name": "fed-dir0.3-dp8-ffa", "dp": "sample", "ok": True,
                            "samples": 1000, "accuracy": 0.8, "points_below_reference": 1.0,
                            "epsilon": 7.99, "wall_s": 30.0, "series": series}]}
    folder.mkdir(parents=True, exist_ok=True)
    for r in (throughput, utility):
        (folder / f"{r['benchmark']}.json").write_text(json.dumps(r))


def test_results_page_is_rebuilt_from_the_json_files(tmp_path):
    results = tmp_path / "results"
    _sample_results(results)
    _sample_results(results / "gpu", gpu_name="Test GPU 80GB")
    page = tmp_path / "results.md"
    text = build(results, page)
    assert page.read_text() == text
    assert "| throughput | DP (hooks) / no-DP time <= 1.10 | 1.234 | **MISSED** |" in text
    assert "| throughput (GPU) | DP (hooks) / no-DP time <= 1.10 | 1.234 | **MISSED** |" in text
    assert "| utility | Dirichlet DP rows within 3 points of central no-DP | 1.0 points below " \
           "| met |" in text
    assert "## Throughput: local training, DP vs no DP (GPU)" in text
    assert "GPU Test GPU 80GB" in text and "CPU; 2 cores (Test CPU)" in text
    assert "Not run yet: `python -m simulations.bench scale`" in text
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
