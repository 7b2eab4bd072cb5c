"""Secure aggregation: the server learns only the (weighted) sum, and dropouts do not break it.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", with
the SecAgg+ neighbour graph of Bell et al. 2020, run for real in one process. Each `SecAggClient`
holds its own secrets; the `SecAggServer` sees only the message dataclasses below (ints and bytes).

    result = secure_aggregate(updates, weights, SecAggConfig(neighbours=14))  # {id: (P,)}, {id: w}
    new_update = result.weighted_sum / result.total_weight                    # (P,) float64

One round, in four exchanges through the server (U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still there):
  0. advertise keys  u → S: two X25519 public keys, c_u (share channel) and s_u (masks).
                     S → u: the participants U1, a public graph seed, u's neighbours' keys.
  1. share keys      u → S → v, for each neighbour v: AES-GCM under HKDF(X25519(c_u, c_v)) of
                     v's Shamir shares of b_u (32-byte self-mask seed) and of s_u^SK (t of |N[u]|).
  2. masked input    u → S: y_u = enc(w_u·x_u ‖ w_u) + PRG(b_u) + Σ_{v∈N(u)∩U2, v>u} PRG(s_uv)
                     − Σ_{v∈N(u)∩U2, v<u} PRG(s_uv)  (mod 2^k), s_uv = HKDF(X25519(s_u, s_v)).
  3. unmasking       S → u: U3, the clients whose y arrived. u → S: for each owner v whose shares
                     u holds, its share of b_v if v ∈ U3, else its share of s_v^SK -- never both.
The server rebuilds b_v for v ∈ U3 and s_d^SK for d ∈ U2 \\ U3 from ≥ t shares, subtracts the
self-masks and the dropped clients' pairwise masks (the others cancel in the sum) and decodes.
A client that drops after sending y (U3 \\ U4) stays in the sum: others' shares rebuild its b.

Fixed point. enc(z) = round(z·2^f) as a k-bit two's-complement integer (f = fractional_bits,
k = modulus_bits); the weight w_u is masked as one more coordinate, so the server learns only Σ w.
Overflow: every |z| ≤ clip_range, so with n clients the true integer sum lies in
±n·(clip_range·2^f + ½), and decoding mod 2^k is exact iff n·(clip_range·2^f + ½) < 2^(k-1);
`SecAggConfig.check_overflow` raises `ValueError` up front otherwise. Values beyond clip_range are
an error, not clipped (clipping would silently change the sum).
Quantization: each coordinate rounds to the nearest multiple of 2^-f, so per coordinate
|weighted_sum − Σ w_u·x_u| ≤ n·2^-(f+1) (plus float64 rounding of the result, relative 2^-53).

SecAgg+: with `neighbours = k` (even, < n−1) each client masks and shares only with its k
neighbours on a Harary graph H(k, n) laid on a random permutation of the participants, drawn from
a seed the server announces; t is relative to the neighbourhood size k+1. Cost ~O(n·k·P).
Threat model: honest-but-curious server and clients. Not implemented: signatures and the
consistency-check round of the malicious-server variant, and an unbiased public beacon for the seed.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SHAMIR_PRIME = 2**521 - 1  # a Mersenne prime > 2^256: every 32-byte secret is a field element
SHARE_BYTES = 66  # ceil(521 / 8)
KEY_BYTES = 32  # X25519 keys, self-mask seeds
ID_BYTES = 4  # a client id on the wire
NONCE_BYTES = 12  # AES-GCM nonce, sent with each encrypted share
WIRE_DTYPES = {16: np.uint16, 32: np.uint32, 64: np.uint64}  # modulus_bits -> masked-vector element
_T = TypeVar("_T")


class SecAggError(RuntimeError):
    """The round cannot finish without breaking privacy: too few clients left, or too few shares."""


@dataclass(frozen=True)
class SecAggConfig:
    """Protocol parameters, known to the server and every client."""

    threshold: float = 0.5  # t = max(2, ceil(threshold·|N[u]|)), |N[u]| = n, or k+1 under SecAgg+
    threshold_count: int | None = None  # an exact t instead of the fraction
    neighbours: int = 0  # SecAgg+: k (even) neighbours per client; 0 = everyone
    clip_range: float = 2.0**16  # bound on |w·x| per coordinate and on |w|; beyond it is an error
    fractional_bits: int = 24  # fixed-point scale 2^f
    modulus_bits: int = 64  # arithmetic mod 2^k; one of 16, 32, 64

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be a fraction in (0, 1]; got {self.threshold}")
        if self.threshold_count is not None and self.threshold_count < 2:
            raise ValueError(f"threshold_count must be at least 2; got {self.threshold_count}")
        if self.neighbours < 0 or self.neighbours % 2:
            raise ValueError(f"neighbours must be 0 (everyone) or an even k >= 2; got {self.neighbours}")
        if self.modulus_bits not in WIRE_DTYPES:
            raise ValueError(f"modulus_bits must be one of {sorted(WIRE_DTYPES)}; got {self.modulus_bits}")
        if not 0 <= self.fractional_bits < self.modulus_bits:
            raise ValueError(f"fractional_bits must be in [0, {self.modulus_bits}); got {self.fractional_bits}")
        if not 0 < self.clip_range * 2.0**self.fractional_bits <= 2.0**52:
            raise ValueError(f"clip_range·2^f must be in (0, 2^52] so rounding is exact in float64; "
                             f"got {self.clip_range}·2^{self.fractional_bits}")

    def threshold_for(self, neighbourhood_size: int) -> int:
        """t for neighbourhoods N[u] of this size (the client itself included)."""
        return self.threshold_count or max(2, math.ceil(self.threshold * neighbourhood_size))

    def check_overflow(self, num_clients: int) -> None:
        """Raise ValueError unless n·(clip_range·2^f + ½) < 2^(k−1): the sum must decode exactly."""
        worst = num_clients * (self.clip_range * 2.0**self.fractional_bits + 0.5)
        if worst >= 2.0 ** (self.modulus_bits - 1):
            raise ValueError(f"fixed-point sum may overflow: {num_clients} clients · (clip_range {self.clip_range}"
                             f" · 2^{self.fractional_bits} + 1/2) = {worst:.4g} >= 2^{self.modulus_bits - 1}; "
                             "lower clip_range or fractional_bits, or raise modulus_bits")


# ---------------------------------------------------------------- messages (what crosses the wire)


@dataclass(frozen=True)
class KeyAdvertisement:
    """Round 0, client → server (and forwarded to its neighbours)."""

    client_id: int
    channel_public_key: bytes  # 32-byte X25519 c_u^PK
    mask_public_key: bytes  # 32-byte X25519 s_u^PK

    def size_bytes(self) -> int:
        return ID_BYTES + 2 * KEY_BYTES


@dataclass(frozen=True)
class Roster:
    """Round 0, server → one client: who takes part, the graph seed, and its neighbours' keys."""

    participants: tuple[int, ...]  # U1, sorted
    graph_seed: bytes  # public randomness for the SecAgg+ graph
    keys: tuple[KeyAdvertisement, ...]  # the recipient's neighbours only

    def size_bytes(self) -> int:
        return ID_BYTES * len(self.participants) + len(self.graph_seed) + sum(k.size_bytes() for k in self.keys)


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1, sender → server → recipient: nonce ‖ AES-GCM(share of b_sender ‖ share of s_sender^SK)."""

    sender: int
    recipient: int
    ciphertext: bytes

    def size_bytes(self) -> int:
        return 2 * ID_BYTES + len(self.ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client → server: y_u, (P+1,) little-endian unsigned k-bit integers."""

    client_id: int
    masked: bytes

    def size_bytes(self) -> int:
        return ID_BYTES + len(self.masked)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server → each client in U3: the clients whose masked input arrived."""

    survivors: tuple[int, ...]

    def size_bytes(self) -> int:
        return ID_BYTES * len(self.survivors)


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, client → server: shares it holds, keyed by the owner of the secret (66 bytes each)."""

    client_id: int
    self_mask_shares: dict[int, bytes]  # owner ∈ U3 -> share of b_owner
    mask_key_shares: dict[int, bytes]  # owner ∈ U2 \ U3 -> share of s_owner^SK

    def size_bytes(self) -> int:
        return ID_BYTES + (ID_BYTES + SHARE_BYTES) * (len(self.self_mask_shares) + len(self.mask_key_shares))


@dataclass(frozen=True)
class SecAggStats:
    """One round's cost. Bytes count both directions through the server (up + down)."""

    bytes_keys: int
    bytes_shares: int
    bytes_masked: int
    bytes_unmasking: int
    dropouts_recovered: int
    crypto_seconds: float  # key generation and agreement, HKDF, AES-GCM, Shamir; all parties
    mask_seconds: float  # PRG expansion and mask arithmetic; all parties
    server_seconds: float  # wall time in the server's calls
    slowest_client_seconds: float  # wall time of the busiest client: the critical path with the server

    @property
    def bytes_total(self) -> int:
        return self.bytes_keys + self.bytes_shares + self.bytes_masked + self.bytes_unmasking


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns from one round, plus its own bookkeeping."""

    weighted_sum: np.ndarray  # (P,) float64, Σ_{u ∈ survivors} w_u·x_u
    total_weight: float  # Σ_{u ∈ survivors} w_u (masked too, so quantized the same way)
    participants: tuple[int, ...]  # U1: advertised keys
    survivors: tuple[int, ...]  # U3: masked input arrived, so in the sum
    recovered_dropouts: tuple[int, ...]  # U1 \ U4 whose masks the server rebuilt from shares
    reconstructions: tuple[tuple[int, str], ...]  # the server's log: (client, "self_mask" | "mask_key")
    threshold: int
    stats: SecAggStats


# ---------------------------------------------------------------- primitives


@dataclass
class _Stopwatch:
    crypto_seconds: float = 0.0
    mask_seconds: float = 0.0

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, kind, getattr(self, kind) + time.perf_counter() - started)


def shamir_share(secret: bytes, holders: Sequence[int], threshold: int) -> dict[int, int]:
    """t-of-n shares {holder: f(holder+1)} of a random degree-(t−1) polynomial f over GF(p), f(0) = secret."""
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)]
    shares = {}
    for holder in holders:
        x, value = holder + 1, 0  # x = 0 is the secret itself
        for coefficient in reversed(coefficients):
            value = (value * x + coefficient) % SHAMIR_PRIME
        shares[holder] = value
    return shares


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_i with f(0) = Σ λ_i f(x_i) for any polynomial of degree < len(xs) (pure; cached per holder set)."""
    coefficients = []
    for i, x_i in enumerate(xs):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator, denominator = numerator * x_j % SHAMIR_PRIME, denominator * (x_j - x_i) % SHAMIR_PRIME
        coefficients.append(numerator * pow(denominator, -1, SHAMIR_PRIME) % SHAMIR_PRIME)
    return tuple(coefficients)


def shamir_reconstruct(shares: Mapping[int, int], threshold: int, *, owner: int | None = None) -> int:
    """The secret f(0) from ≥ t shares {holder: f(holder+1)}; uses the t lowest holders."""
    if len(shares) < threshold:
        raise SecAggError(f"only {len(shares)} shares of client {owner}'s secret arrived; t = {threshold} are needed")
    holders = sorted(shares)[:threshold]
    weights = _lagrange_at_zero(tuple(h + 1 for h in holders))
    return sum(w * shares[h] for w, h in zip(weights, holders, strict=True)) % SHAMIR_PRIME


def _kdf(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"secagg " + purpose).derive(secret)


class _MaskStream:
    """Adds ±PRG(seed) into a (L,) uint64 vector; PRG = ChaCha20 keystream under HKDF(seed), read as uint64."""

    def __init__(self, length: int) -> None:
        self._zeros = bytes(8 * length)
        self._buffer = bytearray(8 * length)  # reused: allocating 1.6 MB per mask costs ~2x the keystream

    def apply(self, vector: np.ndarray, seed: bytes, purpose: bytes, sign: int) -> None:
        encryptor = Cipher(algorithms.ChaCha20(_kdf(seed, purpose), bytes(16)), mode=None).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        mask = np.frombuffer(self._buffer, dtype=np.uint64)
        (np.add if sign > 0 else np.subtract)(vector, mask, out=vector)  # wraps mod 2^64


def encode_fixed_point(update: np.ndarray, weight: float, config: SecAggConfig) -> np.ndarray:
    """(P,) update and weight -> (P+1,) uint64: round([w·x ‖ w]·2^f) in two's complement."""
    scaled = np.append(np.asarray(update, dtype=np.float64) * weight, weight)
    if not np.all(np.isfinite(scaled)):
        raise ValueError("update and weight must be finite")
    largest = float(np.max(np.abs(scaled)))
    if largest > config.clip_range:
        raise ValueError(f"|w·x| or |w| reaches {largest:.6g} > clip_range {config.clip_range}; "
                         "scale the update or raise clip_range (values are not clipped silently)")
    return np.rint(scaled * 2.0**config.fractional_bits).astype(np.int64).view(np.uint64)


def decode_fixed_point(values: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """(L,) uint64 mod 2^k -> (L,) float64: k-bit two's complement, divided by 2^f."""
    bits = config.modulus_bits
    signed = (values & np.uint64(2**bits - 1)).astype(np.int64) if bits < 64 else values.view(np.int64)
    if bits < 64:
        signed = np.where(signed >= 2 ** (bits - 1), signed - 2**bits, signed)
    return signed.astype(np.float64) / 2.0**config.fractional_bits


def neighbourhoods(participants: Sequence[int], neighbours: int, graph_seed: bytes) -> dict[int, frozenset[int]]:
    """N(u) (u excluded) for every participant: everyone if neighbours is 0 or ≥ n−1, else the Harary graph
    H(k, n) on a permutation drawn from the public graph_seed (u joined to k/2 clients each side on the ring)."""
    ids = sorted(participants)
    if neighbours == 0 or neighbours >= len(ids) - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    ring = [ids[i] for i in np.random.default_rng(int.from_bytes(graph_seed, "big")).permutation(len(ids))]
    half = neighbours // 2
    return {u: frozenset(ring[(i + d) % len(ring)] for d in range(-half, half + 1) if d) for i, u in enumerate(ring)}


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _share_aad(sender: int, recipient: int) -> bytes:
    return sender.to_bytes(ID_BYTES, "big") + recipient.to_bytes(ID_BYTES, "big")


# ---------------------------------------------------------------- parties


class SecAggClient:
    """One client's side of a round. It alone holds c_u^SK, s_u^SK, b_u and the shares sent to it."""

    def __init__(self, client_id: int, config: SecAggConfig) -> None:
        if not 0 <= client_id < 2 ** (8 * ID_BYTES):
            raise ValueError(f"client ids must fit in {ID_BYTES} unsigned bytes; got {client_id}")
        self.client_id, self.config, self.timer = client_id, config, _Stopwatch()
        with self.timer.measure("crypto_seconds"):
            self._channel_key, self._mask_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._self_mask_seed = secrets.token_bytes(KEY_BYTES)  # cryptographic randomness: never seeded
        self._neighbour_keys: dict[int, KeyAdvertisement] = {}
        self._channels: dict[int, AESGCM] = {}
        self._held_shares: dict[int, tuple[int, int]] = {}  # owner -> (share of b_owner, share of s_owner^SK)
        self._threshold = 0

    def advertise(self) -> KeyAdvertisement:
        return KeyAdvertisement(self.client_id, _public_bytes(self._channel_key), _public_bytes(self._mask_key))

    def secrets_state(self) -> dict[str, bytes | int | list[int] | list[bytes]]:
        """Everything this client holds between the protocol's steps, as plain bytes and ints,
        for a client that keeps its state outside the process (a Flower SuperNode); secret:
        it never leaves the client (`restore` reads it back)."""
        neighbours = sorted(self._neighbour_keys)
        owners = sorted(self._held_shares)
        return {
            "channel-key": self._channel_key.private_bytes_raw(), "mask-key": self._mask_key.private_bytes_raw(),
            "self-mask-seed": self._self_mask_seed, "threshold": self._threshold, "neighbours": neighbours,
            "neighbour-channel-keys": [self._neighbour_keys[v].channel_public_key for v in neighbours],
            "neighbour-mask-keys": [self._neighbour_keys[v].mask_public_key for v in neighbours],
            "share-owners": owners,
            "seed-shares": [self._held_shares[o][0].to_bytes(SHARE_BYTES, "big") for o in owners],
            "key-shares": [self._held_shares[o][1].to_bytes(SHARE_BYTES, "big") for o in owners],
        }  # fmt: skip

    @classmethod
    def restore(cls, client_id: int, config: SecAggConfig, state: Mapping[str, object]) -> SecAggClient:
        """The client `secrets_state` described."""
        client = cls.__new__(cls)
        client.client_id, client.config, client.timer = client_id, config, _Stopwatch()
        client._channel_key = X25519PrivateKey.from_private_bytes(bytes(state["channel-key"]))
        client._mask_key = X25519PrivateKey.from_private_bytes(bytes(state["mask-key"]))
        client._self_mask_seed, client._threshold = bytes(state["self-mask-seed"]), int(state["threshold"])
        client._neighbour_keys = {
            int(v): KeyAdvertisement(int(v), bytes(c), bytes(m)) for v, c, m in
            zip(state["neighbours"], state["neighbour-channel-keys"], state["neighbour-mask-keys"], strict=True)
        }  # fmt: skip
        client._channels = {}
        client._held_shares = {
            int(o): (int.from_bytes(seed, "big"), int.from_bytes(key, "big"))
            for o, seed, key in zip(state["share-owners"], state["seed-shares"], state["key-shares"], strict=True)
        }
        return client

    def share_keys(self, roster: Roster) -> list[EncryptedShare]:
        """Round 1: Shamir-share b_u and s_u^SK over N[u] and encrypt each neighbour's pair for it."""
        expected = neighbourhoods(roster.participants, self.config.neighbours, roster.graph_seed)[self.client_id]
        self._neighbour_keys = {key.client_id: key for key in roster.keys}
        if set(self._neighbour_keys) != expected:
            raise SecAggError(f"client {self.client_id} got keys for {sorted(self._neighbour_keys)}, "
                              f"not its neighbours {sorted(expected)}")
        if len({k.mask_public_key for k in roster.keys} | {self.advertise().mask_public_key}) != len(expected) + 1:
            raise SecAggError(f"client {self.client_id} got duplicate public keys")
        self._threshold = self.config.threshold_for(len(expected) + 1)
        holders = sorted(expected | {self.client_id})
        with self.timer.measure("crypto_seconds"):
            seed_shares = shamir_share(self._self_mask_seed, holders, self._threshold)
            key_shares = shamir_share(self._mask_key.private_bytes_raw(), holders, self._threshold)
            self._held_shares[self.client_id] = (seed_shares[self.client_id], key_shares[self.client_id])
            return [self._encrypt(v, seed_shares[v], key_shares[v]) for v in sorted(expected)]

    def _channel(self, other: int) -> AESGCM:
        if other not in self._channels:
            public = X25519PublicKey.from_public_bytes(self._neighbour_keys[other].channel_public_key)
            self._channels[other] = AESGCM(_kdf(self._channel_key.exchange(public), b"share channel"))
        return self._channels[other]

    def _encrypt(self, recipient: int, seed_share: int, key_share: int) -> EncryptedShare:
        nonce = secrets.token_bytes(NONCE_BYTES)
        plaintext = seed_share.to_bytes(SHARE_BYTES, "big") + key_share.to_bytes(SHARE_BYTES, "big")
        sealed = self._channel(recipient).encrypt(nonce, plaintext, _share_aad(self.client_id, recipient))
        return EncryptedShare(self.client_id, recipient, nonce + sealed)

    def _decrypt(self, share: EncryptedShare) -> None:
        if share.recipient != self.client_id or share.sender not in self._neighbour_keys:
            raise SecAggError(f"client {self.client_id} got a share from {share.sender} meant for {share.recipient}")
        nonce, sealed = share.ciphertext[:NONCE_BYTES], share.ciphertext[NONCE_BYTES:]
        plaintext = self._channel(share.sender).decrypt(nonce, sealed, _share_aad(share.sender, self.client_id))
        self._held_shares[share.sender] = (int.from_bytes(plaintext[:SHARE_BYTES], "big"),
                                           int.from_bytes(plaintext[SHARE_BYTES:], "big"))

    def masked_input(self, inbox: Sequence[EncryptedShare], update: np.ndarray, weight: float) -> MaskedInput:
        """Round 2: y_u = enc(w·x ‖ w) + PRG(b_u) ± PRG(s_uv) for each neighbour v that sent shares (U2)."""
        encoded = encode_fixed_point(update, weight, self.config)  # (P+1,) uint64; ValueError if out of range
        with self.timer.measure("crypto_seconds"):
            for share in inbox:
                self._decrypt(share)
            pair_seeds = {v: self._mask_key.exchange(X25519PublicKey.from_public_bytes(
                self._neighbour_keys[v].mask_public_key)) for v in self._held_shares if v != self.client_id}
        with self.timer.measure("mask_seconds"):
            stream = _MaskStream(len(encoded))
            stream.apply(encoded, self._self_mask_seed, b"self mask", +1)
            for v, seed in sorted(pair_seeds.items()):
                stream.apply(encoded, seed, b"pairwise mask", +1 if v > self.client_id else -1)
        wire = WIRE_DTYPES[self.config.modulus_bits]
        return MaskedInput(self.client_id, encoded.astype(wire).tobytes())  # astype keeps the low k bits

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: per owner, the share of b_owner (owner sent y) or of s_owner^SK (it did not); never both."""
        survivors = set(request.survivors)
        if len(survivors) < self._threshold:
            raise SecAggError(f"client {self.client_id} refuses to unmask a sum of {len(survivors)} < t = "
                              f"{self._threshold} clients")
        held = self._held_shares.items()
        return UnmaskResponse(
            self.client_id,
            {owner: seed.to_bytes(SHARE_BYTES, "big") for owner, (seed, _) in held if owner in survivors},
            {owner: key.to_bytes(SHARE_BYTES, "big") for owner, (_, key) in held if owner not in survivors},
        )


@dataclass
class _Ledger:
    keys: int = 0
    shares: int = 0
    masked: int = 0
    unmasking: int = 0


class SecAggServer:
    """The server's side: routes messages, sums masked inputs mod 2^k, and removes the masks at the end."""

    def __init__(self, config: SecAggConfig, vector_length: int) -> None:
        self.config, self.timer, self.bytes = config, _Stopwatch(), _Ledger()
        self._length = vector_length + 1  # the weight rides as the last coordinate
        self._graph_seed = secrets.token_bytes(16)  # announced to all; SecAgg+ wants an unbiased beacon
        self._keys: dict[int, KeyAdvertisement] = {}
        self._neighbours: dict[int, frozenset[int]] = {}
        self._threshold = 0
        self._share_senders: set[int] = set()  # U2
        self._masked_sum = np.zeros(self._length, dtype=np.uint64)
        self._survivors: set[int] = set()  # U3
        self.reconstructions: list[tuple[int, str]] = []

    def receive_keys(self, adverts: Sequence[KeyAdvertisement]) -> dict[int, Roster]:
        """Round 0: fix U1 and the graph, check t and overflow, and send each client its roster."""
        self._keys = {advert.client_id: advert for advert in adverts}
        if len(self._keys) != len(adverts):
            raise SecAggError("two key advertisements carry the same client id")
        participants = tuple(sorted(self._keys))
        self.config.check_overflow(len(participants))
        self._neighbours = neighbourhoods(participants, self.config.neighbours, self._graph_seed)
        self._threshold = self.config.threshold_for(len(self._neighbours[participants[0]]) + 1)
        if len(participants) < self._threshold:
            raise SecAggError(f"{len(participants)} clients advertised keys; t = {self._threshold} are needed")
        rosters = {
            u: Roster(participants, self._graph_seed, tuple(self._keys[v] for v in sorted(self._neighbours[u])))
            for u in participants
        }
        self.bytes.keys += sum(a.size_bytes() for a in adverts) + sum(r.size_bytes() for r in rosters.values())
        return rosters

    def route_shares(self, shares: Sequence[EncryptedShare]) -> dict[int, list[EncryptedShare]]:
        """Round 1: forward each ciphertext to its recipient (the server cannot read it)."""
        inboxes: dict[int, list[EncryptedShare]] = {}
        for share in shares:
            if share.recipient not in self._neighbours.get(share.sender, ()):
                raise SecAggError(f"client {share.sender} sent a share to non-neighbour {share.recipient}")
            inboxes.setdefault(share.recipient, []).append(share)
            self._share_senders.add(share.sender)
            self.bytes.shares += 2 * share.size_bytes()
        return inboxes

    def receive_masked_input(self, message: MaskedInput) -> None:
        """Round 2: add y_u into the running sum mod 2^64 (the masks are still on)."""
        if message.client_id not in self._share_senders or message.client_id in self._survivors:
            raise SecAggError(f"unexpected masked input from client {message.client_id}")
        masked = np.frombuffer(message.masked, dtype=WIRE_DTYPES[self.config.modulus_bits])
        if masked.shape != (self._length,):
            raise SecAggError(f"client {message.client_id} sent {masked.size} values, expected {self._length}")
        np.add(self._masked_sum, masked, out=self._masked_sum)  # wraps mod 2^64
        self._survivors.add(message.client_id)
        self.bytes.masked += message.size_bytes()

    def unmask_request(self) -> UnmaskRequest:
        """Round 3: announce U3, or fail if so few clients are left that their sum would be too revealing."""
        if len(self._survivors) < self._threshold:
            raise SecAggError(f"only {len(self._survivors)} masked inputs arrived; t = {self._threshold} are needed")
        request = UnmaskRequest(tuple(sorted(self._survivors)))
        self.bytes.unmasking += request.size_bytes() * len(self._survivors)
        return request

    def finish(self, responses: Sequence[UnmaskResponse]) -> SecAggResult:
        """Round 3: rebuild b_v (v ∈ U3) and s_d^SK (d ∈ U2 \\ U3) from ≥ t shares, strip the masks, decode."""
        responders = {r.client_id for r in responses}
        if not responders <= self._survivors or len(responders) != len(responses):
            raise SecAggError("unmasking responses from clients outside U3, or twice from one client")
        seed_shares: dict[int, dict[int, int]] = {}
        key_shares: dict[int, dict[int, int]] = {}
        for response in responses:
            self.bytes.unmasking += response.size_bytes()
            for owner, share in response.self_mask_shares.items():
                seed_shares.setdefault(owner, {})[response.client_id] = int.from_bytes(share, "big")
            for owner, share in response.mask_key_shares.items():
                key_shares.setdefault(owner, {})[response.client_id] = int.from_bytes(share, "big")
        stream = _MaskStream(self._length)
        for owner in sorted(self._survivors):  # their self-masks
            seed = self._reconstruct(seed_shares.get(owner, {}), owner, "self_mask")
            with self.timer.measure("mask_seconds"):
                stream.apply(self._masked_sum, seed, b"self mask", -1)
        for dropped in sorted(self._share_senders - self._survivors):  # the pairwise masks they left behind
            secret_key = self._reconstruct(key_shares.get(dropped, {}), dropped, "mask_key")
            key = X25519PrivateKey.from_private_bytes(secret_key)
            for u in sorted(self._neighbours[dropped] & self._survivors):
                with self.timer.measure("crypto_seconds"):
                    seed = key.exchange(X25519PublicKey.from_public_bytes(self._keys[u].mask_public_key))
                with self.timer.measure("mask_seconds"):  # u added +PRG(s_ud) if d > u: take it back out
                    stream.apply(self._masked_sum, seed, b"pairwise mask", -1 if dropped > u else +1)
        return self._result(decode_fixed_point(self._masked_sum, self.config), responders)

    def _reconstruct(self, shares: dict[int, int], owner: int, kind: str) -> bytes:
        if any(logged_owner == owner for logged_owner, _ in self.reconstructions):
            raise SecAggError(f"refusing to reconstruct a second secret of client {owner}")
        with self.timer.measure("crypto_seconds"):
            secret = shamir_reconstruct(shares, self._threshold, owner=owner)
        self.reconstructions.append((owner, kind))
        return secret.to_bytes(KEY_BYTES, "big")

    def _result(self, decoded: np.ndarray, responders: set[int]) -> SecAggResult:
        recovered = tuple(sorted(self._share_senders - responders))  # U2 \ U4
        stats = SecAggStats(
            self.bytes.keys, self.bytes.shares, self.bytes.masked, self.bytes.unmasking,
            dropouts_recovered=len(recovered), crypto_seconds=self.timer.crypto_seconds,
            mask_seconds=self.timer.mask_seconds, server_seconds=0.0, slowest_client_seconds=0.0,
        )  # the driver fills in the per-party wall times and adds the clients' crypto and mask seconds
        return SecAggResult(
            weighted_sum=decoded[:-1], total_weight=float(decoded[-1]), participants=tuple(sorted(self._keys)),
            survivors=tuple(sorted(self._survivors)), recovered_dropouts=recovered,
            reconstructions=tuple(self.reconstructions), threshold=self._threshold, stats=stats,
        )


# ---------------------------------------------------------------- one round, in process


def _check_round_inputs(updates: Mapping[int, np.ndarray], weights: Mapping[int, float],
                        dropouts: Sequence[set[int] | frozenset[int]]) -> int:
    """Validate secure_aggregate's arguments; returns P."""
    if set(updates) != set(weights) or not updates:
        raise ValueError(f"need one weight per update: {sorted(updates)} vs {sorted(weights)}")
    if not set().union(*dropouts) <= set(updates) or set(dropouts[0]) & set(dropouts[1]):
        raise ValueError("dropouts must be clients of this round, each dropping out at most once")
    shapes = {np.shape(update) for update in updates.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"updates must be 1-D vectors of one length; got shapes {sorted(shapes)}")
    return next(iter(shapes))[0]


def secure_aggregate(
    updates: Mapping[int, np.ndarray],
    weights: Mapping[int, float],
    config: SecAggConfig = SecAggConfig(),
    *,
    drop_after_sharing: set[int] | frozenset[int] = frozenset(),
    drop_after_masking: set[int] | frozenset[int] = frozenset(),
) -> SecAggResult:
    """Run one secure-aggregation round over {client_id: (P,) update} with {client_id: weight}.

    Clients in `drop_after_sharing` vanish after round 1 (not in the sum; the server rebuilds their
    mask keys); clients in `drop_after_masking` vanish after sending y_u (in the sum; the server rebuilds
    their self-masks). Raises SecAggError when fewer than t clients are left for a step, ValueError for
    bad inputs (shapes, |w·x| or |w| > clip_range, fixed-point overflow).
    """
    length = _check_round_inputs(updates, weights, (drop_after_sharing, drop_after_masking))
    seconds: dict[object, float] = {}  # wall time per party: "server" or a client id

    def timed(party: object, call: Callable[..., _T], *args: object) -> _T:  # one party's call
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            seconds[party] = seconds.get(party, 0.0) + time.perf_counter() - started

    ids = sorted(updates)
    server = timed("server", SecAggServer, config, length)
    clients = {u: timed(u, SecAggClient, u, config) for u in ids}
    rosters = timed("server", server.receive_keys, [clients[u].advertise() for u in ids])
    outgoing = [share for u in ids for share in timed(u, clients[u].share_keys, rosters[u])]
    inboxes = timed("server", server.route_shares, outgoing)
    for u in (u for u in ids if u not in drop_after_sharing):
        masked = timed(u, clients[u].masked_input, inboxes.get(u, []), updates[u], weights[u])
        timed("server", server.receive_masked_input, masked)
    request = timed("server", server.unmask_request)
    responses = [timed(u, clients[u].unmask, request) for u in request.survivors if u not in drop_after_masking]
    result = timed("server", server.finish, responses)
    stats = replace(
        result.stats,
        crypto_seconds=result.stats.crypto_seconds + sum(c.timer.crypto_seconds for c in clients.values()),
        mask_seconds=result.stats.mask_seconds + sum(c.timer.mask_seconds for c in clients.values()),
        server_seconds=seconds.pop("server"),
        slowest_client_seconds=max(seconds.values()),
    )
    return replace(result, stats=stats)
