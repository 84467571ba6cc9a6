"""Node identity: one secp256k1 secret is both the libp2p peer id and the chain account."""

from __future__ import annotations

from functools import lru_cache

from eth_keys import keys
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import Secp256k1PublicKey, create_new_key_pair
from libp2p.peer.id import ID

from consensus.votes import Address
from swarmnode.p2p.errors import IdentityError


def key_pair_of(secret: bytes) -> KeyPair:
    """The libp2p key pair for a 32-byte secp256k1 secret."""
    if not isinstance(secret, bytes) or len(secret) != 32:
        raise IdentityError(f"node secret must be 32 bytes, got {len(secret) if isinstance(secret, bytes) else type(secret).__name__}")
    try:
        return create_new_key_pair(secret)
    except Exception as exc:  # coincurve raises ValueError for 0 or >= group order
        raise IdentityError(f"invalid secp256k1 secret: {exc}") from exc


def peer_id_of(secret: bytes) -> ID:
    """The peer id of the node whose secret this is (identity multihash of the public key)."""
    return ID.from_pubkey(key_pair_of(secret).public_key)


def address_of_public_key(public_key: object) -> Address:
    if not isinstance(public_key, Secp256k1PublicKey):
        raise IdentityError(f"peer key is {type(public_key).__name__}, not secp256k1")
    uncompressed = public_key.impl.format(compressed=False)[1:]  # drop the 0x04 prefix
    return Address(keys.PublicKey(uncompressed).to_canonical_address())


def address_of_peer(peer_id: ID) -> Address:
    """The 20-byte chain address of `peer_id`; raises IdentityError if it embeds no secp256k1 key."""
    return _address_of_peer_bytes(peer_id.to_bytes())


@lru_cache(maxsize=4096)
def _address_of_peer_bytes(peer_id_bytes: bytes) -> Address:
    """Cached: every gossip message needs its sender's address, and decoding + keccak cost ~0.4 ms."""
    peer_id = ID(peer_id_bytes)
    public_key = peer_id.extract_public_key()
    if public_key is None:
        raise IdentityError(f"peer id {peer_id} does not embed its public key")
    return address_of_public_key(public_key)
