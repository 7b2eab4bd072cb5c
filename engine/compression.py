"""Compressing client uploads: top-k sparsification with error feedback, and QSGD quantization.

A client's upload is its update, a flat (P,) float32 tensor (its new weights − the global
weights). The server reconstructs a dense (P,) update from what was sent; `compressed_bytes`
counts what went over the wire. Pure functions plus one small class, `Compressor`, that holds
the only state the algorithms need: each client's top-k residual for error feedback.

    compressor = Compressor("topk", fraction=0.01)
    generator = torch.Generator().manual_seed(seed)
    received, bytes_up = compressor.compress(client_id, local_weights - global_weights, generator)
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
    """Compresses each client's upload, keeping per-client residual memory for error feedback (top-k).

    Residuals are kept only with method "topk" and `error_feedback=True`, and only for clients
    that have uploaded: {client_id: (P,) float32}. QSGD is unbiased and needs no memory.
    """

    def __init__(self, method: str, *, fraction: float = 0.01, bits: int = 8, error_feedback: bool = True) -> None:
        _check_method(method)
        _check_fraction(fraction)
        _check_bits(bits)
        self.method = method
        self.fraction = fraction
        self.bits = bits
        self.error_feedback = error_feedback
        self._residuals: dict[int, Tensor] = {}

    def compress(self, client_id: int, update: Tensor, generator: torch.Generator) -> tuple[Tensor, int]:
        """(the dense (P,) update the server reconstructs, bytes sent) for one client's (P,) update.

        topk with error feedback (Stich et al. 2018; Karimireddy et al. 2019): u = update +
        residual[client]; send top_k(u); residual[client] = u − sent, so nothing is lost, only
        delayed. Without error feedback residuals are not kept. 'none' returns `update` itself
        unchanged. `generator` drives QSGD's rounding and is unused by the other methods.
        """
        _check_vector(update)
        num_params = update.numel()
        sent_bytes = compressed_bytes(num_params, self.method, fraction=self.fraction, bits=self.bits)
        if self.method == "none":
            return update, sent_bytes
        if self.method == "qsgd":
            return quantize(update, self.bits, generator), sent_bytes
        accumulated = update.to(torch.float32)
        residual = self._residuals.get(client_id) if self.error_feedback else None
        if residual is not None:
            if residual.shape != accumulated.shape:
                raise ValueError(
                    f"client {client_id} uploaded {num_params} parameters but its residual has {residual.numel()}"
                )
            accumulated = accumulated + residual
        indices, values = top_k(accumulated, self.fraction)
        sent = torch.zeros_like(accumulated)
        sent[indices] = values
        if self.error_feedback:
            # u − sent, written as a masked copy so sent coordinates are exactly zero.
            remainder = accumulated.clone()
            remainder[indices] = 0
            self._residuals[client_id] = remainder
        return sent, sent_bytes

    def residual_norm(self, client_id: int) -> float:
        """‖residual[client]‖₂ (same units as the update); 0 if none is kept for that client."""
        residual = self._residuals.get(client_id)
        return 0.0 if residual is None else float(torch.linalg.vector_norm(residual))

    def state_dict(self) -> dict[int, Tensor]:
        """The residuals kept for error feedback ({client_id: (P,)}), for a checkpoint."""
        return dict(self._residuals)

    def load_state_dict(self, residuals: dict[int, Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self._residuals = {int(client): residual.to(torch.float32) for client, residual in residuals.items()}


def make_compressor(config: ExperimentConfig) -> Compressor:
    """The run's `Compressor`, as `communication` configures it."""
    communication = config.communication
    return Compressor(
        communication.compression, fraction=communication.topk_fraction, bits=communication.quantization_bits,
        error_feedback=communication.error_feedback,
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
    sent, num_bytes = compressor.compress(client, update[:body].contiguous(), generator)
    if head_size:
        sent = torch.cat([sent, update[body:]])
    return sent, num_bytes
