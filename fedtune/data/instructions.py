"""Loading instruction (or plain text) data for ``task = causal-lm`` as prompt/response pairs.

Same sources, splits, seeded shuffle and caps as the classification data (``tasks/data.py``), so
server and clients derive identical partitions; the rows are standardised to two string columns,
``prompt`` (template applied; empty for plain text) and ``response``.
"""

from __future__ import annotations

import datasets

from fedtune.config import ConfigError, RunConfig
from fedtune.data.loading import TEXT_COLUMN_GUESSES, Splits, load_raw, shuffle_and_cap
from fedtune.data.prompts import detect_form, to_pairs


def _standardise(ds: datasets.Dataset, cfg: RunConfig, where: str) -> tuple[datasets.Dataset, str]:
    form, roles = detect_form(ds.column_names, cfg.text_column, TEXT_COLUMN_GUESSES)
    wanted = list(dict.fromkeys(roles.values()))
    prompts, responses = to_pairs({c: list(ds[c]) for c in wanted}, form, roles,
                                  cfg.prompt_template, where)
    return datasets.Dataset.from_dict({"prompt": prompts, "response": responses}), form


def load_instruction_splits(cfg: RunConfig) -> Splits:
    """Train/eval ``prompt``/``response`` rows named by ``cfg``; ``labels`` is empty."""
    train, evaluation, source = load_raw(cfg)
    train, form = _standardise(train, cfg, f"{source} ({cfg.train_split})")
    evaluation, eval_form = _standardise(evaluation, cfg, f"{source} ({cfg.eval_split})")
    if eval_form != form:
        raise ConfigError(
            f"run-config key 'dataset': the {cfg.train_split} rows of {source} are {form} rows, "
            f"the {cfg.eval_split} rows are {eval_form} rows; give both splits the same columns"
        )
    train, evaluation = shuffle_and_cap(train, evaluation, cfg)
    return Splits(train=train, eval=evaluation, labels=(), source=source, form=form)
