"""Instruction data in its three shapes, and the prompt template that turns a row into text.

A causal-LM example is a (prompt, response) pair: the model reads both, but is trained and scored
only on the response (the prompt is the user's question, not something to imitate). Rows come as
Alpaca (``instruction``, optional ``input``, ``output``), as ``prompt`` + ``response`` (or
``completion``), or as plain ``text``, which has no prompt: every token is learnt.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedtune.config import ConfigError

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                       "provides further context. Write a response that appropriately completes "
                       "the request.")

RESPONSE_COLUMNS = ("response", "completion")


def render_prompt(template: str, instruction: str, context: str = "") -> str:
    """The text the model sees before its response, ending where the response starts."""
    if template == "alpaca":
        if context:
            return (f"{ALPACA_HEADER_INPUT}\n\n### Instruction:\n{instruction}\n\n"
                    f"### Input:\n{context}\n\n### Response:\n")
        return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    if template == "plain":
        return f"{instruction}\n{context}\n" if context else f"{instruction}\n"
    raise ConfigError(f"run-config key 'prompt-template' = '{template}' is not implemented")


def detect_form(columns: Sequence[str], text_column: str, guesses: Sequence[str]
                ) -> tuple[str, dict[str, str]]:
    """(form, role -> column): ``alpaca``, ``prompt-response`` or ``text``.

    An explicit ``text-column`` asks for plain text; otherwise Alpaca columns win over
    prompt/response columns, which win over a guessed text column.
    """
    cols = set(columns)
    if text_column:
        if text_column not in cols:
            raise ConfigError(f"run-config key 'text-column' = '{text_column}': no such column; "
                              f"columns are {', '.join(columns)}")
        return "text", {"text": text_column}
    if {"instruction", "output"} <= cols:
        roles = {"instruction": "instruction", "response": "output"}
        if "input" in cols:
            roles["input"] = "input"
        return "alpaca", roles
    response = next((c for c in RESPONSE_COLUMNS if c in cols), None)
    if "prompt" in cols and response:
        return "prompt-response", {"instruction": "prompt", "response": response}
    for guess in guesses:
        if guess in cols:
            return "text", {"text": guess}
    raise ConfigError(
        "run-config key 'dataset': causal-lm rows need 'instruction' + 'output' (+ 'input'), "
        f"'prompt' + 'response' (or 'completion'), or a text column ({', '.join(guesses)}); "
        f"the columns are {', '.join(columns)}; rename them or set 'text-column'"
    )


def _field(value, role: str, row: int, where: str) -> str:
    if value is None and role == "input":
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where} row {row}: '{role}' is {value!r}, expected a string; "
                          "remove or fix the row")
    return value


def to_pairs(rows: dict[str, list], form: str, roles: dict[str, str], template: str,
             where: str) -> tuple[list[str], list[str]]:
    """Columns of raw rows -> (prompts, responses), the template applied to every prompt."""
    if form == "text":
        texts = [_field(t, "text", i, where) for i, t in enumerate(rows[roles["text"]])]
        return [""] * len(texts), texts
    instructions = rows[roles["instruction"]]
    responses = rows[roles["response"]]
    contexts = rows[roles["input"]] if "input" in roles else [""] * len(instructions)
    prompts, outs = [], []
    for i, (ins, ctx, out) in enumerate(zip(instructions, contexts, responses, strict=True)):
        prompts.append(render_prompt(template, _field(ins, "instruction", i, where),
                                     _field(ctx, "input", i, where)))
        outs.append(_field(out, "response", i, where))
    return prompts, outs
