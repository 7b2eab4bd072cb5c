"""Compressing client uploads: top-k sparsification with error feedback, and QSGD quantization.

A client's upload is its update, a flat (P,) float32 tensor (its new weights − the global
weights). The server reconstructs a dense (P,) update from what was sent; `compressed_bytes`
counts what went over the wire. Pure functions plus one small class, `Compressor`, that holds
the only state the algorithms need: each client's top-k residual for error feedback (and, with
Deep Gradient Compression's momentum correction, its velocity), one tensor per client.

    compressor = Compressor("topk", fraction=0.01, momentum=0.5, warmup_rounds=4)
    generator = torch.Generator().manual_seed(seed)
    received, bytes_up = compressor.compress(client_id, local_weights - global_weights, generator,
                                             round_number=round_number)
    # received: (P,) float32, what the server adds up; bytes_up: int, what the client sent

`outgoing_update` is a client's whole upload step (a simulated attacker's poisoning, then
compression), the same function whether the round loop runs it on arrival (clients in this
machine) or the client runs it itself (a Flower SuperNode, which keeps its own residual).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.attacks import poison_update
from engine.client_population import stream_seed
from experiment_config import COMPRESSIONS, ExperimentConfig, check_one_of

MIN_BITS, MAX_BITS = 2, 16
BYTES_PER_FLOAT = 4  # float32 values and the QSGD norm
BYTES_PER_INDEX = 4  # int32 coordinate indices for top-k
ATTACK_TAG, COMPRESSION_TAG = 0xA77AC, 0xC0B4E55  # attackers' noise, stochastic quantization (`stream_seed`)


def _check_method(method: str) -> None:
    check_one_of("compression method", method, COMPRESSIONS)


def _check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"top-k fraction must be in (0, 1]; got {fraction!r}")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"QSGD bits must be an integer in {MIN_BITS}..{MAX_BITS}; got {bits!r}")


def _check_dgc(momentum: float, warmup_rounds: int, error_feedback: bool) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"top-k momentum must be in [0, 1); got {momentum!r}")
    if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, int) or warmup_rounds < 0:
        raise ValueError(f"top-k warm-up rounds must be a non-negative integer; got {warmup_rounds!r}")
    if momentum > 0 and not error_feedback:
        raise ValueError("top-k momentum correction accumulates the velocity locally: it needs error feedback")


def _check_vector(vector: Tensor) -> None:
    if vector.dim() != 1 or vector.numel() == 0 or not vector.is_floating_point():
        shape = tuple(vector.shape)
        raise ValueError(f"expected a non-empty flat (P,) float tensor; got shape {shape}, {vector.dtype}")


def num_kept(num_params: int, fraction: float) -> int:
    """k = max(1, ceil(fraction·P)): how many coordinates top-k sends out of P."""
    _check_fraction(fraction)
    if num_params < 1:
        raise ValueError(f"num_params must be at least 1; got {num_params}")
    # Rounding to 9 places first so that e.g. 0.07·100 = 7.000000000000001 keeps 7, not 8.
    return min(num_params, max(1, math.ceil(round(fraction * num_params, 9))))


def top_k(vector: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """The k = max(1, ceil(fraction·P)) largest-|value| coordinates of a (P,) vector.

    Returns (indices int64 (k,), values (k,)), values signed as in `vector`, largest |value| first.
    """
    _check_vector(vector)
    k = num_kept(vector.numel(), fraction)
    indices = torch.topk(vector.abs(), k, sorted=True).indices
    return indices, vector[indices]


def quantize(vector: Tensor, bits: int, generator: torch.Generator) -> Tensor:
    """QSGD stochastic uniform quantization (Alistarh et al. 2017); unbiased, E[quantize(v)] = v.

    Each |v_i|/‖v‖₂ is put on s = 2**(bits-1) - 1 levels (one of the `bits` is the sign), rounded
    up with probability equal to its fractional part. Returns the dequantized (P,) vector the
    server reconstructs, sign(v_i)·‖v‖₂·j_i/s with integer j_i in 0..s. A zero vector stays zero.
    """
    _check_vector(vector)
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    norm = torch.linalg.vector_norm(vector)
    if not torch.isfinite(norm):
        raise ValueError("cannot quantize a vector with non-finite values")
    if norm == 0:
        return torch.zeros_like(vector)
    # Clamped because float rounding can put |v_i|/‖v‖ a hair above 1.
    scaled = (vector.abs() / norm * levels).clamp_(0, levels)  # (P,) in [0, s]
    lower = scaled.floor()
    uniform = torch.rand(vector.shape, generator=generator, dtype=vector.dtype, device=vector.device)
    level = lower + (uniform < scaled - lower).to(vector.dtype)  # P(round up) = fractional part
    return torch.sign(vector) * level * (norm / levels)


def compressed_bytes(num_params: int, method: str, *, fraction: float = 0.01, bits: int = 8) -> int:
    """Bytes on the wire for one upload of P parameters.

    none → 4·P; topk → k·(4 + 4) (int32 index + float32 value); qsgd → 4 (the norm) + ceil(P·bits/8).
    """
    _check_method(method)
    if num_params < 1:
        raise ValueError(f"num_params must be at least 1; got {num_params}")
    if method == "topk":
        return num_kept(num_params, fraction) * (BYTES_PER_INDEX + BYTES_PER_FLOAT)
    if method == "qsgd":
        _check_bits(bits)
        return BYTES_PER_FLOAT + math.ceil(num_params * bits / 8)
    return BYTES_PER_FLOAT * num_params


class Compressor:
    """Compresses each client's upload, keeping per-client memory for error feedback (top-k).

    Memory is kept only with method "topk" and `error_feedback=True`, and only for clients that
    have uploaded: {client_id: (P,) residual}, or with momentum correction {client_id: (2, P)}
    (row 0 the residual, row 1 the velocity). One tensor per client, so it travels unchanged
    wherever the residual goes (a checkpoint, a Flower node's state). QSGD is unbiased and needs
    no memory.

    Two options from Deep Gradient Compression (Lin et al. 2018) narrow top-k's accuracy cost:
    `momentum` > 0 is momentum correction with momentum factor masking, and `warmup_rounds` > 0
    ramps the density from dense to `fraction` over the first rounds.
    """

    def __init__(
        self, method: str, *, fraction: float = 0.01, bits: int = 8, error_feedback: bool = True,
        momentum: float = 0.0, warmup_rounds: int = 0,
    ) -> None:  # fmt: skip
        _check_method(method)
        _check_fraction(fraction)
        _check_bits(bits)
        _check_dgc(momentum, warmup_rounds, error_feedback)
        self.method = method
        self.fraction = fraction
        self.bits = bits
        self.error_feedback = error_feedback
        self.momentum = float(momentum)
        self.warmup_rounds = warmup_rounds
        self._memory: dict[int, Tensor] = {}

    def fraction_at(self, round_number: int | None) -> float:
        """The top-k density of `round_number` (1-based; None: after any warm-up).

        DGC's exponential warm-up: round r ≤ W of W warm-up rounds sends fraction**(r/(W+1)) of
        the coordinates (e.g. 1%, W = 3: 31.6%, 10%, 3.2%), then `fraction`, so the first,
        largest updates are barely delayed by the residual."""
        if round_number is None or round_number > self.warmup_rounds:
            return self.fraction
        if round_number < 1:
            raise ValueError(f"round_number must be at least 1; got {round_number}")
        return self.fraction ** (round_number / (self.warmup_rounds + 1))

    def compress(
        self, client_id: int, update: Tensor, generator: torch.Generator, *, round_number: int | None = None
    ) -> tuple[Tensor, int]:
        """(the dense (P,) update the server reconstructs, bytes sent) for one client's (P,) update.

        topk with error feedback (Stich et al. 2018; Karimireddy et al. 2019): u = update +
        residual[client]; send top_k(u); residual[client] = u − sent, so nothing is lost, only
        delayed. With momentum correction (DGC) the velocity is accumulated instead: v = m·v +
        update, u = residual + v, send top_k(u), and both u and v are zeroed where sent (momentum
        factor masking: a sent coordinate's stale momentum would push it on for rounds). Without
        error feedback nothing is kept. `round_number` picks the warm-up density. 'none' returns
        `update` itself unchanged. `generator` drives QSGD's rounding only.
        """
        _check_vector(update)
        num_params = update.numel()
        fraction = self.fraction_at(round_number) if self.method == "topk" else self.fraction
        sent_bytes = compressed_bytes(num_params, self.method, fraction=fraction, bits=self.bits)
        if self.method == "none":
            return update, sent_bytes
        if self.method == "qsgd":
            return quantize(update, self.bits, generator), sent_bytes
        residual, velocity = self._client_memory(client_id, num_params)
        velocity = update.to(torch.float32) if velocity is None else velocity * self.momentum + update
        accumulated = velocity if residual is None else residual + velocity
        indices, values = top_k(accumulated, fraction)
        sent = torch.zeros_like(accumulated)
        sent[indices] = values
        if self.error_feedback:
            # u − sent, written as a masked copy so sent coordinates are exactly zero.
            remainder = accumulated.clone()
            remainder[indices] = 0
            if self.momentum > 0:
                velocity = velocity.clone()
                velocity[indices] = 0
                remainder = torch.stack([remainder, velocity])  # (2, P)
            self._memory[client_id] = remainder
        return sent, sent_bytes

    def _client_memory(self, client_id: int, num_params: int) -> tuple[Tensor | None, Tensor | None]:
        """(residual (P,), velocity (P,)) kept for `client_id`, each None if not kept."""
        memory = self._memory.get(client_id) if self.error_feedback else None
        if memory is None:
            return None, None
        if memory.shape[-1] != num_params:
            raise ValueError(f"client {client_id} uploaded {num_params} parameters but its residual has "
                             f"{memory.shape[-1]}")  # fmt: skip
        if memory.dim() == 1:  # a residual kept without momentum (or before it was turned on)
            return memory, None
        return memory[0], memory[1] if self.momentum > 0 else None

    def residual_norm(self, client_id: int) -> float:
        """‖residual[client]‖₂ (same units as the update); 0 if none is kept for that client."""
        memory = self._memory.get(client_id)
        if memory is None:
            return 0.0
        return float(torch.linalg.vector_norm(memory if memory.dim() == 1 else memory[0]))

    def state_dict(self) -> dict[int, Tensor]:
        """The memory kept for error feedback ({client_id: (P,) or (2, P)}), for a checkpoint."""
        return dict(self._memory)

    def load_state_dict(self, memory: dict[int, Tensor]) -> None:
        """Restore what `state_dict` returned."""
        for client, tensor in memory.items():
            if tensor.dim() not in (1, 2) or (tensor.dim() == 2 and tensor.shape[0] != 2):
                raise ValueError(f"client {client}'s compression memory must be (P,) or (2, P); got {tuple(tensor.shape)}")
        self._memory = {int(client): tensor.to(torch.float32) for client, tensor in memory.items()}


def make_compressor(config: ExperimentConfig) -> Compressor:
    """The run's `Compressor`, as `communication` configures it."""
    communication = config.communication
    return Compressor(
        communication.compression, fraction=communication.topk_fraction, bits=communication.quantization_bits,
        error_feedback=communication.error_feedback, momentum=communication.topk_momentum,
        warmup_rounds=communication.topk_warmup_rounds,
    )  # fmt: skip


def outgoing_update(
    config: ExperimentConfig, compressor: Compressor, update: Tensor, *, client: int, round_number: int,
    malicious: bool, head_size: int = 0,
) -> tuple[Tensor, int]:  # fmt: skip
    """(the (P,) update the server receives from `client`, the bytes it sent) for its honest
    (P,) `update` (new − global weights): a simulated attacker's poisoned one, compressed (top-k
    keeps the client's residual in `compressor`). With FedPer only the body is sent: the trailing
    `head_size` values pass through for the reporting-only global head and cost no bytes.
    Seeded per (seed, round, client), so it is the same wherever it runs."""
    attack, seed = config.attack, config.system.seed
    if malicious:
        generator = torch.Generator().manual_seed(stream_seed(seed, round_number, client, ATTACK_TAG))
        update = poison_update(attack.behaviour, update, scale=attack.scale, noise_std=attack.noise_std,
                               generator=generator)  # fmt: skip
    body = update.numel() - head_size
    generator = torch.Generator().manual_seed(stream_seed(seed, round_number, client, COMPRESSION_TAG))
    sent, num_bytes = compressor.compress(client, update[:body].contiguous(), generator, round_number=round_number)
    if head_size:
        sent = torch.cat([sent, update[body:]])
    return sent, num_bytes
