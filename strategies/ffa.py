"""FFA-LoRA (Sun et al., ICLR 2024): A frozen at a seed-shared init, only B and the head travel.

With one A for everyone, mean_k(B_k·A) = mean_k(B_k)·A: averaging B is exactly averaging the
clients' updates, which FedAvg over (A, B) is not; DP noise enters B alone instead of being
multiplied through a product; and the upload halves. The server and every client draw A from
``seed`` (``fedtune.model.build.freeze_shared_lora_a``); its SHA-256 travels in the round's config
and a client whose A differs refuses to train rather than silently breaking exactness.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord

from fedtune.arrays import Arrays
from fedtune.model.lora_layout import is_lora_a, lora_a_digest
from fedtune.protocol import LORA_A_SHA256
from strategies.fedavg import LoraFedAvg


class FfaLora(LoraFedAvg):
    def begin_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> None:
        super().begin_round(server_round, arrays, config)
        config[LORA_A_SHA256] = lora_a_digest(self.global_)

    def sent_part(self, state: Arrays) -> Arrays:
        return {k: v for k, v in state.items() if not is_lora_a(k)}
