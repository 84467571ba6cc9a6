"""Secure aggregation in the daemon: the chain side of swarmnode/privacy/secagg.py.

What the chain holds (SwarmRounds): every participant's long-term share key, each round's key set
(mask key, seed commitment and the keccak256 of the share bundle, in posting order), and each round's
reveals (revealer and keccak256). Bundles and reveals themselves travel in the calldata of the
postMaskKeys / revealShares transactions: `CalldataCache` finds them in the node's own blocks by hash,
so they are available wherever the block is, with no blob exchange.

Fixed point: every coordinate of an update is clamped to [-B, B] (B = privacy.value_bound) and scaled by
2**exponent, the largest that keeps B * 2**exponent <= secagg.MAX_ABS_VALUE, so the sum of up to 128
masked inputs reads back exactly. Every node uses the same exponent: the masked blob is an update blob
(int32 tensors at that exponent) whose values are uniformly random until the sum is unmasked.

The node's secagg secret is derived from its key (HKDF, its own label): a restarted node re-derives its
share key and round mask keys. The self-mask seeds b_u are OS randomness: each is kept in
<data_dir>/secagg/ (mode 0600) until the round is final, and deleted then.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_utils import keccak

from consensus.contracts import SWARM_ROUNDS_ADDRESS
from consensus.rpc_swarm import SwarmViews
from swarmnode.aggregation.codec import QTensor, decode_update, encode_update
from swarmnode.node import txs
from swarmnode.privacy import secagg
from swarmnode.privacy.config import PrivacyConfig

log = logging.getLogger("swarmnode.node")

CACHE_ROUNDS = 4  # calldata kept for this many rounds back


def node_secret(key: bytes) -> bytes:
    """The node's secure-aggregation secret, derived from its chain key under a label of its own."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"swarmnode-secagg-node-secret").derive(key)


def fixed_exponent(bound: float) -> int:
    """The largest exponent e with bound * 2**e <= secagg.MAX_ABS_VALUE."""
    if not 0.0 < bound < math.inf:
        raise ValueError(f"secure aggregation needs a positive value bound, got {bound!r}")
    return math.floor(math.log2(secagg.MAX_ABS_VALUE / bound))


def to_fixed(delta: Mapping[str, torch.Tensor], bound: float, exponent: int) -> dict[str, np.ndarray]:
    """Clamp every coordinate to [-bound, bound] and round it to the common fixed point (int64)."""
    scale = math.ldexp(1.0, exponent)
    out = {}
    for name in sorted(delta):
        t = delta[name].detach().to(torch.float64).clamp(-bound, bound)
        q = torch.round(t * scale).clamp(-secagg.MAX_ABS_VALUE, secagg.MAX_ABS_VALUE)
        out[name] = q.to(torch.int64).numpy()
    return out


@dataclass(frozen=True)
class RoundKeys:
    """SwarmRounds' view of round r's secure aggregation, as of the committed head."""

    round: int
    posts: tuple[tuple[int, bytes, bytes, bytes], ...]  # (registry index, mask key, seed commitment, bundle hash)
    reveals: tuple[tuple[int, bytes], ...]  # (revealer index, reveal hash), chain order
    share_keys: Mapping[int, bytes]  # registry index -> share key, of everyone who set one (set once: stable)
    recipients: tuple[tuple[int, bytes], ...]  # active participants whose share key is a valid X25519 key
    indices: Mapping[bytes, int]  # participant address -> registry index
    active: int  # active participants (with a share key or not)
    deadline: int  # block time from which the reveals are final
    head_time: int


def _b(v: Any) -> bytes:
    return bytes.fromhex(v[2:]) if isinstance(v, str) else bytes(v)


def round_keys(chain: Any, round_: int) -> RoundKeys:
    """Read round `round_`'s key set, reveals and the registry's share keys (runs on the chain executor)."""
    v = SwarmViews(chain)
    posts = tuple((int(k["index"]), _b(k["maskKey"]), _b(k["seedCommit"]), _b(k["bundleHash"]))
                  for k in v.call_view("SwarmRounds", "getMaskKeys", round_))
    reveals = tuple((int(x["index"]), _b(x["revealHash"])) for x in v.call_view("SwarmRounds", "getReveals", round_))
    share_keys, indices, active = {}, {}, set()
    for i, address in enumerate(v.call_view("SwarmRounds", "getParticipants")):
        indices[_b(address)] = i
        if v.call_view("SwarmRounds", "getParticipant", address)["active"]:
            active.add(i)
        key = _b(v.call_view("SwarmRounds", "shareKeyOf", address))
        if any(key):
            share_keys[i] = key  # whether active or not: a key set's members must not depend on when it is read
    recipients = dealing_recipients(share_keys, active)
    deadline = int(v.call_view("SwarmRounds", "revealDeadline", round_))
    return RoundKeys(round_, posts, reveals, share_keys, recipients, indices, len(active), deadline,
                     int(chain.head.timestamp))


def dealing_recipients(share_keys: Mapping[int, bytes], active: Collection[int]) -> tuple[tuple[int, bytes], ...]:
    """Who gets shares: active participants whose share key is a valid X25519 public key. A key that is
    not (a low-order point, anything `check_public_key` refuses) gets none, and stops no one's dealing."""
    out = []
    for i, key in sorted(share_keys.items()):
        if i not in active:
            continue
        try:
            out.append((i, secagg.check_public_key(key)))
        except secagg.SecAggError:
            log.warning("event=secagg_bad_share_key index=%d (no shares are dealt to it)", i)
    return tuple(out)


def dealing_may_start(view: RoundKeys, opened: int, first_blocked: int, wait_s: int) -> bool:
    """Whether to deal our keys for `view.round` now. Shares go only to the share-key holders on chain when
    we deal, so while some active participant has no share key yet we give it `wait_s` seconds of block
    time, counted from the later of the round's opening (`opened`) and the first head at which we found our
    dealing held up (`first_blocked`). From the opening alone the wait is void in round 0 of a chain whose
    genesis is old: two daemons that started first then dealt only to each other, and when one of them
    dropped out, the other's secret and its own were both unrecoverable (the round settled on its base)."""
    if len(view.recipients) >= view.active:
        return True
    return view.head_time - max(opened, first_blocked) >= wait_s


class CalldataCache:
    """Bundles and reveals by keccak256, read out of SwarmRounds calls in the node's committed blocks."""

    def __init__(self) -> None:
        self._by_hash: dict[bytes, tuple[int, bytes]] = {}  # hash -> (block number, bytes)
        self._low, self._high = 0, -1  # the blocks scanned: [low, high] (none yet)

    def scan(self, chain: Any, first_block: int) -> None:
        """Read every block from `first_block` to the head that was not read yet (chain executor). Only
        calls that succeeded are kept: the contract took each participant's post and reveal at most once
        per round, so what is kept is bounded, and a reverted copy cannot stand in for a real one."""
        head = int(chain.head.block_number)
        if self._high < 0:
            self._scan_range(chain, first_block, head)
            self._low, self._high = first_block, head
            return
        if first_block < self._low:  # e.g. a restarted node asked for a later round first
            self._scan_range(chain, first_block, self._low - 1)
            self._low = first_block
        self._scan_range(chain, self._high + 1, head)
        self._high = max(self._high, head)

    def _scan_range(self, chain: Any, first: int, last: int) -> None:
        for n in range(max(0, first), last + 1):
            block = chain.reader.block_by_number(n)
            receipts = None
            for i, tx in enumerate(block.transactions):
                if bytes(tx.to) != SWARM_ROUNDS_ADDRESS:
                    continue
                data = bytes(tx.data)
                post = txs.decode_post_keys(data)
                payload = post[3] if post is not None else None
                if payload is None:
                    rv = txs.decode_reveal_call(data)
                    payload = rv[1] if rv is not None else None
                if payload is None:
                    continue
                receipts = receipts if receipts is not None else chain.reader.receipts_of(block)
                if receipts[i].state_root != b"\x01":  # reverted (EIP-658 status)
                    continue
                self._by_hash[keccak(payload)] = (n, payload)

    def get(self, h: bytes) -> bytes | None:
        found = self._by_hash.get(h)
        return None if found is None else found[1]

    def forget_before_block(self, block: int) -> None:
        self._by_hash = {h: v for h, v in self._by_hash.items() if v[0] >= block}
        self._low = max(self._low, block)


class SecAggNode:
    """One node's secure aggregation: its keys, the secrets it keeps, and the calldata it builds and reads."""

    def __init__(self, *, key: bytes, chain_id: int, privacy: PrivacyConfig, data_dir: Path) -> None:
        self._secret = node_secret(key)
        self.chain_id = chain_id
        self.threshold = privacy.secagg_threshold
        self.bound = privacy.value_bound
        self.exponent = fixed_exponent(self.bound)
        self.dir = data_dir / "secagg"
        self.cache = CalldataCache()
        self._share_sk, self.share_pk = secagg.share_keypair(self._secret, chain_id)

    def __repr__(self) -> str:
        return f"SecAggNode(chain_id={self.chain_id}, exponent={self.exponent})"  # never the secrets

    # ---- key posting

    def share_key_calldata(self) -> bytes:
        return txs.share_key_data(self.share_pk)

    def post_keys_calldata(self, view: RoundKeys, round_: int, my_index: int) -> bytes:
        """Deal this node's keys for `round_` to every share-key holder, keep the secret, build the call."""
        recipients = sorted(view.recipients)
        if my_index not in dict(recipients):
            raise secagg.InvalidInput("our share key is not on chain yet")
        t = secagg.threshold_for(len(recipients), self.threshold)  # InvalidThreshold: more than the holders
        post, secret = secagg.make_round_keys(self._secret, my_index, self.chain_id, round_, recipients, t)
        self._keep(secret, post.commit)
        return txs.post_keys_data(round_, post.mask_pk, post.commit, post.bundle)

    def _secret_path(self, round_: int, commit: bytes) -> Path:
        return self.dir / f"round-{round_}-{commit.hex()[:16]}.key"

    def _keep(self, secret: secagg.RoundSecret, commit: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._secret_path(secret.round, commit)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def secret_for(self, round_: int, commit: bytes) -> secagg.RoundSecret | None:
        """The secret this node kept for the key post the chain holds (matched by its seed commitment)."""
        try:
            secret = secagg.RoundSecret.from_bytes(self._secret_path(round_, commit).read_bytes())
        except (OSError, secagg.MalformedSecAgg):
            return None
        ok = secagg.self_seed_commitment(self.chain_id, round_, secret.index, secret.self_seed) == commit
        return secret if ok and secret.round == round_ else None

    def forget_before(self, round_: int, first_block: int | None = None) -> None:
        """Delete the secrets of rounds before `round_` (their sums are final), and calldata from blocks
        before `first_block` (the opening of a round CACHE_ROUNDS back)."""
        if first_block is not None:
            self.cache.forget_before_block(first_block)
        if not self.dir.is_dir():
            return
        for path in self.dir.glob("round-*.key"):
            try:
                r = int(path.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if r < round_:
                path.unlink(missing_ok=True)

    # ---- the key set

    def keyset(self, view: RoundKeys) -> tuple[secagg.KeySet, dict[int, str], list[int]]:
        """K(r) from the chain's posts (bundles from calldata): the set, the posts left out with a reason,
        and the posts whose bundle this node has not found in its blocks (it cannot decide K(r) yet)."""
        posts, missing = [], []
        for index, mask_pk, commit, bundle_hash in view.posts:
            bundle = self.cache.get(bundle_hash)
            if bundle is None:
                missing.append(index)
                continue
            posts.append(secagg.RoundPost(index, mask_pk, commit, bundle))
        ks, rejected = secagg.build_keyset(self.chain_id, view.round, posts, view.share_keys, self.threshold)
        return ks, rejected, missing

    # ---- masking

    def masked_blob(self, delta: Mapping[str, torch.Tensor], keyset: secagg.KeySet,
                    secret: secagg.RoundSecret) -> bytes:
        """Our update clamped, in the common fixed point, masked over K(r): an update blob of int32 words."""
        x = to_fixed(delta, self.bound, self.exponent)
        y = secagg.mask(x, secret, keyset)
        return encode_update({n: QTensor(torch.from_numpy(a.view(np.int32).copy()), self.exponent)
                              for n, a in y.items()})

    def masked_input(self, blob: bytes) -> dict[str, np.ndarray]:
        """A committed masked blob as uint32 arrays; MalformedBlob (AggregationError) if it is not an update
        at the common exponent."""
        from swarmnode.aggregation.errors import MalformedBlob

        upd = decode_update(blob)
        out = {}
        for name, q in upd.items():
            if q.exponent != self.exponent:
                raise MalformedBlob(f"masked tensor {name!r} at exponent {q.exponent}, expected {self.exponent}")
            out[name] = q.values.to(torch.int64).numpy().astype(np.int32).view(np.uint32)
        return out

    # ---- reveal and sum

    def reveal_calldata(self, view: RoundKeys, committed: Sequence[int], my_index: int) -> bytes:
        ks, _, missing = self.keyset(view)
        if missing:
            raise secagg.InvalidInput(f"bundles of {missing} not found in this node's blocks yet")
        shares = secagg.reveal(my_index, self._share_sk, ks, [u for u in committed if u in ks.entries])
        return txs.reveal_data(view.round, shares)

    def unmask(self, view: RoundKeys, keyset: secagg.KeySet, committed: Sequence[int],
               masked: Mapping[int, Mapping[str, np.ndarray]], layout: Mapping[str, tuple[int, ...]]
               ) -> secagg.UnmaskResult:
        """The sum of the committed inputs (`committed`: U3 from the chain, in the key set; an input missing
        from `masked` makes the sum unrecoverable rather than silently changing U3)."""
        reveals = []
        for index, h in view.reveals:
            data = self.cache.get(h)
            if data is None:  # every node must use the same reveals: wait until this one is read
                raise secagg.InvalidInput(f"reveal of {index} not found in this node's blocks yet")
            reveals.append((index, data))
        return secagg.unmask_sum(masked, keyset, committed, reveals, layout)
