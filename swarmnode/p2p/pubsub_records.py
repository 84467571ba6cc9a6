"""Signed peer records in py-libp2p 0.8.1 pubsub, checked once per peer and record instead of per RPC.

py-libp2p attaches the sender's signed peer record (an Envelope) to every pubsub RPC. The receiver
parses it, checks its signature and hands it to the peerstore on every RPC (`maybe_consume_signed_record`),
and the sender re-reads its listen addresses and re-serializes its own record for every RPC it sends
(`env_to_send_in_RPC`). With ten validators gossiping every transaction and update announcement, that
was about a third of the CPU of reading a gossip RPC (py-spy on a 10-daemon swarm).

`install()` puts two caches in front of those functions, in the modules that imported them by name:
- receiving: a record byte-for-byte identical to the last one this host accepted from the same peer is
  accepted without checking it again (the check is a pure function of those bytes and the peer id). It
  is checked again at least every RECHECK_SECONDS, which also refreshes its peerstore TTL (2 h). A
  different or invalid record always goes through py-libp2p's own check; a failed check is never cached.
- sending: the serialized local record is reused while the peerstore holds the same local record, and
  the listen addresses are compared with it at most every RECHECK_SECONDS (a new record is issued at
  once when they changed, as py-libp2p does).
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from libp2p.identity.identify import identify as _identify
from libp2p.peer import peerstore as _peerstore
from libp2p.pubsub import gossipsub as _gossipsub
from libp2p.pubsub import pubsub as _pubsub
from libp2p.pubsub import utils as _utils

RECHECK_SECONDS = 30.0

_installed = False
_accepted: weakref.WeakKeyDictionary[Any, dict[Any, tuple[bytes, float]]] = weakref.WeakKeyDictionary()
_outgoing: weakref.WeakKeyDictionary[Any, tuple[Any, bytes, float]] = weakref.WeakKeyDictionary()
_original_consume = _utils.maybe_consume_signed_record
_original_env = _peerstore.env_to_send_in_RPC
stats = {"records_checked": 0, "records_reused": 0, "envelopes_built": 0, "envelopes_reused": 0}


def consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    record = msg.senderRecord
    now = time.monotonic()
    per_peer = _accepted.setdefault(host, {})
    hit = per_peer.get(peer_id)
    if hit is not None and hit[0] == record and now - hit[1] < RECHECK_SECONDS:
        stats["records_reused"] += 1
        return True
    stats["records_checked"] += 1
    ok = _original_consume(msg, host, peer_id)
    if ok:
        per_peer[peer_id] = (bytes(record), now)
    else:
        per_peer.pop(peer_id, None)
    return ok


def envelope_to_send(host: Any) -> tuple[bytes, bool]:
    now = time.monotonic()
    local = host.get_peerstore().get_local_record()
    cached = _outgoing.get(host)
    if local is not None and cached is not None and cached[0] is local and now - cached[2] < RECHECK_SECONDS:
        stats["envelopes_reused"] += 1
        return cached[1], False
    stats["envelopes_built"] += 1
    envelope, created = _original_env(host)
    _outgoing[host] = (host.get_peerstore().get_local_record(), envelope, now)
    return envelope, created


def install() -> None:
    """Idempotent; called when swarmnode.p2p.host is imported."""
    global _installed
    if _installed:
        return
    for module in (_pubsub, _gossipsub):
        if getattr(module, "maybe_consume_signed_record", None) is not _original_consume:
            raise RuntimeError(f"{module.__name__}.maybe_consume_signed_record is not py-libp2p 0.8.1's")
        module.maybe_consume_signed_record = consume_signed_record  # type: ignore[attr-defined]
    for module in (_pubsub, _gossipsub, _identify):
        if getattr(module, "env_to_send_in_RPC", None) is not _original_env:
            raise RuntimeError(f"{module.__name__}.env_to_send_in_RPC is not py-libp2p 0.8.1's")
        module.env_to_send_in_RPC = envelope_to_send  # type: ignore[attr-defined]
    _installed = True
