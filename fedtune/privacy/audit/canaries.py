"""The one-run audit's canaries: records made from a seed, and the secret coins that say which of
them the audit client trained on.

A canary is a sequence of random whole words from the tokenizer's vocabulary with a label drawn
evenly over the task's labels: out of distribution, so the model predicts nothing in particular
for it unless it trained on it, and each one unlike the others, so training on one says little
about the rest. The texts and labels follow from ``seed`` (anyone may regenerate them); the coins
come from OS entropy, are written once by the audit client into its audit folder (readable by
its owner only) and are read back in every later round, by ``fedtune privacy audit``, and by
nothing else: they never enter a message.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtune.atomic import write_json

WORDS_PER_CANARY = 4
COINS_FILE = "canaries.json"


@dataclass(frozen=True)
class Canaries:
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # indices into the run's label list

    @property
    def digest(self) -> str:
        """SHA-256 over texts and labels: the coins belong to exactly these canaries."""
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            h.update(f"{text}\x1f{label}\x1e".encode())
        return h.hexdigest()


def canary_words(vocab: dict[str, int]) -> list[str]:
    """Whole, alphabetic words of at least 3 letters (no word pieces, no special tokens), in a
    fixed order."""
    return sorted(w for w in vocab if len(w) >= 3 and w.isascii() and w.isalpha())


def make_canaries(words: list[str], m: int, seed: int, num_labels: int,
                  length: int = WORDS_PER_CANARY) -> Canaries:
    """``m`` canaries from ``seed``: labels balanced over ``num_labels``, texts of ``length``
    words drawn with replacement from ``words``."""
    if len(words) < 2:
        raise ValueError("the tokenizer's vocabulary has too few whole words for canaries")
    rng = np.random.default_rng([seed, 0xA0D17])
    labels = rng.permutation(np.arange(m) % num_labels)
    picks = rng.integers(0, len(words), size=(m, length))
    texts = tuple(" ".join(words[j] for j in row) for row in picks)
    return Canaries(texts, tuple(int(x) for x in labels))


class AuditFolder:
    """The audit client's folder: the coins of its canaries (``canaries.json``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.coins_path = self.path / COINS_FILE

    def coins(self, canaries: Canaries, partition_id: int, *, create: bool,
              seed: int | None = None) -> np.ndarray:
        """The coins of ``canaries`` (True = trained on): read back, or drawn and written
        atomically (owner-only) when ``create`` and there are none yet. Drawn from OS entropy,
        or from ``seed`` for tests and benchmarks (``reproducible-noise``: then anyone with the
        run's settings knows them). Coins written for other canaries are an error, never
        silently replaced: they may already be in a model."""
        if self.coins_path.is_file():
            stored = json.loads(self.coins_path.read_text())
            if stored.get("canaries_sha256") != canaries.digest:
                raise ValueError(
                    f"{self.coins_path} holds the coins of other canaries (another seed, "
                    "audit-canaries or label set): use a fresh audit-dir or output-dir")
            return np.asarray(stored["coins"], dtype=bool)
        if not create:
            raise FileNotFoundError(
                f"{self.coins_path} not found: the audit needs the coins the audit client "
                "wrote; on real hosts pass that host's audit folder (--audit-dir)")
        if seed is None:
            coins = [secrets.randbits(1) == 1 for _ in canaries.texts]
        else:
            rng = np.random.default_rng([seed, 0xC0135])
            coins = [bool(x) for x in rng.integers(0, 2, len(canaries.texts))]
        write_json(self.coins_path, {
            "method": "one-run canaries (Steinke, Nasr, Jagielski 2023)",
            "partition_id": partition_id, "m": len(coins),
            "canaries_sha256": canaries.digest, "coins": coins,
        }, private=True)
        return np.asarray(coins, dtype=bool)
