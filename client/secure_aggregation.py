"""SecAgg+ on the client: Flower's ``secaggplus_mod`` around fedtune's own training.

The server drives Flower's ``SecAggPlusWorkflow`` (``server/secure_rounds.py``), whose training
messages come in four stages. Flower's mod answers the key-sharing and unmasking stages itself;
in the stage that collects masked vectors it calls :func:`_train_update`, which turns the
legacy ``FitIns`` back into fedtune's usual training message, runs the rest of the ClientApp on
it (fault injection, client-side clipping, the train handler) and hands the mod the **update**
(reply minus what was sent), never the full weights: a tight clipping range and a small
quantisation error need values near zero. The mod masks and quantises it; the server only ever
sees the masked vector. The reply's numbers (epsilon, the privacy state, ...) travel beside it as
plain values, as they would without secure aggregation.

The mod sits outermost, so everything inside it sees a normal fedtune message; it acts only on
messages of the protocol (those carrying its ``secaggplus`` config record).
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitRes,
    Status,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.compat.common import recorddict_compat as compat

from fedtune.arrays import from_record, to_record
from fedtune.config import from_run_config
from fedtune.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    PRIVACY,
    REFUSAL,
    SECAGG_CLIPPED,
    SECAGG_KEYS,
    SECAGG_PRIVACY,
    SECAGG_REFUSAL,
    SECAGG_VALUES,
    weight_key,
)


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next):
    if (msg.metadata.message_type != MessageType.TRAIN or not msg.has_content()
            or RECORD_KEY_CONFIGS not in msg.content.config_records):
        return call_next(msg, ctxt)
    reply = secaggplus_mod(msg, ctxt, lambda m, c: _train_update(m, c, call_next))
    if reply.has_content() and RECORD_KEY_CONFIGS in reply.content.config_records:
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in configs:
            configs[Key.MASKED_PARAMETERS] = pack_masked(configs[Key.MASKED_PARAMETERS])
    return reply


def pack_masked(vectors: list[bytes]) -> list[bytes]:
    """Flower's mod sends masked values (integers mod 2^32) as int64: 8 bytes for what fits in
    4. Sent as uint32 they halve the upload; the server widens them back before the workflow
    adds them (``server/secure_rounds.py``)."""
    out = []
    for raw in vectors:
        values = bytes_to_ndarray(raw)
        if values.size and (values.min() < 0 or values.max() >= 2**32):
            raise ValueError("a masked value outside [0, 2^32): the modulus must be 2^32")
        out.append(ndarray_to_bytes(values.astype(np.uint32)))
    return out


def _train_update(msg: Message, ctxt: Context, call_next) -> Message:
    """Legacy ``FitIns`` in, fedtune's training in the middle, legacy ``FitRes`` (the update)
    out."""
    cfg = from_run_config(ctxt.run_config)
    config = dict(msg.content.config_records["fitins.config"])
    keys = json.loads(str(config.pop(SECAGG_KEYS)))
    received = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
        msg.content.array_records["fitins.parameters"], keep_input=True))
    sent = dict(zip(keys, received, strict=True))
    msg.content = RecordDict({ARRAYS: to_record(sent), CONFIG: ConfigRecord(config)})
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    content = reply.content
    metrics = dict(content[METRICS])
    weight = float(metrics[weight_key(cfg)])
    if REFUSAL in content or ARRAYS not in content:  # trained nothing: a zero update, weight 0
        update = [np.zeros_like(a, dtype=np.float32) for a in received]
        weight = 0.0
    else:
        trained = from_record(content[ARRAYS])
        update = [(np.asarray(trained[k], np.float64) - np.asarray(sent[k], np.float64))
                  .astype(np.float32) for k in keys]
    max_weight = float(ctxt.state.config_records[RECORD_KEY_STATE]["max_weight"])
    if weight > max_weight:  # Flower's mod would only warn, and the sum would overflow
        raise ValueError(f"this client's weight {weight:g} exceeds the round's SecAgg+ max "
                         f"weight {max_weight:g}: set secagg-max-weight to at least {weight:g}")
    scale = weight / max_weight  # what Flower's mod multiplies the update by before quantising
    clipped = sum(int(np.sum(np.abs(u) * scale > cfg.secagg_clipping_range)) for u in update)
    metrics[SECAGG_CLIPPED] = clipped  # never clipped silently: the report counts them
    metrics[SECAGG_VALUES] = sum(int(u.size) for u in update)
    if PRIVACY in content:
        metrics[SECAGG_PRIVACY] = json.dumps(dict(content[PRIVACY]))
    if REFUSAL in content:
        metrics[SECAGG_REFUSAL] = str(content[REFUSAL]["reason"])
    out = compat.fitres_to_recorddict(_fitres(update, weight, metrics), keep_input=True)
    return Message(content=out, reply_to=msg)


def _fitres(update: list[np.ndarray], weight: float, metrics: dict) -> FitRes:
    return FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(update),
                  num_examples=int(round(weight)), metrics=metrics)
