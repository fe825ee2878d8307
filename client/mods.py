"""Client mods: Flower's client-side clipping, only for the rounds that ask for it."""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def client_clipping_mod(msg: Message, ctxt: Context, call_next):
    """Flower's ``fixedclipping_mod``, only when the server asked for client-side clipping.

    The plain mod fails every message that lacks a clipping norm (so every run without
    client-side DP), and it turns a privacy-budget refusal, which carries no arrays, into an error.
    """
    config = next(iter(msg.content.config_records.values()), {}) if msg.has_content() else {}
    if msg.metadata.message_type != MessageType.TRAIN or KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    seen: dict[str, Message] = {}

    def inner(m: Message, c: Context) -> Message:
        seen["reply"] = call_next(m, c)
        return seen["reply"]

    out = fixedclipping_mod(msg, ctxt, inner)
    reply = seen.get("reply")
    if reply is not None and not reply.has_error() and "refusal" in reply.content:
        return reply
    return out
