"""Secure aggregation between the ServerApp and real SuperNodes: `engine.secure_aggregation`'s
four exchanges (advertise keys, share keys, masked input, unmasking), each one round of Flower
messages of type `train.secagg`. A node keeps its secrets in its own state between the steps and
forgets them after unmasking; the server (`server.FlowerTrainer.secure_sum`) sees public keys,
ciphertexts it cannot read, masked vectors and, at the end, only the weighted sum.

This module holds what both sides need: the step names, how each protocol message travels as a
`ConfigRecord`, and the node's side of one step (`client_step`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from engine.secure_aggregation import (
    EncryptedShare, KeyAdvertisement, MaskedInput, Roster, SecAggClient, SecAggConfig, UnmaskRequest, UnmaskResponse,
)  # fmt: skip
from flower_runtime.messages import SECAGG_ACTION
from privacy.dp_fedavg import DistributedNoise

ACTION = SECAGG_ACTION  # messages of type "train.secagg"
STEPS = ("advertise", "share", "mask", "unmask")
SECAGG = "secagg"  # a step's question and answer
SECRETS = "secagg-secrets"  # a node's protocol secrets between steps: never sent
HELD = "secagg-upload"  # a node's upload, held from its training until the protocol masks it


# -- the protocol's messages as records ---------------------------------------------------


def advert_record(advert: KeyAdvertisement) -> dict[str, Any]:
    return {"client": advert.client_id, "channel-key": advert.channel_public_key, "mask-key": advert.mask_public_key}


def advert_from(record: Mapping[str, Any]) -> KeyAdvertisement:
    return KeyAdvertisement(int(record["client"]), bytes(record["channel-key"]), bytes(record["mask-key"]))


def roster_record(roster: Roster) -> dict[str, Any]:
    return {
        "participants": list(roster.participants), "graph-seed": roster.graph_seed,
        "key-clients": [k.client_id for k in roster.keys], "channel-keys": [k.channel_public_key for k in roster.keys],
        "mask-keys": [k.mask_public_key for k in roster.keys],
    }  # fmt: skip


def roster_from(record: Mapping[str, Any]) -> Roster:
    keys = zip(record["key-clients"], record["channel-keys"], record["mask-keys"], strict=True)
    return Roster(tuple(int(p) for p in record["participants"]), bytes(record["graph-seed"]),
                  tuple(KeyAdvertisement(int(c), bytes(k), bytes(m)) for c, k, m in keys))  # fmt: skip


def shares_record(shares: list[EncryptedShare]) -> dict[str, Any]:
    return {"senders": [s.sender for s in shares], "recipients": [s.recipient for s in shares],
            "ciphertexts": [s.ciphertext for s in shares]}  # fmt: skip


def shares_from(record: Mapping[str, Any]) -> list[EncryptedShare]:
    parts = zip(record["senders"], record["recipients"], record["ciphertexts"], strict=True)
    return [EncryptedShare(int(s), int(r), bytes(c)) for s, r, c in parts]


def response_record(response: UnmaskResponse) -> dict[str, Any]:
    seeds, keys = sorted(response.self_mask_shares.items()), sorted(response.mask_key_shares.items())
    return {"client": response.client_id, "seed-owners": [o for o, _ in seeds], "seed-shares": [s for _, s in seeds],
            "key-owners": [o for o, _ in keys], "key-shares": [s for _, s in keys]}  # fmt: skip


def response_from(record: Mapping[str, Any]) -> UnmaskResponse:
    seeds = zip(record["seed-owners"], record["seed-shares"], strict=True)
    keys = zip(record["key-owners"], record["key-shares"], strict=True)
    return UnmaskResponse(int(record["client"]), {int(o): bytes(s) for o, s in seeds},
                          {int(o): bytes(s) for o, s in keys})  # fmt: skip


NOISE_FIELDS = ("clip_norm", "length", "update_std", "count_std", "secure", "seed", "round_number", "mechanism")


def input_record(client: int, noise: DistributedNoise | None, held: frozenset[int]) -> dict[str, Any]:
    """What the "mask" step tells `client` of its input under central DP: the round's noise
    shares and whether it inputs its held upload or, not sampled, only its share ({} without)."""
    if noise is None:
        return {}
    return {**{f"noise-{name}": getattr(noise, name) for name in NOISE_FIELDS}, "input": "held" if client in held else "cover"}


def noise_from(record: Mapping[str, Any]) -> DistributedNoise | None:
    """The `DistributedNoise` a "mask" question carries, or None (no central DP)."""
    if "input" not in record:
        return None
    kinds = {"clip_norm": float, "length": int, "update_std": float, "count_std": float, "secure": bool, "seed": int,
             "round_number": int, "mechanism": str}  # fmt: skip
    return DistributedNoise(**{name: kinds[name](record[f"noise-{name}"]) for name in NOISE_FIELDS})


# -- the node's side ----------------------------------------------------------------------


def hold(state: RecordDict, update: torch.Tensor, *, weight: float, round_number: int) -> None:
    """Keep this client's (P,) upload and its weight until the protocol of `round_number` masks it."""
    state[HELD] = ArrayRecord({"update": update.detach().clone(), "weight": torch.tensor([float(weight)]),
                               "round": torch.tensor([round_number])})  # fmt: skip


def client_step(config: SecAggConfig, state: RecordDict, client_id: int, question: Mapping[str, Any]) -> ConfigRecord:
    """This node's answer to one step of the protocol of round `question["round"]`; its secrets
    stay in `state` (a new round's "advertise" starts afresh; "unmask" forgets them)."""
    step, round_number = str(question["step"]), int(question["round"])
    if step == "advertise":
        client = SecAggClient(client_id, config)
        answer = advert_record(client.advertise())
    elif step in STEPS:
        if SECRETS not in state.config_records or int(state.config_records[SECRETS]["round"]) != round_number:
            raise ValueError(f"client {client_id} has no secure-aggregation keys of round {round_number}")
        client = SecAggClient.restore(client_id, config, state.config_records[SECRETS])
        answer = _answer(client, step, state, question, round_number)
    else:
        raise ValueError(f"unknown secure-aggregation step {step!r}")
    if step == "unmask":
        del state[SECRETS]
        state.pop(HELD, None)
    else:
        state[SECRETS] = ConfigRecord({**client.secrets_state(), "round": round_number})
    return ConfigRecord(answer)


def _answer(
    client: SecAggClient, step: str, state: RecordDict, question: Mapping[str, Any], round_number: int
) -> dict[str, Any]:
    if step == "share":
        return shares_record(client.share_keys(roster_from(question)))
    if step == "mask":
        if (noise := noise_from(question)) is not None:  # central DP: clipped (or no) upload + a noise share
            update = _held(client, state, round_number)[0] if question["input"] == "held" else None
            vector, weight = noise.input(client.client_id, update), 1.0
        else:
            held, weight = _held(client, state, round_number)
            vector = held.double().numpy()
        masked = client.masked_input(shares_from(question), vector, weight)
        return {"client": masked.client_id, "masked": masked.masked}
    return response_record(client.unmask(UnmaskRequest(tuple(int(s) for s in question["survivors"]))))


def _held(client: SecAggClient, state: RecordDict, round_number: int) -> tuple[torch.Tensor, float]:
    """The upload (and its weight) this node holds for round `round_number`'s protocol."""
    held = state.array_records.get(HELD)
    tensors = held.to_torch_state_dict() if held is not None else {}
    if not tensors or int(tensors["round"][0]) != round_number:
        raise ValueError(f"client {client.client_id} holds no upload of round {round_number}")
    return tensors["update"], float(tensors["weight"][0])


def masked_from(record: Mapping[str, Any]) -> MaskedInput:
    return MaskedInput(int(record["client"]), bytes(record["masked"]))


def request_record(request: UnmaskRequest) -> dict[str, Any]:
    return {"survivors": list(request.survivors)}
