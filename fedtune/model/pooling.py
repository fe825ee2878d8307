"""The sentence feature the classification head reads, matched to how the base model was trained.

``AutoModelForSequenceClassification`` on a BERT checkpoint classifies the NSP pooler output
([CLS] -> dense -> tanh). A sentence-transformers model (all-MiniLM-L6-v2, the default) was trained
with *mean pooling* and its pooler was never trained: a logistic regression on frozen MiniLM
features reaches 0.78 SST-2 accuracy on the mean of the token states and 0.69 on the pooler output
(3,000 rows; the notes on issue 14). Under DP every noisy step counts, so the head starts on the
feature that is already nearly linearly separable.

``pooling = auto`` reads the model folder's own declaration (sentence-transformers' ``modules.json``
and its Pooling module's ``config.json``); a model that declares none keeps the architecture's
standard head (``pooler``). ``mean`` and ``cls`` put a linear ``classifier`` over the plain encoder
(``AutoModel``); the name ``classifier`` makes PEFT train and save it (``modules_to_save``) as it
does the standard head.

Every head starts at zero: the first noisy steps then move a classifier that predicts the uniform
distribution instead of fighting a random one (and LoRA's B, also zero, starts moving once the
head carries a signal: a linear probe first, then fine-tuning, as LP-FT does).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from fedtune.model.adapter import unwrap

HEAD_FILE = "fedtune_head.json"  # written into every saved adapter folder (final/, checkpoints)


def declared_pooling(model_path: str) -> str | None:
    """``mean`` or ``cls`` when a sentence-transformers folder declares that pooling, else None.

    Max pooling and the sqrt-length variant have no counterpart here and count as undeclared.
    """
    folder = Path(model_path)
    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text())
        pooling = next(e for e in entries if e.get("type", "").endswith(".Pooling"))
        config = json.loads((folder / pooling.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, StopIteration, AttributeError):
        return None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve_pooling(setting: str, model_path: str) -> str:
    """What ``pooling`` means for this model: ``mean``, ``cls`` or ``pooler``."""
    if setting != "auto":
        return setting
    return declared_pooling(model_path) or "pooler"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class PooledClassifier(nn.Module):
    """A plain encoder (``AutoModel``) + ``pooling`` + a linear ``classifier``; the forward of an
    ``AutoModelForSequenceClassification`` (same arguments, ``SequenceClassifierOutput``)."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str) -> None:
        super().__init__()
        # The head reads the token states, so the encoder's pooler (BERT/RoBERTa: [CLS] -> dense
        # -> tanh) is dead weight; worse, LoRA on it (lora-targets naming `dense`) would be a
        # trainable tensor with no gradient, which Opacus refuses mid-run.
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder = encoder
        self.config = encoder.config
        self.config.num_labels = num_labels
        self.pooling = pooling
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)
        zero_head(self.classifier)

    def forward(self, input_ids=None, attention_mask=None, labels=None, token_type_ids=None,
                inputs_embeds=None, **_unused) -> SequenceClassifierOutput:
        # PEFT passes output_attentions/output_hidden_states/return_dict: none apply here.
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
        features = pool(out.last_hidden_state, attention_mask, self.pooling)
        logits = self.classifier(features.to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, *args, **kwargs):  # PEFT probes for it
        raise NotImplementedError("a classifier does not generate")


def zero_head(linear: nn.Module) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        if getattr(linear, "bias", None) is not None:
            linear.bias.zero_()


def write_head_config(folder: Path, head: dict) -> None:
    """What a user needs beside the PEFT adapter to rebuild the classifier (``load_classifier``):
    the pooling, the number of labels and, when known, their names in output order."""
    (Path(folder) / HEAD_FILE).write_text(json.dumps(head, indent=2) + "\n")


def read_head_config(folder: str | Path) -> dict:
    path = Path(folder) / HEAD_FILE
    if not path.is_file():  # adapters saved before pooling existed used the standard head
        return {"pooling": "pooler"}
    return json.loads(path.read_text())


def head_description(peft_model) -> dict | None:
    """The head config of a PEFT classifier (None for a model that is not one, e.g. causal-LM)."""
    inner = unwrap(peft_model)  # Opacus wraps it
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if isinstance(base, PooledClassifier):
        return {"pooling": base.pooling, "num_labels": base.config.num_labels}
    if type(base).__name__.endswith("ForSequenceClassification"):
        return {"pooling": "pooler", "num_labels": base.config.num_labels}
    return None
