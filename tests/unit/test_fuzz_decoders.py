"""Every decoder of bytes from a peer is total: it returns a value or raises its module's typed error.

Property tests over the shared target table (tests/fuzz_targets.py): random bytes (alone or behind the
first bytes of a valid encoding), structured mutations of valid encodings (bit flips, truncation,
splicing, deep nesting, huge integers, huge declared lengths and shapes), and round trips of the valid
encodings themselves. Bounded in time (a few hundred examples per decoder); scripts/fuzz.py runs the
same targets for as long as it is given. A failure prints the input (or the random seed that made it).
"""

from __future__ import annotations

import random
import struct

import pytest
import rlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus import messages as cmsg
from consensus.chain import InvalidBlock, InvalidTransaction, decode_block, decode_transaction
from consensus.chain_app import block_hash_of
from consensus.wire import MalformedMessage
from swarmnode.aggregation.codec import decode_model, decode_update
from swarmnode.aggregation.errors import MalformedBlob
from swarmnode.p2p import wire
from swarmnode.p2p.errors import WireError
from tests.fuzz_targets import TARGETS, Target, chain_material, classify, mutate, rlp_nested, rlp_prefix

NAMES = sorted(TARGETS)
RANDOM_EXAMPLES = 150
MUTATION_EXAMPLES = 250

def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_total(target: Target, data: bytes, how: str) -> None:
    outcome, exc = classify(target, data)
    if outcome == "crash":
        raise AssertionError(f"{target.name} is not total ({how}): {type(exc).__name__}: {exc}\n"
                             f"input ({len(data)} bytes): {data[:256]!r}") from exc


@pytest.mark.parametrize("name", NAMES)
@fuzz_settings(RANDOM_EXAMPLES)
@given(data=st.data())
def test_random_bytes_decode_or_raise_the_typed_error(name: str, data: st.DataObject) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    prefix = data.draw(st.sampled_from(seeds))[: data.draw(st.sampled_from((0, 0, 1, 4, 16, 64)))]
    assert_total(target, prefix + data.draw(st.binary(max_size=2048)), "random bytes")


@pytest.mark.parametrize("name", NAMES)
@fuzz_settings(MUTATION_EXAMPLES)
@given(data=st.data())
def test_mutated_encodings_decode_or_raise_the_typed_error(name: str, data: st.DataObject) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    seed = data.draw(st.sampled_from(seeds))
    rng_seed = data.draw(st.integers(0, 2**64 - 1), label="mutation seed")
    assert_total(target, mutate(random.Random(rng_seed), seed, target.fmt, seeds), f"mutation seed {rng_seed}")


@pytest.mark.parametrize("name", [n for n in NAMES if TARGETS[n].roundtrip is not None])
def test_valid_encodings_round_trip(name: str) -> None:
    target = TARGETS[name]
    assert target.roundtrip is not None
    for seed in target.seeds():
        assert classify(target, seed)[0] != "crash"
        assert target.roundtrip(seed) == seed


def test_the_targets_can_fail() -> None:
    """The harness itself: an untyped exception is a crash, a typed one is not."""

    def boom(data: bytes) -> None:
        if data:
            raise ValueError("untyped")
        raise MalformedMessage("typed")

    target = Target("boom", boom, (MalformedMessage,), "raw", lambda: [b""])
    assert classify(target, b"")[0] == "typed"
    assert classify(target, b"x")[0] == "crash"
    with pytest.raises(AssertionError, match="not total"):
        assert_total(target, b"x", "check")


# ---- the crashes found by probes, pinned


def _update_blob(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    head = struct.pack("<4sBBI", b"SWNM", 1, 2, 1) + struct.pack("<H", 1) + b"w"
    return head + struct.pack("<BB", 2, len(shape)) + struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<h", 0) + data


@pytest.mark.parametrize("shape", [(0, 2**32 - 1, 2**32 - 1), (0, 2**31, 2**31, 2**31), (2**32 - 1, 0), (0, 2**29)])
def test_a_zero_dimension_beside_huge_ones_is_a_malformed_blob(shape: tuple[int, ...]) -> None:
    with pytest.raises(MalformedBlob, match="elements"):  # was numpy's ValueError: the daemon died
        decode_update(_update_blob(shape))


def test_small_empty_shapes_still_decode() -> None:
    assert tuple(decode_update(_update_blob((0, 4)))["w"].values.shape) == (0, 4)


def test_a_float_server_state_tensor_is_not_canonical() -> None:
    head = struct.pack("<4sBBI", b"SWNM", 1, 1, 1) + struct.pack("<H", 9) + b"~server/x"
    blob = head + struct.pack("<BB", 1, 1) + struct.pack("<I", 1) + struct.pack("<h", 0) + struct.pack("<f", 1.0)
    with pytest.raises(MalformedBlob, match="int64"):  # decoded, then re-encoded to other bytes
        decode_model(blob)


def test_deep_rlp_in_a_proposal_is_a_typed_error_everywhere() -> None:
    deep = rlp_nested(7_000)  # ~20 KB: re-encoding it overflowed the C stack (see test_rlp_guard.py)
    m = chain_material()
    with pytest.raises(MalformedMessage, match="nested deeper"):
        block_hash_of(deep)
    with pytest.raises(InvalidBlock, match="nested deeper"):
        decode_block(deep, m.vm_class, m.gas_limit)
    with pytest.raises(InvalidTransaction, match="nested deeper"):
        decode_transaction(b"\x02" + deep, m.vm_class)
    header = rlp.encode(rlp.decode(m.blocks[0])[0])
    body = header + deep + b"\xc0\xc0"
    with pytest.raises(InvalidBlock, match="nested deeper"):  # the header is fine, the body is not
        decode_block(rlp_prefix(len(body), 0xC0) + body, m.vm_class, m.gas_limit)


def test_a_list_in_a_header_field_has_no_block_id() -> None:
    """py-evm reads an empty list as the integer 0: the block would execute with py-evm's hash while its
    id (the header slice) hashed other bytes, and its certificate could never be committed."""
    m = chain_material()
    fields = rlp.decode(m.blocks[1])
    fields[0][7] = []  # difficulty 0, spelled as a list
    block = rlp.encode(fields)
    with pytest.raises(MalformedMessage):
        block_hash_of(block)
    with pytest.raises(InvalidBlock):
        decode_block(block, m.vm_class, m.gas_limit)


def test_msgpack_depth_and_object_count_are_bounded_before_decoding() -> None:
    nested = b"\x94\x01\xcd\x7a\x69\x01" + b"\x91" * 9 + b"\xc0"  # an envelope whose body nests 9 deep
    with pytest.raises(WireError, match="deeper than 8"):
        wire.decode(nested)
    flood = b"\x94\x01\xcd\x7a\x69\x01\xdc\x10\x00" + b"\x90" * 4096  # 4,096 empty arrays in the body
    with pytest.raises(WireError, match="more than 4096"):
        wire.decode(flood)
    with pytest.raises(MalformedMessage, match="more than 32"):
        cmsg.decode(b"\x93\x01\x02\xdc\x00\x40" + b"\xc0" * 64)
