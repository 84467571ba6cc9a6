"""The node key: one secp256k1 secret that is both the libp2p identity and the chain account.

The key file holds the 32-byte secret as hex. It is created with mode 0600 and refused when other users
can read it, the way ssh treats private keys.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from eth_keys import keys


class KeyFileError(Exception):
    """A key file is missing, malformed, or readable by other users."""


def address_of(secret: bytes) -> bytes:
    return keys.PrivateKey(secret).public_key.to_canonical_address()


def parse_secret(text: str, source: str) -> bytes:
    value = text.strip().removeprefix("0x")
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise KeyFileError(f"{source}: not a hex-encoded key") from None
    if len(secret) != 32:
        raise KeyFileError(f"{source}: a key is 32 bytes, got {len(secret)}")
    try:
        keys.PrivateKey(secret)
    except Exception as exc:  # eth_keys raises ValidationError for out-of-range scalars
        raise KeyFileError(f"{source}: not a valid secp256k1 secret ({exc})") from None
    return secret


def write_key(path: str | os.PathLike[str], secret: bytes) -> None:
    """Write a key file with mode 0600 (created that way, never briefly readable by others)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


def create_key(path: str | os.PathLike[str]) -> bytes:
    if Path(path).exists():
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    secret = secrets.token_bytes(32)
    while True:
        try:
            keys.PrivateKey(secret)
            break
        except Exception:
            secret = secrets.token_bytes(32)
    write_key(path, secret)
    return secret


def load_key(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {p} does not exist (create one with `swarmnode init`)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {p} has mode {stat.S_IMODE(mode):o}; it must not be accessible by "
                           f"other users (chmod 600 {p})")
    return parse_secret(p.read_text(), str(p))
