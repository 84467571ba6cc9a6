"""Typed errors of the p2p layer: one root, one subclass per failure."""

from __future__ import annotations


class P2PError(Exception):
    """Root of every error raised by swarmnode.p2p."""


class ConfigError(P2PError):
    """A p2p configuration value is unusable (bad multiaddr, bad key, ...)."""


class IdentityError(P2PError):
    """A peer id carries no usable secp256k1 key, so it maps to no chain address."""


class WireError(P2PError):
    """Bytes from the network that do not decode to a well-formed message."""


class OutsideWindow(WireError):
    """A well-formed, authenticated message for a height or round outside the accepted window: the sender
    is ahead of us or behind us, which is not misbehaviour (callers drop it without blaming the peer)."""

    def __init__(self, what: str, value: int, low: int, high: int) -> None:
        super().__init__(f"{what} {value} outside the window [{low}, {high}]")
        self.value, self.low, self.high = value, low, high

    @property
    def ahead(self) -> bool:
        return self.value > self.high


class UnknownSigner(WireError):
    """A well-formed message signed by a key the policy does not know (for consensus: not a validator at
    our height). Dropped; not blamed on the relaying peer, which may know a validator set we do not yet."""


class FrameError(WireError):
    """A stream frame is truncated, oversize or malformed."""


class HandshakeError(P2PError):
    """A peer failed the handshake (other chain, other genesis, garbage)."""


class BlobError(P2PError):
    """Root of blob exchange failures."""


class BlobNotFound(BlobError):
    """No provider could deliver the blob."""


class BlobCorrupted(BlobError):
    """Bytes received for a blob do not hash to its content id."""


class BlobTooLarge(BlobError):
    """A blob exceeds the configured size limit."""


class CaptureError(P2PError):
    """A traffic capture file that cannot be read: not a capture, or a malformed record."""


class SyncError(P2PError):
    """Chain sync failed: no peer served valid blocks with valid certificates."""
