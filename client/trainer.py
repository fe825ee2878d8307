"""Local training of the adapter: DP-SGD through Opacus, or plain SGD for the ``dp=off`` baseline.

One ``PrivacyEngine`` per call (Flower may start a fresh process per message), seeded with the
client's accountant history so that epsilon composes over every round this client trained in.

FedProx's proximal term (mu/2)||w - w_global||^2 is applied as a decoupled pull towards the global
weights after each optimiser step (w -= lr * mu * (w - w_global)), not added to the loss: Opacus
clips and noises only the per-sample gradients it records in its hooks, so a term added to the loss
would be silently dropped under DP. The pull depends only on the weights, never on the data, so
it spends no privacy, and it behaves the same with DP on and off.

``grad-sample-mode`` picks how Opacus gets per-sample gradient norms: ``hooks`` and ``functorch``
store per-sample gradients; ``ghost`` (ghost clipping) computes only their norms and runs a second
backward pass, which pays off for large layers (and on GPUs), not for small LoRA factors on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader

from fedtune.config import RunConfig
from fedtune.model.adapter import unwrap
from fedtune.model.precision import autocast
from fedtune.privacy.accounting import merge_history
from fedtune.privacy.calibration import (
    batch_size_for,
    planned_rounds,
    sample_rate,
    steps_per_round,
)
from fedtune.privacy.fused_clipping import make_private_fused, resolve_grad_sample_mode
from fedtune.privacy.noise_source import noise_seed
from fedtune.protocol import PrivacyState
from fedtune.tasks.registry import task_for


@dataclass(frozen=True)
class LocalResult:
    train_loss: float
    steps: int
    num_examples: int
    samples: int = 0  # rows actually trained on (Poisson batches vary in size)
    # AdamW's moments after the round, by parameter name (``optimizer-state = keep``); never sent
    optimizer_state: dict[str, torch.Tensor] | None = None


MOMENTS = ("exp_avg", "exp_avg_sq")


def save_moments(optimizer, model) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as flat named tensors (``<param>/exp_avg``, ``/exp_avg_sq``,
    ``/step``): a form that travels through Flower's ``context.state`` (an ArrayRecord).

    Under DP the moments are functions of the noised gradients only, so keeping them is
    post-processing: it spends no privacy. They stay on the client (the reply carries the adapter
    alone)."""
    inner = getattr(optimizer, "original_optimizer", optimizer)
    model = unwrap(model)  # names as the PEFT model has them, not Opacus's
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    out = {}
    for p, state in inner.state.items():
        name = names.get(id(p))
        if name is None or "exp_avg" not in state:
            continue
        for key in MOMENTS:
            out[f"{name}/{key}"] = state[key].detach().cpu().clone()
        out[f"{name}/step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    return out


def load_moments(optimizer, model, saved: dict[str, torch.Tensor] | None) -> bool:
    """Restore :func:`save_moments` into a fresh AdamW (not its learning rates: the schedule owns
    those). All or nothing: a state that does not fit every trainable tensor (another rank, a
    changed model) is dropped and the round starts Adam afresh."""
    if not saved:
        return False
    model = unwrap(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, p in params:
        if any(f"{name}/{k}" not in saved or saved[f"{name}/{k}"].shape != p.shape
               for k in MOMENTS):
            return False
    for name, p in params:
        optimizer.state[p] = {
            "step": torch.tensor(float(saved[f"{name}/step"].reshape(-1)[0])),
            **{k: saved[f"{name}/{k}"].to(p.device, p.dtype).clone() for k in MOMENTS},
        }
    return True


def _batches(loader, steps: int):
    """Yield exactly ``steps`` batches, cycling over the loader (fractional or multiple epochs)."""
    done = 0
    while done < steps:
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return


class _EmptyAsNone:
    """The collator of a Poisson loader, with an empty draw as ``None`` (a noise-only step).

    Opacus's own wrapper builds an empty batch from the first non-empty one; when the very first
    draw is empty it falls back to shapes and dtypes of ``dataset[0]``, which for rows that are
    dicts is ``torch.zeros((), dtype=dict)``: a TypeError that stopped a small client (4 rows,
    q = 1/2: 1 run in 16) of a Dirichlet split. The sampler, and so the privacy, is unchanged.
    """

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows):
        return self.collate(rows) if rows else None


def param_groups(model, cfg: RunConfig) -> list[dict]:
    """LoRA tensors at ``lr``, the task head at ``lr * head-lr-scale``.

    Adam moves every weight by about ``lr`` a step whatever its gradient's size, and the head
    and the LoRA factors see very different signal-to-noise ratios under DP; a separate rate
    lets a run tune them apart. On SST-2 so far the head needed the LoRA rate (1e-2): a tenth
    of it did not learn within 130 DP steps (see the notes on issue 2).
    """
    head, lora = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if "modules_to_save" in name else lora).append(p)
    groups = [{"params": lora, "lr": cfg.lr}]
    if head:
        groups.append({"params": head, "lr": cfg.lr * cfg.head_lr_scale})
    return groups


def length_chunks(batch: dict[str, torch.Tensor], rows: int) -> list[dict[str, torch.Tensor]]:
    """The batch sorted by length and cut into chunks of ``rows``, each trimmed to its longest.

    A batch padded to its longest row wastes most of its compute on SST-2 (3.4x more tokens than
    real ones at batch 64); similar lengths together waste little.
    """
    if rows <= 0 or len(batch["labels"]) <= rows:
        return [batch]
    lengths = batch["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    chunks = []
    for start in range(0, len(order), rows):
        idx = order[start:start + rows]
        width = int(lengths[idx].max())
        chunks.append({k: (v[idx, :width] if v.dim() == 2 else v[idx]) for k, v in batch.items()})
    return chunks


def _fp32_grad_samples(model) -> None:
    """Per-sample gradients in the weights' own dtype (fp32) before Opacus clips them.

    Under bf16 autocast Opacus' hooks record bf16 per-sample gradients; a norm computed in bf16 can
    be off by about 0.4%, and a row clipped to it could exceed ``max-grad-norm``: the sensitivity
    the noise is calibrated for. Clipping in fp32 keeps the bound exact. No-op in fp32.
    """
    for p in model.parameters():
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, torch.Tensor) and sample.dtype != p.dtype:
            p.grad_sample = sample.to(p.dtype)


def _loss_fn(task, cfg: RunConfig, criterion, offset: torch.Tensor | None = None):
    """The task's loss; on the logits (classification) when they need Opacus's ghost-clipping
    criterion (it runs two backward passes on the per-sample losses) or the logit adjustment's
    ``offset`` (``tau * log prior``, added in training only)."""
    if criterion is None and offset is None:
        return lambda model, chunk: task.loss(cfg, model, chunk)
    criterion = criterion or torch.nn.functional.cross_entropy

    def on_logits(model, chunk):
        with autocast(cfg, chunk["input_ids"].device):
            logits = model(input_ids=chunk["input_ids"],
                           attention_mask=chunk["attention_mask"]).logits
        logits = logits.float()
        if offset is not None:
            logits = logits + offset.to(logits.device)
        return criterion(logits, chunk["labels"])

    return on_logits


def _step_in_chunks(model, optimizer, batch, rows: int, dp: bool, loss_fn) -> float:
    """One optimiser step for ``batch``, computed over length-sorted chunks; the mean loss.

    Under DP this is Opacus's own recipe for one logical (Poisson) batch in several physical
    ones (what ``BatchMemoryManager`` does): every chunk but the last is clipped and summed into
    ``summed_grad`` by a skipped step; the last step adds the noise once and updates, so the
    result is exactly that of one big batch. Without DP the chunk losses are weighted so that
    the accumulated gradient is the batch mean.
    """
    chunks = length_chunks(batch, rows)
    total = len(batch["labels"])
    loss_sum = 0.0
    for i, chunk in enumerate(chunks):
        n = len(chunk["labels"])
        loss = loss_fn(model, chunk)
        loss_sum += float(loss.detach()) * n
        if not dp:
            (loss * (n / total)).backward()
            continue
        loss.backward()
        _fp32_grad_samples(model)
        if i < len(chunks) - 1:
            optimizer.signal_skip_step(do_skip=True)
            optimizer.step()  # clip + accumulate only
            optimizer.zero_grad(set_to_none=True)  # keeps summed_grad after a skipped step
    optimizer.step()
    return loss_sum / total


def _lr_schedule(optimizer, cfg: RunConfig, done: int, total: int):
    """A callable to run before each step: ``linear`` decays every group's rate to 0 over the
    client's planned steps of the whole run (not per round), ``constant`` does nothing.

    Late DP steps with a large Adam rate mostly add noise to a model that has stopped improving;
    decaying over the run keeps the early steps fast and the late ones quiet.
    """
    base = [g["lr"] for g in optimizer.param_groups]
    step = [done]

    def apply() -> None:
        if cfg.lr_schedule == "linear":
            factor = max(0.0, 1.0 - step[0] / max(total, 1))
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * factor
        step[0] += 1

    return apply


def _proximal_pull(params, anchor, rate: float) -> None:
    """One gradient step on (mu/2)||w - w_global||^2; ``rate`` = lr * mu, capped so that it never
    overshoots the global weights."""
    rate = min(rate, 1.0)
    with torch.no_grad():
        for p, a in zip(params, anchor, strict=True):
            p.sub_(rate * (p - a))


def _noise_generator(params, seed: int, reproducible: bool) -> torch.Generator:
    """The generator Opacus draws the noise with: its own stream, on the weights' device.

    Its seed follows ``fedtune.privacy.noise_source`` (secret unless ``reproducible-noise``).
    It is a stream apart from the Poisson sampler's (which stays seeded: reproducible batches),
    so the sampled batches do not depend on the noise draws (the DP analysis assumes independent
    randomness) and are the same as the no-DP Poisson baseline's. ``torch.normal`` refuses a CPU
    generator for CUDA tensors (and Opacus does not move it). Torch's generator is a Mersenne
    Twister / Philox, not a CSPRNG: its seed is secret, its output is not cryptographically
    unpredictable (Opacus's ``secure_mode`` would need ``torchcsprng``, which no longer builds
    for current torch).
    """
    return torch.Generator(device=params[0].device).manual_seed(
        noise_seed("dp-noise", seed, reproducible))


def _break_noise(optimizer) -> None:
    """The ``no-noise`` fault: Opacus's noise step replaced by the clipped sum alone; its
    accountant hook still records the planned noise multiplier, so the reported epsilon is wrong."""
    def add_no_noise() -> None:
        for p in optimizer.params:
            if getattr(p, "summed_grad", None) is not None:  # ghost clipping: p.grad is the sum
                p.grad = p.summed_grad.view_as(p)

    optimizer.add_noise = add_no_noise


def _noise_only_step(optimizer, params) -> None:
    """An empty Poisson batch under DP: still one noised step, as Opacus takes for an empty
    batch (zero per-sample gradients, so the update is noise of the same std on every trainable
    tensor); the accountant's hook counts it once. Skipping it would leave the step in the
    accounting but out of the mechanism: an empty batch the adversary can see (no update) leaks
    (about q(1-q)^n of extra delta per step)."""
    for p in params:
        p.grad = torch.zeros_like(p)  # ghost clipping accumulates p.grad
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()


def train_local(model, dataset, pad_token_id: int, cfg: RunConfig,
                state: PrivacyState, seed: int, *, poisson: bool | None = None,
                optimizer_state: dict[str, torch.Tensor] | None = None,
                skip_noise: bool = False,
                logit_offset: torch.Tensor | None = None) -> LocalResult:
    """Train ``model`` in place for one round; under DP, ``state.history`` grows by its steps.

    ``dataset`` and the loss are the task's (``tasks/registry``); everything about privacy is
    the same for every task. ``poisson`` makes the non-private baseline draw Opacus's Poisson
    batches too (DP always does): both then see the same batches from the same seed, which is
    what a fair DP-overhead measurement needs (the throughput benchmark). By default, without
    DP, batches are shuffled. ``optimizer_state`` (the previous round's AdamW moments, under
    ``optimizer-state = keep``) continues Adam where this client left it: restarted each round,
    Adam's first steps are about ``lr * sign(gradient)``, and under DP noise that sign is mostly
    noise (the notes on issue 14). ``skip_noise`` is the ``no-noise`` test fault: clipped but
    unnoised steps, accounted as if noised (a broken DP-SGD for the privacy audit to catch).
    ``logit_offset`` (``logit-adjustment``: tau x log of the client's noisy label prior) is
    added to the logits in the loss, never at prediction.
    """
    task = task_for(cfg)
    n = len(dataset)
    batch_size = batch_size_for(cfg, n)
    steps = steps_per_round(n, batch_size, cfg.local_epochs)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # shuffling (the loader runs on the CPU)
    torch.manual_seed(seed)  # LoRA dropout; Poisson sampling
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    if cfg.optimizer_state == "keep":
        load_moments(optimizer, model, optimizer_state)
    poisson = cfg.dp_enabled if poisson is None else poisson or cfg.dp_enabled
    collate = task.collator(pad_token_id)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=not poisson,
                        collate_fn=collate, generator=generator)
    engine = criterion = close = None
    model.train()
    if cfg.dp_enabled:
        engine = PrivacyEngine(accountant=cfg.accountant)
        engine.accountant.history = list(state.history)
        mode = resolve_grad_sample_mode(cfg.grad_sample_mode, model)
        private = dict(optimizer=optimizer, data_loader=loader,
                       noise_multiplier=state.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                       noise_generator=_noise_generator(params, seed, cfg.reproducible_noise))
        if mode == "fused":
            model, optimizer, loader, close = make_private_fused(engine, module=model, **private)
        elif mode == "ghost":
            model, optimizer, criterion, loader = engine.make_private(
                module=model, poisson_sampling=True, grad_sample_mode=mode, **private)
        else:
            model, optimizer, loader = engine.make_private(
                module=model, poisson_sampling=True, grad_sample_mode=mode, **private)
        close = close or model._close  # drop Opacus hooks; the PEFT model lives on without them
        if skip_noise:
            _break_noise(optimizer)
        q = sample_rate(n, batch_size)
        assert abs(optimizer.expected_batch_size - n * q) <= 1, "Opacus derived a different q"
    elif poisson:  # Opacus's own Poisson sampler, from the loader's seeded generator
        loader = DPDataLoader.from_data_loader(loader)
    if poisson:  # the only loader that can draw nothing
        loader.collate_fn = _EmptyAsNone(collate)
    losses, samples = [], 0
    loss_fn = _loss_fn(task, cfg, criterion, logit_offset)
    schedule = _lr_schedule(optimizer, cfg, done=state.rounds_trained * steps,
                            total=planned_rounds(cfg) * steps)
    try:
        for batch in _batches(loader, steps):
            schedule()
            if not batch:  # an empty Poisson draw (None from _EmptyAsNone)
                # Nothing to learn from, but under DP the step still adds noise (and counts).
                if engine is not None:
                    optimizer.zero_grad(set_to_none=True)
                    _noise_only_step(optimizer, params)
                    if anchor is not None:
                        _proximal_pull(params, anchor, cfg.lr * cfg.proximal_mu)
                continue
            optimizer.zero_grad(set_to_none=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = _step_in_chunks(model, optimizer, batch, cfg.micro_batch_size,
                                   dp=engine is not None, loss_fn=loss_fn)
            samples += len(batch["labels"])
            if anchor is not None:
                _proximal_pull(params, anchor, cfg.lr * cfg.proximal_mu)
            losses.append(loss)
    finally:
        if engine is not None:
            state.history = merge_history(engine.accountant.history)
            close()
    moments = save_moments(optimizer, model) if cfg.optimizer_state == "keep" else None
    return LocalResult(
        train_loss=sum(losses) / max(len(losses), 1), steps=steps, num_examples=n,
        samples=samples, optimizer_state=moments,
    )
