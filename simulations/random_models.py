"""Randomly initialised models of a real model's shape, built offline, for speed benchmarks.

Speed does not need trained weights, and a GPU machine without internet cannot download them:
``bert-large`` is BERT-large's shape (24 layers, 1024 wide, 335M parameters) with the MiniLM
package's WordPiece tokenizer (the same 30,522-token vocabulary); ``llama-0.5b`` is
Qwen2.5-0.5B's shape as a Llama (24 layers, 896 wide, 14 heads over 2 key-value heads, a
151,936-token tied embedding: about 0.49B parameters) with a word-level tokenizer over the words
of ``simulations.gpu_causal_lm``'s synthetic sums. ``--check`` builds the same kinds at a tiny
size, for the CPU check of ``gpu_bench.sh``.

    python -m simulations.random_models bert-large OUT_DIR [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def bert_large(folder: Path, check: bool = False) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from fedtune.model.paths import resolve_model_path

    folder.mkdir(parents=True, exist_ok=True)
    minilm = Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    for name in TOKENIZER_FILES:
        if (minilm / name).is_file():
            shutil.copy(minilm / name, folder / name)
    shape = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128) if check else
             dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096))
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2, **shape)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _word_tokenizer(folder: Path):
    """Llama-style word-level tokenizer (BOS on every encoding, its own pad) over the prompt
    template's words and the numbers and words of the synthetic sums."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from fedtune.data.prompts import ALPACA_HEADER, ALPACA_HEADER_INPUT

    words = [w for w, _ in Whitespace().pre_tokenize_str(
        f"{ALPACA_HEADER} {ALPACA_HEADER_INPUT} ### Instruction : Response Input What is + = ? .")]
    vocab: dict[str, int] = {}
    for w in ["<pad>", "<unk>", "<s>", "</s>", *words, *map(str, range(200))]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                            special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def llama_05b(folder: Path, check: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _word_tokenizer(folder)
    shape = (dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2) if check else
             dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2))
    config = LlamaConfig(max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


BUILDERS = {"bert-large": bert_large, "llama-0.5b": llama_05b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help="the same kind at a tiny size")
    args = parser.parse_args(argv)
    folder = BUILDERS[args.kind](args.out, check=args.check)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
