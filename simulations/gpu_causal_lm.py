"""GPU check: one client's DP-SGD round of causal-LM LoRA on a real small model, with figures.

    python -m simulations.gpu_causal_lm --model /models/SmolLM2-135M       # or a cached hub id
    python -m simulations.gpu_causal_lm --model Qwen/Qwen2.5-0.5B --load-in-4bit

It runs exactly the client's code path (``client.trainer.train_local``: Opacus, Poisson sampling,
length-sorted micro-batches, noise calibrated to ``--target-epsilon`` for this one round) under
bf16 autocast, evaluates before and after, generates from two fixed prompts, and prints samples/s,
epsilon, loss, perplexity and peak GPU memory, then one ``RESULT {json}`` line. It downloads
nothing: the model must be a local folder or already in the Hugging Face cache. Without
``--dataset`` it trains on a synthetic instruction set (small sums), written to a temp folder.
Sized to finish well under 10 minutes on one modern GPU with the defaults.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M"


def local_model(name: str) -> str | None:
    """``name`` as a local folder: itself, or its snapshot in the Hugging Face cache."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached (or not a hub id): the caller explains what to do
        return None


def sums_dataset(folder: Path, n_train: int, n_eval: int, seed: int = 0) -> Path:
    """Alpaca rows 'What is a + b?' -> 'a + b = c.': learnable, checkable, no download."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                a, b = rng.randint(0, 99), rng.randint(0, 99)
                f.write(json.dumps({"instruction": f"What is {a} + {b}?", "input": "",
                                    "output": f"{a} + {b} = {a + b}."}) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="local folder or cached hub id")
    parser.add_argument("--dataset", default="", help="instruction data (default: synthetic)")
    parser.add_argument("--rows", type=int, default=4096, help="training rows of the client")
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="expected Poisson batch")
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--local-epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA (needs bitsandbytes)")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-test without a GPU")
    parser.add_argument("--dp", default="on", choices=("on", "off"),
                        help="DP-SGD (Opacus, the default) or the same round without DP")
    parser.add_argument("--save", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "install a CUDA build of torch, or pass --allow-cpu for a smoke test",
              file=sys.stderr)
        return 2
    path = local_model(args.model)
    if path is None:
        print(f"error: model '{args.model}' is neither a local folder nor in the Hugging Face "
              "cache, and this check downloads nothing. On a machine with internet: "
              f"`huggingface-cli download {args.model} --local-dir ./model`, copy the folder "
              "here, then pass --model ./model", file=sys.stderr)
        return 2

    from client.trainer import train_local
    from fedtune.config import from_run_config
    from fedtune.model.build import load_tokenizer
    from fedtune.model.precision import uses_bf16
    from fedtune.privacy.accounting import epsilon
    from fedtune.privacy.calibration import calibrate, sample_rate
    from fedtune.protocol import PrivacyState
    from fedtune.tasks.registry import task_for

    work = Path(tempfile.mkdtemp(prefix="fedtune-gpu-"))
    dataset = args.dataset or str(sums_dataset(work / "data", args.rows, args.eval_rows))
    cfg = from_run_config({
        "task": "causal-lm", "model": path, "dataset": dataset,
        "max-train-samples": args.rows, "max-eval-samples": args.eval_rows,
        "max-length": args.max_length, "batch-size": args.batch_size,
        "micro-batch-size": args.micro_batch_size, "local-epochs": args.local_epochs,
        "lr": args.lr, "lora-r": args.lora_r, "lora-alpha": 2 * args.lora_r,
        "num-server-rounds": 1, "target-epsilon": args.target_epsilon,
        "delta": min(1e-5, 0.1 / args.rows), "precision": args.precision,
        "load-in-4bit": args.load_in_4bit, "eval-batch-size": 32,
        "dp": "sample" if args.dp == "on" else "off",
    })
    task = task_for(cfg)
    splits = task.load_splits(cfg)
    tokenizer = load_tokenizer(cfg)
    train, evaluation = task.encode(tokenizer, splits.train, cfg), task.encode(tokenizer,
                                                                              splits.eval, cfg)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, 0)
    load_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = task.evaluate(cfg, model, evaluation, tokenizer.pad_token_id, 0)
    n = len(train)
    tokens_per_row = sum(len(ids) for ids in train.input_ids) / max(n, 1)
    state = (PrivacyState(noise_multiplier=calibrate(cfg, n),
                          sample_rate=sample_rate(n, cfg.batch_size))
             if cfg.dp_enabled else PrivacyState())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train_local(model, train, tokenizer.pad_token_id, cfg, state, seed=cfg.seed)
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    after = task.evaluate(cfg, model, evaluation, tokenizer.pad_token_id, 0)
    samples = task.samples(cfg, model, tokenizer, splits)[:2]
    figures = {
        "model": args.model, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": uses_bf16(cfg), "load_in_4bit": cfg.load_in_4bit, "rows": n,
        "steps": result.steps, "expected_batch": cfg.batch_size,
        "dp": args.dp, "noise_multiplier": round(state.noise_multiplier, 4),
        "epsilon": (round(epsilon(state.history, cfg.delta, cfg.accountant), 3)
                    if cfg.dp_enabled else None),
        "delta": cfg.delta, "trainable_params": trainable,
        "samples_per_s": round(result.steps * cfg.batch_size / train_s, 1),
        "tokens_per_row": round(tokens_per_row, 1),
        "tokens_per_s": round(result.steps * cfg.batch_size * tokens_per_row / train_s, 1),
        "train_s": round(train_s, 1), "load_s": round(load_s, 1),
        "train_loss": round(result.train_loss, 4),
        "eval_loss_before": round(before["loss"], 4), "eval_loss_after": round(after["loss"], 4),
        "perplexity_after": round(after["perplexity"], 2),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    for key, value in figures.items():
        print(f"{key:>20}: {value}")
    for s in samples:
        print(f"--- prompt: {s['prompt'][-60:]!r}\n    generation: {s['generation'][:120]!r}")
    print("RESULT " + json.dumps(figures))
    if args.save:  # for the results page: one file per mode, with where and when it ran
        from fedtune.atomic import write_json
        from simulations.benchmarks.common import header

        name = "causal-lm-speed-" + ("dp" if cfg.dp_enabled else "nodp")
        settings = {k.replace("_", "-"): v for k, v in vars(args).items() if k != "save"}
        command = "python -m simulations.gpu_causal_lm " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        write_json(Path(args.save), header(name, not cuda, settings) | figures
                   | {"command": command, "complete": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
