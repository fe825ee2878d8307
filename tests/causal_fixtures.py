"""Offline causal-LM material: tiny random Llama and GPT-2 decoders with a word-level tokenizer,
and a learnable instruction set (answer with the opposite of a word)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from fedtune.data.prompts import ALPACA_HEADER, ALPACA_HEADER_INPUT
from fedtune.data.toy import FILLER, NEGATIVE, POSITIVE, write_jsonl

OPPOSITES = dict(zip(POSITIVE, NEGATIVE, strict=True)) | dict(zip(NEGATIVE, POSITIVE, strict=True))
# Wide initial weights: with the usual 0.02 a 32-wide model's frozen output layer cannot make any
# token much likelier than the rest (logit gaps under ~0.6), so nothing LoRA does could lower the
# loss much below log(vocabulary size).
INIT_RANGE = 0.3
INSTRUCTION_WORDS = ["Give", "the", "opposite", "of", "Say", "word", "Answer", "in", "one",
                     "Instruction", "Input", "Response", "###", ":", "."]


def _vocab(specials: list[str]) -> dict[str, int]:
    from tokenizers.pre_tokenizers import Whitespace

    words = " ".join([ALPACA_HEADER, ALPACA_HEADER_INPUT, *INSTRUCTION_WORDS, *POSITIVE,
                      *NEGATIVE, *FILLER])
    seen = list(specials)
    for word, _ in Whitespace().pre_tokenize_str(words):
        if word not in seen:
            seen.append(word)
    return {w: i for i, w in enumerate(seen)}


def make_tokenizer(folder: Path, *, llama_style: bool):
    """Word-level tokenizer. Llama style: BOS ``<s>`` added to every encoding, its own pad token;
    GPT-2 style: no BOS, no pad token (fedtune pads with EOS, as for the real GPT-2)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if llama_style:
        vocab = _vocab(["<pad>", "<unk>", "<s>", "</s>"])
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        vocab = _vocab(["<unk>", "<|endoftext|>"])
        special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    if llama_style:
        tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)
    fast.save_pretrained(folder)
    return fast


def make_tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder, llama_style=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=INIT_RANGE,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():  # the same weights in every test session
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_tiny_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder, llama_style=False)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        initializer_range=INIT_RANGE, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def opposite_rows(n: int, seed: int) -> list[dict]:
    """Alpaca rows: answer with the opposite of a word (given in the instruction or the input)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(sorted(OPPOSITES))
        if rng.random() < 0.5:
            rows.append({"instruction": f"Give the opposite of {word} .", "input": "",
                         "output": OPPOSITES[word]})
        else:
            rows.append({"instruction": "Say the opposite of the word .", "input": word,
                         "output": OPPOSITES[word]})
    return rows


def make_instruction_dataset(folder: Path, n_train: int = 240, n_eval: int = 40) -> Path:
    write_jsonl(folder / "train.jsonl", opposite_rows(n_train, seed=1))
    write_jsonl(folder / "validation.jsonl", opposite_rows(n_eval, seed=2))
    return folder
