"""Node key files: created 0600, refused when readable by others, malformed ones named."""

import os
import stat

import pytest

from swarmnode.node.keys import KeyFileError, address_of, create_key, load_key, write_key


def test_created_key_is_private_and_loads(tmp_path):
    path = tmp_path / "node.key"
    secret = create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == secret and len(address_of(secret)) == 20


def test_existing_key_is_never_overwritten(tmp_path):
    path = tmp_path / "node.key"
    create_key(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_key(path)


def test_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "node.key"
    create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)


@pytest.mark.parametrize("content, message", [("zz", "not a hex"), ("00" * 31, "32 bytes"), ("00" * 32, "valid secp256k1")])
def test_malformed_keys_are_named(tmp_path, content, message):
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match=message):
        load_key(path)


def test_missing_key_file_says_how_to_create_one(tmp_path):
    with pytest.raises(KeyFileError, match="swarmnode init"):
        load_key(tmp_path / "absent.key")


def test_write_key_roundtrip(tmp_path):
    write_key(tmp_path / "k", bytes(range(1, 33)))
    assert load_key(tmp_path / "k") == bytes(range(1, 33))
