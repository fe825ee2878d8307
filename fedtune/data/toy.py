"""Offline test material: a tiny random BERT with its own tokenizer, and a learnable toy dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "really", "quite", "very", "a",
          "story", "and", "its", "cast", "ending", "music", "scenes", "overall"]


def rare_words(n: int) -> list[str]:
    """``n`` made-up words ("wabaca", ...) that no toy sentence uses: what a real vocabulary's
    long tail is to the privacy audit's canaries."""
    letters = "bcdfgklmnprstvz"
    vowels = "aeiou"
    return [letters[i % 15] + vowels[(i // 15) % 5] + letters[(i // 75) % 15] + vowels[i % 5]
            + letters[(i // 7) % 15] + "a" for i in range(n)]


def make_tiny_bert(folder: Path, rare: int = 0, width: int = 32) -> Path:
    """A 2-layer, ``width``-wide BERT (random weights) and a WordPiece tokenizer over the toy
    words (and ``rare`` made-up words)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER,
             *rare_words(rare)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary as ``vocab``; its old ``vocab_file`` keyword is
    # silently ignored and leaves a tokenizer that maps every word to [UNK].
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * width,
                        max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def make_tiny_sentence_transformer(folder: Path, pooling: str = "mean",
                                   sentiment_feature: float = 0.0, rare: int = 0,
                                   width: int = 32) -> Path:
    """The tiny BERT saved the way sentence-transformers saves a model: ``modules.json`` naming a
    Pooling module whose ``config.json`` declares ``pooling`` (``mean`` or ``cls``).

    ``sentiment_feature`` > 0 plants what pretraining gives a real model: the positive words'
    embeddings are moved by +v and the negative words' by -v (|v| = that value), so a pooled
    feature separates the toy labels linearly. A random tiny BERT has no such feature, and under
    DP noise its head cannot find one in a few dozen steps (it predicts one class)."""
    make_tiny_bert(folder, rare, width)
    if sentiment_feature > 0:
        _plant_sentiment_direction(folder, sentiment_feature)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False}))
    return folder


def _plant_sentiment_direction(folder: Path, norm: float) -> None:
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    model = BertForSequenceClassification.from_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * norm
    with torch.no_grad():
        table = model.bert.embeddings.word_embeddings.weight
        for words, sign in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
            for word in words:
                table[tokenizer.convert_tokens_to_ids(word)] += sign * v
    model.save_pretrained(folder)


def toy_rows(n: int, seed: int, num_labels: int = 2) -> list[dict]:
    """Sentences labelled by the one sentiment word among filler words (learnable, not trivial)."""
    rng = random.Random(seed)
    words = [NEGATIVE, POSITIVE] if num_labels == 2 else [NEGATIVE, POSITIVE, ["very"]][:num_labels]
    rows = []
    for _ in range(n):
        label = rng.randrange(num_labels)
        body = rng.sample(FILLER, rng.randint(3, 8))
        body.insert(rng.randrange(len(body) + 1), rng.choice(words[label]))
        rows.append({"text": " ".join(body), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_toy_dataset(folder: Path, n_train: int = 600, n_eval: int = 120) -> Path:
    write_jsonl(folder / "train.jsonl", toy_rows(n_train, seed=1))
    write_jsonl(folder / "validation.jsonl", toy_rows(n_eval, seed=2))
    return folder
