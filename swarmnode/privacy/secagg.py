"""Secure aggregation: double masking over Z_2^32 with Shamir-shared seeds (Bonawitz et al. 2017), chain-ordered.

Pure: no I/O, no clock, no network. The chain orders every message, so every node sees the same key set,
the same committed set and the same reveals, and derives the same sum. One round r on chain `chain_id`:

1. Keys (before the round's first commit). Participant u (registry index 0..127, Shamir x = u + 1) posts
   `make_round_keys(...)[0]`: its round masking public key s_pk_u, a commitment to its self-mask seed b_u
   (OS randomness), and a bundle: Shamir shares (threshold t) of s_sk_u and of b_u for every recipient,
   each pair encrypted (ChaCha20Poly1305) under HKDF(X25519(u's share key, v's share key)) and bound to
   (chain_id, r, u, v, t, s_pk_u, commit_u). It keeps the RoundSecret (b_u) on disk until the round ends.
2. K(r) = `build_keyset(posts before the first commit, in chain order)`: invalid posts are dropped,
   deterministically, with a reason.
3. Commit: u publishes `mask(x_u, secret, keyset)`:
       y_u = x_u + PRG(b_u) + sum_{v in K, v != u} (+PRG(s_uv) if u < v else -PRG(s_uv))   (mod 2^32)
   with s_uv = HKDF(X25519(s_sk_u, s_pk_v)) bound to (chain_id, r, {u, v}, both public keys).
4. Reveal (after the window): U3 = the committed participants. Every alive v posts `reveal(...)`: its
   share of b_u for u in U3, of s_sk_u for u in K \\ U3; never both for one u.
5. `unmask_sum(...)` reconstructs each needed secret from the reveals in chain order (first t shares,
   then Reed-Solomon decoding, then a bounded subset search; every candidate is verified against
   commit_u or s_pk_u) and returns the exact integer sum of the x_u, or None with a reason per participant.

PRG(seed): the ChaCha20 keystream (key = seed, nonce 0) read as little-endian uint32 words, one stream over
the tensors in sorted-name order. Every input coordinate must satisfy |x| <= MAX_ABS_VALUE, so the sum of up
to 128 inputs reads back exactly as a signed int32. A masked tensor viewed as int32 fits the update codec.

Encodings are fixed binary, big-endian, with exact lengths; their decoders are total: any other input raises
MalformedSecAgg naming the fault. Indices are u8 (< 128), chain_id and round u64, shares 33 bytes (< FIELD_PRIME):

    bundle  "SASB" | 1 | chain_id | round | dealer | t | salt[16] | count (1..128)
            | count x (recipient | ChaCha20Poly1305(share of s_sk_u | share of b_u)[82]), recipients ascending
    reveal  "SASR" | 1 | chain_id | round | revealer | count (0..128)
            | count x (subject | kind: 1 = MASK_KEY, 2 = SELF_SEED | share[33]), subjects ascending
    secret  "SASK" | 1 | chain_id | round | index | s_sk_u[32] | b_u[32]

Limits (no verifiable secret sharing): a dealer can post shares that do not open, or do not interpolate,
and then drop out; its secret is then unrecoverable and so is the round's sum. unmask_sum reports that
dealer by index. Against hostile revealers, a secret comes out while its honest shares number at least t
and either the wrong ones are at most (received - t) // 2 or a subset search within
MAX_RECONSTRUCTION_ATTEMPTS finds t good ones.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import operator
import secrets
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_PARTICIPANTS = 128  # registry indices 0..127
MAX_ABS_VALUE = 2**24 - 1  # 128 * MAX_ABS_VALUE < 2**31: a sum of up to 128 inputs is exact as int32
FIELD_PRIME = 2**256 + 297  # the smallest prime above 2**256: every 32-byte secret is a field element
SHARE_BYTES = 33
KEY_BYTES = 32
MAX_RECONSTRUCTION_ATTEMPTS = 64  # candidate secrets tried per participant before it is unrecoverable
MAX_UINT64 = 2**64 - 1

MASK_KEY, SELF_SEED = 1, 2  # what a revealed share is a share of: s_sk_u (u dropped) or b_u (u committed)
KIND_NAMES = {MASK_KEY: "mask-key", SELF_SEED: "self-seed"}

_VERSION = 1
_BUNDLE_MAGIC, _REVEAL_MAGIC, _SECRET_MAGIC = b"SASB", b"SASR", b"SASK"
_BUNDLE_HEAD = struct.Struct(">4sBQQBB16sB")  # magic version chain_id round dealer threshold salt count
_REVEAL_HEAD = struct.Struct(">4sBQQBB")  # magic version chain_id round revealer count
_SECRET_LAYOUT = struct.Struct(">4sBQQB32s32s")  # magic version chain_id round index mask_sk self_seed
_CIPHERTEXT_BYTES = 2 * SHARE_BYTES + 16  # both shares and the Poly1305 tag
_BUNDLE_ENTRY = 1 + _CIPHERTEXT_BYTES
_REVEAL_ENTRY = 2 + SHARE_BYTES
_ZERO_NONCE = bytes(12)


class SecAggError(Exception):
    """Base class for errors raised by swarmnode.privacy.secagg."""


class MalformedSecAgg(SecAggError):
    """Bytes that are not a canonical bundle, reveal or round secret; the message names the fault."""


class InvalidInput(SecAggError):
    """Arguments that do not fit together (wrong sizes, another round's secret, a committed set outside K)."""


class InvalidPublicKey(InvalidInput):
    """An X25519 public key that is not 32 bytes or is a low-order point (its shared secrets are zero)."""


class InvalidThreshold(InvalidInput):
    """A Shamir threshold that cannot work for the number of recipients."""


class ValueOutOfRange(InvalidInput):
    """An input tensor that is not integer, or a coordinate with |x| > MAX_ABS_VALUE."""


class UndecryptableShare(SecAggError):
    """A bundle entry that does not open with this recipient's key in this context (garbage or misdirected)."""


class ConflictingReveal(SecAggError):
    """Refused: the reveal would disclose both shares (of s_sk_u and of b_u) of one participant u."""


# ---------------------------------------------------------------- keys and public data

def _context(chain_id: int, round_: int) -> bytes:
    for what, value in (("chain_id", chain_id), ("round", round_)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT64:
            raise InvalidInput(f"{what} must be an integer in [0, 2**64), got {value!r}")
    return struct.pack(">QQ", chain_id, round_)


def _check_index(index: int, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_PARTICIPANTS:
        raise InvalidInput(f"{what} must be a registry index in [0, {MAX_PARTICIPANTS}), got {index!r}")
    return index


def _check_bytes(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidInput(f"{what} must be {size} bytes, got {type(value).__name__} of {len(value) if isinstance(value, bytes | bytearray) else '?'}")
    return value


def _hkdf(ikm: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(ikm)


def _public(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def _agree(sk: bytes, pk: bytes, what: str) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise InvalidPublicKey(f"{what} {pk.hex()[:16]}..: {exc}") from None


_PROBE_KEY = bytes([9]) * KEY_BYTES


def check_public_key(pk: bytes, what: str = "public key") -> bytes:
    """`pk` if it is a usable X25519 public key; InvalidPublicKey otherwise (wrong size, low-order point)."""
    if not isinstance(pk, bytes) or len(pk) != KEY_BYTES:
        raise InvalidPublicKey(f"{what} must be {KEY_BYTES} bytes, got {pk!r:.40}")
    _agree(_PROBE_KEY, pk, what)  # a clamped scalar kills the small subgroup: zero iff pk is low order
    return pk


def _node_secret(node_secret: bytes) -> bytes:
    return _check_bytes(node_secret, KEY_BYTES, "node secret")


def share_keypair(node_secret: bytes, chain_id: int) -> tuple[bytes, bytes]:
    """(share_sk, share_pk): the long-term X25519 key that Shamir shares are encrypted to; post share_pk once."""
    sk = _hkdf(_node_secret(node_secret), b"swarmnode-secagg-share" + _context(chain_id, 0)[:8])
    return sk, _public(sk)


def mask_keypair(node_secret: bytes, chain_id: int, round_: int) -> tuple[bytes, bytes]:
    """(s_sk, s_pk) of one round: deterministic per node and round, so a restarted node recovers them."""
    sk = _hkdf(_node_secret(node_secret), b"swarmnode-secagg-mask" + _context(chain_id, round_))
    return sk, _public(sk)


def self_seed_commitment(chain_id: int, round_: int, index: int, self_seed: bytes) -> bytes:
    """commit_u: SHA-256 of b_u bound to (chain_id, round, u); what a reconstructed b_u is checked against."""
    _check_index(index, "index")
    return hashlib.sha256(b"swarmnode-secagg-commit" + _context(chain_id, round_) + bytes([index])
                          + _check_bytes(self_seed, KEY_BYTES, "self seed")).digest()


def threshold_for(n: int, configured: int = 0) -> int:
    """The Shamir threshold for n recipients: `configured` (the genesis secagg_threshold) or, when it is 0,
    a majority floor(n/2) + 1; at least 2 unless n == 1. InvalidThreshold if it exceeds n."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARTICIPANTS:
        raise InvalidThreshold(f"recipient count must be in [1, {MAX_PARTICIPANTS}], got {n!r}")
    if isinstance(configured, bool) or not isinstance(configured, int) or not 0 <= configured <= MAX_PARTICIPANTS:
        raise InvalidThreshold(f"configured threshold must be in [0, {MAX_PARTICIPANTS}], got {configured!r}")
    t = configured or n // 2 + 1
    if n > 1:
        t = max(t, 2)  # t = 1 would hand each secret to any single recipient
    if t > n:
        raise InvalidThreshold(f"threshold {t} exceeds the {n} recipients: no secret could ever be rebuilt")
    return t


# ---------------------------------------------------------------- encodings

@dataclass(frozen=True)
class Bundle:
    """A dealer's encrypted shares: entries are (recipient index, ciphertext), recipients strictly ascending."""

    chain_id: int
    round: int
    dealer: int
    threshold: int
    salt: bytes  # 16 random bytes: every bundle gets fresh AEAD keys, even if a dealer deals twice
    entries: tuple[tuple[int, bytes], ...]

    @property
    def recipients(self) -> tuple[int, ...]:
        return tuple(r for r, _ in self.entries)


@dataclass(frozen=True)
class Reveal:
    """One revealer's shares: entries are (subject index, MASK_KEY | SELF_SEED, share), subjects ascending."""

    chain_id: int
    round: int
    revealer: int
    entries: tuple[tuple[int, int, int], ...]


def encode_bundle(bundle: Bundle) -> bytes:
    head = _BUNDLE_HEAD.pack(_BUNDLE_MAGIC, _VERSION, bundle.chain_id, bundle.round, bundle.dealer,
                             bundle.threshold, bundle.salt, len(bundle.entries))
    return head + b"".join(bytes([r]) + ct for r, ct in bundle.entries)


def _header(data: bytes, layout: struct.Struct, magic: bytes, what: str, max_bytes: int) -> tuple:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedSecAgg(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MalformedSecAgg(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < layout.size:
        raise MalformedSecAgg(f"{what}: {len(data)} bytes, shorter than its {layout.size}-byte header")
    fields = layout.unpack_from(data)
    if fields[0] != magic:
        raise MalformedSecAgg(f"{what}: bad magic {fields[0]!r}, expected {magic!r}")
    if fields[1] != _VERSION:
        raise MalformedSecAgg(f"{what}: unsupported version {fields[1]}, expected {_VERSION}")
    return fields


def _ascending(indices: list[int], what: str) -> None:
    for prev, cur in itertools.pairwise(indices):
        if cur <= prev:
            raise MalformedSecAgg(f"{what}: indices not strictly ascending ({cur} after {prev})")
    if indices and indices[-1] >= MAX_PARTICIPANTS:
        raise MalformedSecAgg(f"{what}: index {indices[-1]} outside [0, {MAX_PARTICIPANTS})")


MAX_BUNDLE_BYTES = _BUNDLE_HEAD.size + MAX_PARTICIPANTS * _BUNDLE_ENTRY
MAX_REVEAL_BYTES = _REVEAL_HEAD.size + MAX_PARTICIPANTS * _REVEAL_ENTRY


def decode_bundle(data: bytes) -> Bundle:
    """Strictly decode a bundle. Total: anything but a canonical encoding raises MalformedSecAgg."""
    _, _, chain_id, round_, dealer, t, salt, count = _header(data, _BUNDLE_HEAD, _BUNDLE_MAGIC, "bundle",
                                                              MAX_BUNDLE_BYTES)
    data = bytes(data)
    if dealer >= MAX_PARTICIPANTS:
        raise MalformedSecAgg(f"bundle: dealer index {dealer} outside [0, {MAX_PARTICIPANTS})")
    if not 1 <= count <= MAX_PARTICIPANTS:
        raise MalformedSecAgg(f"bundle: {count} recipients, expected 1..{MAX_PARTICIPANTS}")
    if len(data) != _BUNDLE_HEAD.size + count * _BUNDLE_ENTRY:
        raise MalformedSecAgg(f"bundle: {len(data)} bytes, expected {_BUNDLE_HEAD.size + count * _BUNDLE_ENTRY} "
                              f"for {count} recipients")
    if not 1 <= t <= count:
        raise MalformedSecAgg(f"bundle: threshold {t} outside 1..{count}")
    at = _BUNDLE_HEAD.size
    entries = tuple((data[p], data[p + 1 : p + _BUNDLE_ENTRY]) for p in range(at, len(data), _BUNDLE_ENTRY))
    _ascending([r for r, _ in entries], "bundle recipients")
    return Bundle(chain_id, round_, dealer, t, salt, entries)


def encode_reveal(reveal: Reveal) -> bytes:
    head = _REVEAL_HEAD.pack(_REVEAL_MAGIC, _VERSION, reveal.chain_id, reveal.round, reveal.revealer,
                             len(reveal.entries))
    return head + b"".join(bytes([u, kind]) + share.to_bytes(SHARE_BYTES, "big") for u, kind, share in reveal.entries)


def decode_reveal(data: bytes) -> Reveal:
    """Strictly decode a reveal. Total: anything but a canonical encoding raises MalformedSecAgg."""
    _, _, chain_id, round_, revealer, count = _header(data, _REVEAL_HEAD, _REVEAL_MAGIC, "reveal",
                                                      MAX_REVEAL_BYTES)
    data = bytes(data)
    if revealer >= MAX_PARTICIPANTS:
        raise MalformedSecAgg(f"reveal: revealer index {revealer} outside [0, {MAX_PARTICIPANTS})")
    if len(data) != _REVEAL_HEAD.size + count * _REVEAL_ENTRY:
        raise MalformedSecAgg(f"reveal: {len(data)} bytes, expected {_REVEAL_HEAD.size + count * _REVEAL_ENTRY} "
                              f"for {count} shares")
    entries = []
    for p in range(_REVEAL_HEAD.size, len(data), _REVEAL_ENTRY):
        subject, kind = data[p], data[p + 1]
        share = int.from_bytes(data[p + 2 : p + _REVEAL_ENTRY], "big")
        if kind not in KIND_NAMES:
            raise MalformedSecAgg(f"reveal: share of subject {subject} has kind {kind}, expected 1 or 2")
        if share >= FIELD_PRIME:
            raise MalformedSecAgg(f"reveal: share of subject {subject} is not below the field prime")
        entries.append((subject, kind, share))
    _ascending([u for u, _, _ in entries], "reveal subjects")
    return Reveal(chain_id, round_, revealer, tuple(entries))


@dataclass(frozen=True)
class RoundPost:
    """What participant `index` posts on chain for a round, before its first commit."""

    index: int
    mask_pk: bytes  # s_pk_u
    commit: bytes  # self_seed_commitment(chain_id, round, index, b_u)
    bundle: bytes  # encode_bundle(...)


@dataclass(frozen=True)
class RoundSecret:
    """What participant `index` keeps (file mode 0600) from posting its keys until the round's sum is final."""

    chain_id: int
    round: int
    index: int
    mask_sk: bytes = field(repr=False)  # s_sk_u (also derivable from the node secret)
    self_seed: bytes = field(repr=False)  # b_u: OS randomness, recoverable from nowhere else

    def to_bytes(self) -> bytes:
        return _SECRET_LAYOUT.pack(_SECRET_MAGIC, _VERSION, self.chain_id, self.round, self.index,
                                   self.mask_sk, self.self_seed)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSecret:
        """Strict and total: anything but `to_bytes` output raises MalformedSecAgg."""
        _, _, chain_id, round_, index, mask_sk, seed = _header(data, _SECRET_LAYOUT, _SECRET_MAGIC,
                                                               "round secret", _SECRET_LAYOUT.size)
        if len(data) != _SECRET_LAYOUT.size:
            raise MalformedSecAgg(f"round secret: {len(data)} bytes, expected {_SECRET_LAYOUT.size}")
        if index >= MAX_PARTICIPANTS:
            raise MalformedSecAgg(f"round secret: index {index} outside [0, {MAX_PARTICIPANTS})")
        return cls(chain_id, round_, index, mask_sk, seed)


# ---------------------------------------------------------------- Shamir over GF(FIELD_PRIME)

def _split(secret: int, t: int, xs: Sequence[int]) -> list[int]:
    coeffs = [secret] + [secrets.randbelow(FIELD_PRIME) for _ in range(t - 1)]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % FIELD_PRIME
        out.append(acc)
    return out


def _weights(xs: tuple[int, ...], at: int) -> list[int]:
    """w_i = prod_{j != i} (at - x_j) / (x_i - x_j): f(at) = sum w_i f(x_i). The x are small distinct
    integers, so numerators and denominators are exact integers that the prime (> 2**256) never divides."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num *= at - xj
                den *= xi - xj
        out.append(num * pow(den, -1, FIELD_PRIME) % FIELD_PRIME)
    return out


def _trim(a: list[int]) -> list[int]:
    while a and a[-1] == 0:
        a.pop()
    return a


def _poly_mul(a: list[int], b: list[int]) -> list[int]:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return _trim([c % FIELD_PRIME for c in out])


def _poly_divmod(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    rem, inv = list(a), pow(b[-1], -1, FIELD_PRIME)
    quo = [0] * max(0, len(a) - len(b) + 1)
    for k in range(len(quo) - 1, -1, -1):
        c = rem[k + len(b) - 1] * inv % FIELD_PRIME
        quo[k] = c
        if c:
            for j, bj in enumerate(b):
                rem[k + j] = (rem[k + j] - c * bj) % FIELD_PRIME
    return _trim(quo), _trim(rem[: len(b) - 1])


def _poly_eval(f: list[int], x: int) -> int:
    acc = 0
    for c in reversed(f):
        acc = (acc * x + c) % FIELD_PRIME
    return acc


@dataclass(frozen=True)
class _Points:
    """What Reed-Solomon decoding needs of a set of x alone: g0 = prod (X - x_i) and the Lagrange basis."""

    g0: list[int]
    basis_by_degree: list[tuple[int, ...]]  # [d][i]: coefficient of X^d in g0 / (X - x_i)
    inverse_denominators: list[int]  # 1 / prod_{j != i} (x_i - x_j)

    @classmethod
    def of(cls, xs: tuple[int, ...]) -> _Points:
        g0 = [1]
        for x in xs:  # times (X - x)
            g0 = [(lo - x * hi) % FIELD_PRIME for lo, hi in zip([0, *g0], [*g0, 0], strict=True)]
        basis = []
        for x in xs:  # synthetic division by (X - x), exact since x is a root
            b = [0] * len(xs)
            b[-1] = g0[-1]
            for d in range(len(xs) - 1, 0, -1):
                b[d - 1] = (g0[d] + x * b[d]) % FIELD_PRIME
            basis.append(b)
        inv = [pow(math.prod(xi - xj for xj in xs if xj != xi), -1, FIELD_PRIME) for xi in xs]
        return cls(g0, [tuple(col) for col in zip(*basis, strict=True)], inv)


def _rs_decode(xs: Sequence[int], ys: Sequence[int], k: int, points: _Points | None = None) -> list[int] | None:
    """The polynomial of degree < k through all but at most (n - k) // 2 of the n points (Gao 2003), or None."""
    n = len(xs)
    points = points or _Points.of(tuple(xs))
    w = [y * d % FIELD_PRIME for y, d in zip(ys, points.inverse_denominators, strict=True)]
    g1 = _trim([sum(map(operator.mul, w, col)) % FIELD_PRIME for col in points.basis_by_degree])
    r0, r1 = points.g0, g1
    v0: list[int] = []
    v1 = [1]
    while r1 and 2 * (len(r1) - 1) >= n + k:  # partial extended Euclid on (g0, g1)
        q, r = _poly_divmod(r0, r1)
        qv = _poly_mul(q, v1)
        width = max(len(v0), len(qv))
        v0, v1 = v1, _trim([((v0[d] if d < len(v0) else 0) - (qv[d] if d < len(qv) else 0)) % FIELD_PRIME
                            for d in range(width)])
        r0, r1 = r1, r
    if not v1:
        return None
    f, rem = _poly_divmod(r1, v1)
    return f if not rem and len(f) <= k else None


class _Rebuilder:
    """Rebuilds each secret from its shares (x, y) in chain order; every candidate is verified by `check`.

    Order: the first t shares of revealers not yet caught lying; then Reed-Solomon decoding of all shares
    (corrects up to (n - t) // 2 wrong ones, and catches their revealers); then t-subsets keeping the newest
    share of a growing window (drop 1 of the first t+1, drop 2 of the first t+2, ...), up to
    MAX_RECONSTRUCTION_ATTEMPTS candidates. Once one secret is lost the sum is lost, so later secrets get
    the first path only: hostile shares cannot buy more than one full search per unmasking.
    """

    def __init__(self) -> None:
        self.suspects: set[int] = set()  # x of revealers whose share disagreed with a decoded polynomial
        self.lost = False
        self._weights: dict[tuple[int, ...], list[int]] = {}
        self._points: dict[tuple[int, ...], _Points] = {}

    def _at_zero(self, shares: list[tuple[int, int]], subset: Sequence[int]) -> int:
        xs = tuple(shares[i][0] for i in subset)
        if xs not in self._weights:
            self._weights[xs] = _weights(xs, 0)
        return sum(c * shares[i][1] for c, i in zip(self._weights[xs], subset, strict=True)) % FIELD_PRIME

    def rebuild(self, shares: list[tuple[int, int]], t: int, check: Callable[[int], bytes | None]
                ) -> tuple[bytes | None, str]:
        n = len(shares)
        if n < t:
            return None, f"{n} shares, threshold {t}"
        trusted = [i for i, (x, _) in enumerate(shares) if x not in self.suspects]
        first = tuple(trusted[:t]) if len(trusted) >= t else tuple(range(t))
        got = check(self._at_zero(shares, first))
        if got is not None:
            return got, "first t shares" + (" of revealers not caught lying" if first != tuple(range(t)) else "")
        if self.lost:
            return None, "first t shares failed; not searched further (another secret is already lost)"
        found = self._decode(shares, t, check) if n >= t + 2 else None
        if found is None:
            found = self._search(shares, t, check, tried={first})
        if found[0] is None:
            self.lost = True
        return found

    def _decode(self, shares: list[tuple[int, int]], t: int, check: Callable[[int], bytes | None]
                ) -> tuple[bytes | None, str] | None:
        xs = tuple(x for x, _ in shares)
        if xs not in self._points:
            self._points[xs] = _Points.of(xs)
        f = _rs_decode(xs, [y for _, y in shares], t, self._points[xs])
        if f is None:
            return None
        got = check(f[0] if f else 0)
        if got is None:
            return None
        wrong = [x for x, y in shares if _poly_eval(f, x) != y]
        self.suspects.update(wrong)
        return got, f"decoded {len(shares)} shares, {len(wrong)} wrong (revealers {[x - 1 for x in wrong]})"

    def _search(self, shares: list[tuple[int, int]], t: int, check: Callable[[int], bytes | None],
                tried: set[tuple[int, ...]]) -> tuple[bytes | None, str]:
        attempts = len(tried) + (len(shares) >= t + 2)
        for d in range(1, len(shares) - t + 1):
            for dropped in itertools.combinations(range(t + d - 1), d):
                subset = tuple(i for i in range(t + d) if i not in dropped)
                if subset in tried:
                    continue
                if attempts >= MAX_RECONSTRUCTION_ATTEMPTS:
                    return None, f"no verified secret from {len(shares)} shares in {attempts} attempts"
                tried.add(subset)
                attempts += 1
                got = check(self._at_zero(shares, subset))
                if got is not None:
                    return got, f"subset of shares {list(subset)}, attempt {attempts}"
        return None, f"no verified secret from {len(shares)} shares in {attempts} attempts"


# ---------------------------------------------------------------- round keys and the key set

def _bundle_key(share_sk: bytes, peer_pk: bytes, salt: bytes, ctx: bytes, dealer: int, recipient: int) -> bytes:
    shared = _agree(share_sk, peer_pk, "share key")
    return _hkdf(shared, b"swarmnode-secagg-bundle" + ctx + bytes([dealer, recipient]), salt=salt)


def _bundle_aad(ctx: bytes, dealer: int, recipient: int, t: int, mask_pk: bytes, commit: bytes) -> bytes:
    return b"swarmnode-secagg-bundle" + ctx + bytes([dealer, recipient, t]) + mask_pk + commit


def make_round_keys(node_secret: bytes, my_index: int, chain_id: int, round_: int,
                    recipients: Sequence[tuple[int, bytes]], threshold: int) -> tuple[RoundPost, RoundSecret]:
    """Deal this node's round keys: (the post for the chain, the secret to keep until the round ends).

    `recipients` are (registry index, share_pk) of everyone who gets shares (this node may be one of them);
    `threshold` is threshold_for(len(recipients), genesis secagg_threshold). b_u and the Shamir coefficients
    come from the OS: call this once per round, and store the RoundSecret durably before the post is sent
    (without b_u this node's committed update can never be unmasked). On a restart, reuse the stored pair.
    """
    ctx = _context(chain_id, round_)
    _check_index(my_index, "my_index")
    recips = sorted(recipients)
    if not 1 <= len(recips) <= MAX_PARTICIPANTS:
        raise InvalidInput(f"{len(recips)} recipients, expected 1..{MAX_PARTICIPANTS}")
    for (a, _), (b, _) in itertools.pairwise(recips):
        if a == b:
            raise InvalidInput(f"recipient {a} listed twice")
    for r, pk in recips:
        check_public_key(pk, f"share key of recipient {_check_index(r, 'recipient')}")
    lowest = 1 if len(recips) == 1 else 2
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not lowest <= threshold <= len(recips):
        raise InvalidThreshold(f"threshold {threshold!r} for {len(recips)} recipients: expected {lowest}..{len(recips)}")
    mask_sk, mask_pk = mask_keypair(node_secret, chain_id, round_)
    share_sk, _ = share_keypair(node_secret, chain_id)
    seed = secrets.token_bytes(KEY_BYTES)
    commit = self_seed_commitment(chain_id, round_, my_index, seed)
    xs = [r + 1 for r, _ in recips]
    key_shares = _split(int.from_bytes(mask_sk, "big"), threshold, xs)
    seed_shares = _split(int.from_bytes(seed, "big"), threshold, xs)
    salt = secrets.token_bytes(16)
    entries = []
    for (r, pk), ks, ss in zip(recips, key_shares, seed_shares, strict=True):
        aead = ChaCha20Poly1305(_bundle_key(share_sk, pk, salt, ctx, my_index, r))
        plain = ks.to_bytes(SHARE_BYTES, "big") + ss.to_bytes(SHARE_BYTES, "big")
        entries.append((r, aead.encrypt(_ZERO_NONCE, plain, _bundle_aad(ctx, my_index, r, threshold, mask_pk, commit))))
    bundle = encode_bundle(Bundle(chain_id, round_, my_index, threshold, salt, tuple(entries)))
    return RoundPost(my_index, mask_pk, commit, bundle), RoundSecret(chain_id, round_, my_index, mask_sk, seed)


@dataclass(frozen=True)
class KeyEntry:
    """One member of K(r): its long-term share key (from the registry) and its round post, decoded."""

    index: int
    share_pk: bytes
    mask_pk: bytes
    commit: bytes
    bundle: Bundle


@dataclass(frozen=True)
class KeySet:
    """K(r): the members that posted valid round keys before the round's first commit, by index."""

    chain_id: int
    round: int
    entries: Mapping[int, KeyEntry]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.entries))

    def digest(self) -> bytes:
        """32 bytes naming exactly this K(r) (members, keys, commitments, bundles): a commit can carry it so
        that the chain accepts only updates masked over the same key set."""
        h = hashlib.sha256(b"swarmnode-secagg-keyset" + _context(self.chain_id, self.round))
        for i in self.indices:
            e = self.entries[i]
            h.update(bytes([i]) + e.share_pk + e.mask_pk + e.commit + hashlib.sha256(encode_bundle(e.bundle)).digest())
        return h.digest()


def _check_post(post: RoundPost, ctx: bytes, chain_id: int, round_: int, share_keys: Mapping[int, bytes],
                configured_threshold: int) -> KeyEntry:
    if post.index not in share_keys:
        raise InvalidInput("no share key registered")
    share_pk = check_public_key(share_keys[post.index], "share key")
    mask_pk = check_public_key(post.mask_pk, "mask key")
    _check_bytes(post.commit, 32, "commit")
    try:
        bundle = decode_bundle(post.bundle)
    except MalformedSecAgg as exc:
        raise InvalidInput(str(exc)) from None
    if (bundle.chain_id, bundle.round, bundle.dealer) != (chain_id, round_, post.index):
        raise InvalidInput(f"bundle dealt by {bundle.dealer} for chain {bundle.chain_id} round {bundle.round}")
    expected = threshold_for(len(bundle.entries), configured_threshold)
    if bundle.threshold != expected:
        raise InvalidInput(f"bundle threshold {bundle.threshold}, expected {expected} for "
                           f"{len(bundle.entries)} recipients")
    return KeyEntry(post.index, share_pk, mask_pk, post.commit, bundle)


def build_keyset(chain_id: int, round_: int, posts: Sequence[RoundPost], share_keys: Mapping[int, bytes],
                 configured_threshold: int = 0) -> tuple[KeySet, dict[int, str]]:
    """K(r) from the round's key posts in chain order (those before the first commit), and the posts left out
    with a reason: the same on every node. A participant's first post counts; a later one is a duplicate."""
    ctx = _context(chain_id, round_)
    entries: dict[int, KeyEntry] = {}
    rejected: dict[int, str] = {}
    for post in posts:
        try:
            _check_index(post.index, "poster")
            if post.index in entries or post.index in rejected:
                raise InvalidInput("duplicate post (the first one counts)")
            entries[post.index] = _check_post(post, ctx, chain_id, round_, share_keys, configured_threshold)
        except SecAggError as exc:
            rejected.setdefault(post.index, str(exc))
    return KeySet(chain_id, round_, dict(sorted(entries.items()))), rejected


def open_shares(entry: KeyEntry, my_index: int, share_sk: bytes, chain_id: int, round_: int) -> tuple[int, int]:
    """(share of s_sk_u, share of b_u) that dealer `entry` dealt to `my_index`; UndecryptableShare if none opens."""
    ctx = _context(chain_id, round_)
    bundle = entry.bundle
    ct = dict(bundle.entries).get(my_index)
    if ct is None:
        raise UndecryptableShare(f"dealer {entry.index} dealt no share to {my_index}")
    try:
        key = _bundle_key(share_sk, entry.share_pk, bundle.salt, ctx, entry.index, my_index)
        aad = _bundle_aad(ctx, entry.index, my_index, bundle.threshold, entry.mask_pk, entry.commit)
        plain = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ct, aad)
    except (InvalidTag, InvalidPublicKey):
        raise UndecryptableShare(f"the share dealer {entry.index} dealt to {my_index} does not open "
                                 f"(chain {chain_id}, round {round_})") from None
    ks, ss = int.from_bytes(plain[:SHARE_BYTES], "big"), int.from_bytes(plain[SHARE_BYTES:], "big")
    if ks >= FIELD_PRIME or ss >= FIELD_PRIME:
        raise UndecryptableShare(f"dealer {entry.index} dealt {my_index} a share outside the field")
    return ks, ss


# ---------------------------------------------------------------- masking

def prg_words(seed: bytes, count: int) -> np.ndarray:
    """PRG(seed): `count` uint32 words, the ChaCha20 keystream (key = seed, nonce 0) read little-endian."""
    return _Keystream(count).words(seed).copy()


class _Keystream:
    """Reusable buffers for PRG streams of one length (a masking sums up to 128 of them)."""

    def __init__(self, count: int) -> None:
        self.zeros = bytes(4 * count)
        self.buf = bytearray(4 * count)

    def words(self, seed: bytes) -> np.ndarray:
        Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update_into(self.zeros, self.buf)
        return np.frombuffer(self.buf, dtype="<u4")


def _self_key(ctx: bytes, index: int, seed: bytes) -> bytes:
    return _hkdf(seed, b"swarmnode-secagg-self" + ctx + bytes([index]))


def _pair_key(ctx: bytes, my_sk: bytes, me: int, my_pk: bytes, other: int, other_pk: bytes) -> bytes:
    shared = _agree(my_sk, other_pk, f"mask key of {other}")
    (lo, lo_pk), (hi, hi_pk) = sorted(((me, my_pk), (other, other_pk)))
    return _hkdf(shared, b"swarmnode-secagg-pair" + ctx + bytes([lo, hi]) + lo_pk + hi_pk)


def _as_array(value: object) -> np.ndarray:
    """A numpy array of a numpy array or a torch tensor (anything with .detach())."""
    detach = getattr(value, "detach", None)
    return np.asarray(detach().cpu().numpy()) if callable(detach) else np.asarray(value)


def _flatten(x: Mapping[str, object]) -> tuple[list[tuple[str, tuple[int, ...]]], np.ndarray]:
    layout, parts = [], []
    for name in sorted(x):
        if not isinstance(name, str):
            raise ValueOutOfRange(f"tensor name {name!r} is not a string")
        value = x[name]
        arr = _as_array(value)
        if arr.dtype.kind not in "iu":
            raise ValueOutOfRange(f"tensor {name!r} has dtype {arr.dtype}, expected integers")
        if arr.size and (int(arr.min()) < -MAX_ABS_VALUE or int(arr.max()) > MAX_ABS_VALUE):
            raise ValueOutOfRange(f"tensor {name!r} holds values outside [-{MAX_ABS_VALUE}, {MAX_ABS_VALUE}]: "
                                  f"[{int(arr.min())}, {int(arr.max())}]")
        layout.append((name, arr.shape))
        parts.append(arr.reshape(-1).astype(np.int64))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return layout, flat


def _unflatten(layout: list[tuple[str, tuple[int, ...]]], flat: np.ndarray) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = flat[at : at + size].reshape(shape).copy()
        at += size
    return out


def mask(x: Mapping[str, object], secret: RoundSecret, keyset: KeySet) -> dict[str, np.ndarray]:
    """y_u: the masked update (uint32 arrays, same names and shapes) that participant `secret.index` commits.

    `x` maps names to integer numpy arrays or torch tensors with |x| <= MAX_ABS_VALUE. InvalidInput if the
    secret is not the one this participant posted to `keyset` (then its masks could never be removed).
    """
    ctx = _context(keyset.chain_id, keyset.round)
    me = secret.index
    if (secret.chain_id, secret.round) != (keyset.chain_id, keyset.round):
        raise InvalidInput(f"round secret for chain {secret.chain_id} round {secret.round}, key set for chain "
                           f"{keyset.chain_id} round {keyset.round}")
    mine = keyset.entries.get(me)
    if mine is None:
        raise InvalidInput(f"participant {me} is not in the round's key set {list(keyset.indices)}")
    my_pk = _public(secret.mask_sk)
    commit = self_seed_commitment(keyset.chain_id, keyset.round, me, secret.self_seed)
    if my_pk != mine.mask_pk or commit != mine.commit:
        raise InvalidInput(f"round secret of {me} does not match its posted keys")
    layout, flat = _flatten(x)
    acc = flat.astype(np.int32).view(np.uint32)  # exact: |x| < 2**31; two's complement is x mod 2**32
    stream = _Keystream(flat.size)
    acc += stream.words(_self_key(ctx, me, secret.self_seed))
    for other, entry in keyset.entries.items():
        if other == me:
            continue
        words = stream.words(_pair_key(ctx, secret.mask_sk, me, my_pk, other, entry.mask_pk))
        if me < other:
            acc += words
        else:
            acc -= words
    return _unflatten(layout, acc)


# ---------------------------------------------------------------- reveal

def reveal(my_index: int, share_sk: bytes, keyset: KeySet, committed: Collection[int], *,
           previous: bytes | None = None) -> bytes:
    """This participant's reveal: its share of b_u for each committed u, of s_sk_u for each u in K \\ U3.

    Shares that do not open (a dealer's garbage) are left out. `previous` is this node's earlier reveal for
    the round, if it made one: ConflictingReveal if the new one would disclose the other share of anyone.
    """
    _check_index(my_index, "my_index")
    u3 = _committed_set(keyset, committed)
    entries = []
    for u, entry in keyset.entries.items():
        try:
            key_share, seed_share = open_shares(entry, my_index, share_sk, keyset.chain_id, keyset.round)
        except UndecryptableShare:
            continue
        entries.append((u, SELF_SEED, seed_share) if u in u3 else (u, MASK_KEY, key_share))
    made = Reveal(keyset.chain_id, keyset.round, my_index, tuple(entries))
    if previous is not None:
        _refuse_conflict(decode_reveal(previous), made)
    return encode_reveal(made)


def _committed_set(keyset: KeySet, committed: Collection[int]) -> frozenset[int]:
    u3 = frozenset(committed)
    outside = sorted(u for u in u3 if u not in keyset.entries)
    if outside:
        raise InvalidInput(f"committed participants {outside} are not in the key set {list(keyset.indices)}")
    return u3


def _refuse_conflict(old: Reveal, new: Reveal) -> None:
    if (old.chain_id, old.round, old.revealer) != (new.chain_id, new.round, new.revealer):
        raise ConflictingReveal(f"previous reveal is by {old.revealer} for chain {old.chain_id} round "
                                f"{old.round}, not by {new.revealer} for chain {new.chain_id} round {new.round}")
    kinds = {u: kind for u, kind, _ in old.entries}
    for u, kind, _ in new.entries:
        if kinds.get(u, kind) != kind:
            raise ConflictingReveal(f"refusing to reveal the {KIND_NAMES[kind]} share of participant {u}: "
                                    f"its {KIND_NAMES[kinds[u]]} share is already revealed")


# ---------------------------------------------------------------- reconstruction and the sum

@dataclass(frozen=True)
class SecretStatus:
    """How the secret needed from participant `index` was (or was not) rebuilt."""

    index: int
    needed: str  # "self-seed" (committed: b_u) or "mask-key" (dropped: s_sk_u)
    shares: int  # usable shares received
    recovered: bool
    detail: str  # how it was rebuilt, or why it could not be


@dataclass(frozen=True)
class UnmaskResult:
    """The exact sum of the committed inputs (int64 arrays), or None; and what happened to each part."""

    sum: dict[str, np.ndarray] | None
    secrets: dict[int, SecretStatus]
    revealers: dict[int, str]  # reveals (or parts) ignored, by revealer: malformed, duplicate, wrong kind ...
    inputs: dict[int, str]  # committed participants whose masked input is missing or has the wrong layout
    reason: str = ""  # why sum is None

    @property
    def ok(self) -> bool:
        return self.sum is not None

    @property
    def unrecoverable(self) -> tuple[int, ...]:
        return tuple(i for i, s in sorted(self.secrets.items()) if not s.recovered)


def _verifier(keyset: KeySet, entry: KeyEntry, kind: int) -> Callable[[int], bytes | None]:
    """A candidate secret's bytes if it matches the participant's posted commitment (b_u) or key (s_sk_u)."""
    def check(value: int) -> bytes | None:
        if value >> 256:
            return None
        raw = value.to_bytes(KEY_BYTES, "big")
        if kind == SELF_SEED:
            ok = hmac.compare_digest(self_seed_commitment(keyset.chain_id, keyset.round, entry.index, raw),
                                     entry.commit)
        else:
            ok = hmac.compare_digest(_public(raw), entry.mask_pk)
        return raw if ok else None
    return check


def _collect_shares(keyset: KeySet, u3: frozenset[int], reveals: Sequence[tuple[int, bytes]]
                    ) -> tuple[dict[int, list[tuple[int, int]]], dict[int, str]]:
    shares: dict[int, list[tuple[int, int]]] = {u: [] for u in keyset.entries}
    problems: dict[int, str] = {}
    seen: set[int] = set()
    for revealer, data in reveals:
        if revealer in seen:
            problems.setdefault(revealer, "a second reveal (the first counts)")
            continue
        seen.add(revealer)
        try:
            rv = decode_reveal(data)
        except MalformedSecAgg as exc:
            problems[revealer] = str(exc)
            continue
        if (rv.chain_id, rv.round, rv.revealer) != (keyset.chain_id, keyset.round, revealer):
            problems[revealer] = (f"reveal is by {rv.revealer} for chain {rv.chain_id} round {rv.round}, posted "
                                  f"by {revealer} in chain {keyset.chain_id} round {keyset.round}")
            continue
        faults = []
        for u, kind, share in rv.entries:
            entry = keyset.entries.get(u)
            if entry is None:
                faults.append(f"{u}: not in the key set")
            elif kind != (SELF_SEED if u in u3 else MASK_KEY):
                faults.append(f"{u}: {KIND_NAMES[kind]} share of a {'committed' if u in u3 else 'dropped'} participant")
            elif revealer not in entry.bundle.recipients:
                faults.append(f"{u}: {revealer} was dealt no share")
            else:
                shares[u].append((revealer + 1, share))
        if faults:
            problems[revealer] = "ignored shares of " + "; ".join(faults)
    return shares, problems


Layout = list[tuple[str, tuple[int, ...]]]


def _masked_inputs(masked: Mapping[int, Mapping[str, object]], u3: frozenset[int], layout: Layout | None
                   ) -> tuple[Layout | None, dict[int, np.ndarray], dict[int, str]]:
    """Each committed y_u as one flat uint32 vector; y_u missing or not in `layout` (default: the first
    committed participant's) is a problem named by participant."""
    reference = "the expected layout" if layout is not None else None
    flats: dict[int, np.ndarray] = {}
    problems: dict[int, str] = {}
    for u in sorted(u3):
        y = masked.get(u)
        if y is None:
            problems[u] = "no masked input"
            continue
        try:
            names = sorted(y)
            arrays = [_as_array(y[n]) for n in names]
        except Exception as exc:  # any object may arrive here; the daemon validated it, we stay total anyway
            problems[u] = f"unreadable masked input: {type(exc).__name__}"
            continue
        bad = [n for n, a in zip(names, arrays, strict=True) if a.dtype not in (np.uint32, np.int32)]
        if bad:
            problems[u] = f"tensors {bad} are not uint32 or int32"
            continue
        mine = [(n, tuple(a.shape)) for n, a in zip(names, arrays, strict=True)]
        if layout is None:
            layout, reference = mine, f"participant {u}'s"
        elif mine != layout:
            problems[u] = f"tensor names or shapes differ from {reference}"
            continue
        flats[u] = np.concatenate([a.reshape(-1).view(np.uint32) for a in arrays]) if arrays else np.zeros(0, np.uint32)
    return layout, flats, problems


def unmask_sum(masked: Mapping[int, Mapping[str, object]], keyset: KeySet, committed: Collection[int],
               reveals: Sequence[tuple[int, bytes]], layout: Mapping[str, tuple[int, ...]] | None = None
               ) -> UnmaskResult:
    """The exact sum of the x_u of the committed participants, from their masked inputs and the reveals.

    `masked` maps committed indices to their y_u (uint32 or int32 arrays); `reveals` are (revealer index as
    the chain authenticated it, reveal bytes) in chain order. Deterministic. Bad reveals, bad shares and
    missing inputs give `sum=None` with reasons, never an exception; InvalidInput only for a committed set
    outside the key set. `layout` (name -> shape, e.g. the model's) is what every y_u must match; without
    it, the lowest committed participant's y_u sets it.
    """
    ctx = _context(keyset.chain_id, keyset.round)
    u3 = _committed_set(keyset, committed)
    shares, revealer_problems = _collect_shares(keyset, u3, reveals)
    statuses: dict[int, SecretStatus] = {}
    recovered: dict[int, bytes] = {}
    rebuilder = _Rebuilder()
    for u, entry in keyset.entries.items():
        kind = SELF_SEED if u in u3 else MASK_KEY
        value, detail = rebuilder.rebuild(shares[u], entry.bundle.threshold, _verifier(keyset, entry, kind))
        statuses[u] = SecretStatus(u, KIND_NAMES[kind], len(shares[u]), value is not None, detail)
        if value is not None:
            recovered[u] = value
    expected = None if layout is None else [(n, tuple(layout[n])) for n in sorted(layout)]
    final_layout, flats, input_problems = _masked_inputs(masked, u3, expected)

    def result(reason: str, total: dict[str, np.ndarray] | None = None) -> UnmaskResult:
        return UnmaskResult(total, statuses, revealer_problems, input_problems, reason)

    if not u3:
        return result("no committed participants")
    lost = [u for u in keyset.entries if u not in recovered]
    if lost:
        return result(f"secrets of participants {lost} are unrecoverable")
    if input_problems or final_layout is None:
        return result(f"masked inputs of {sorted(input_problems)} are missing or malformed")
    acc = np.zeros(next(iter(flats.values())).size, np.uint32)
    for u in sorted(u3):
        acc += flats[u]
    stream = _Keystream(acc.size)
    for u in sorted(u3):
        acc -= stream.words(_self_key(ctx, u, recovered[u]))
    for w in sorted(set(keyset.entries) - u3):  # the pairwise masks committed participants applied for w
        w_sk, w_pk = recovered[w], keyset.entries[w].mask_pk
        for u in sorted(u3):
            words = stream.words(_pair_key(ctx, w_sk, w, w_pk, u, keyset.entries[u].mask_pk))
            if u < w:
                acc -= words
            else:
                acc += words
    return result("", _unflatten(final_layout, acc.view(np.int32).astype(np.int64)))
