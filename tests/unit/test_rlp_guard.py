"""consensus.rlp_guard: RLP from peers is bounded before any recursive decoder sees it.

The crash it fixes is reproduced first, in a subprocess: a consensus proposal whose block bytes nest
lists a few thousand levels deep (~20 KB) killed the node with SIGSEGV when the old ChainApplication
.block_hash re-encoded the decoded header (py_ecc raises Python's recursion limit to 100,000, so the
C stack overflows before Python's limit is reached).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rlp
import rlp.codec
from eth_utils import keccak

from consensus import rlp_guard
from consensus.chain_app import block_hash_of
from consensus.envelope import Envelope, EnvelopeError
from consensus.rlp_guard import MalformedRLP, RLPLimitExceeded, check_transaction, header_rlp, scan
from tests.fuzz_targets import chain_material, rlp_nested

ROOT = Path(__file__).resolve().parents[2]
DEPTH = 7_000  # ~20 KB of nested lists

PROBE = textwrap.dedent(f"""
    import sys
    import py_ecc  # noqa: F401  (as py-evm does: sys.setrecursionlimit(100000))
    import rlp
    from eth_utils import keccak
    sys.path.insert(0, {str(ROOT)!r})

    block = b"\\xc0"  # {DEPTH} lists around an empty one, the way a peer would build them
    for _ in range({DEPTH}):
        n = len(block)
        block = (bytes([0xC0 + n]) if n < 56 else bytes([0xF7 + (n.bit_length() + 7) // 8])
                 + n.to_bytes((n.bit_length() + 7) // 8, "big")) + block
    print("bytes", len(block), "recursion limit", sys.getrecursionlimit(), flush=True)
    if sys.argv[1] == "old":  # the old ChainApplication.block_hash, verbatim
        fields = rlp.decode(block)
        print("hash", keccak(rlp.encode(fields[0])).hex(), flush=True)
    else:
        from consensus.chain_app import block_hash_of
        from consensus.wire import MalformedMessage
        try:
            block_hash_of(block)
        except MalformedMessage as exc:
            print("typed error:", type(exc).__name__, exc, flush=True)
""")


def _run_probe(which: str) -> subprocess.CompletedProcess[str]:
    def eight_mib_stack() -> None:  # the usual default; a bigger stack would only move the crash deeper
        resource.setrlimit(resource.RLIMIT_STACK, (8 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    return subprocess.run([sys.executable, "-c", PROBE, which], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, preexec_fn=eight_mib_stack)


def test_the_old_block_hash_dies_on_deeply_nested_rlp() -> None:
    """Reproduces the crash (the old code path, standalone): SIGSEGV, or at least unbounded recursion."""
    done = _run_probe("old")
    assert "bytes 20791" in done.stdout, done.stderr[-2000:]
    died = done.returncode == -signal.SIGSEGV
    assert died or "RecursionError" in done.stderr, (done.returncode, done.stdout, done.stderr[-2000:])


def test_the_new_block_hash_raises_a_typed_error_on_the_same_bytes() -> None:
    done = _run_probe("new")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "typed error: MalformedMessage" in done.stdout and "nested deeper than" in done.stdout


# ---- the scanner agrees with pyrlp's strict decoder


@pytest.mark.parametrize("data", [
    b"\x05", b"\x80", b"\x81\x80", b"\xb8\x38" + b"x" * 56, b"\xc0", b"\xc1\x01", b"\xc3\xc2\xc1\xc0",
    b"\xf8\x38" + b"\x01" * 56, rlp.encode([b"a" * 100, [b"", [b"b"]], 2**200]),
])
def test_canonical_rlp_is_accepted_with_its_item_count(data: bytes) -> None:
    decoded = rlp.decode(data)
    count = scan(data)

    def items(value: object) -> int:
        return 1 + sum(items(v) for v in value) if isinstance(value, list) else 1

    assert count == items(decoded)


@pytest.mark.parametrize("data", [
    b"", b"\x81\x05", b"\xb8\x05hello", b"\xb9\x00\x38" + b"x" * 56, b"\xf8\x05\x01\x01\x01\x01\x01",
    b"\x82a", b"\xc2\x01", b"\xc1\x82ab", b"\x05\x05", b"\xbf" + b"\xff" * 8, b"\xc1", b"\xb8",
])
def test_non_canonical_or_truncated_rlp_is_refused_like_pyrlp_does(data: bytes) -> None:
    with pytest.raises(rlp.DecodingError):
        rlp_guard._original_decode_raw(data, True, False)  # noqa: SLF001 - pyrlp's own verdict
    with pytest.raises(MalformedRLP) as caught:
        scan(data)
    assert not isinstance(caught.value, RLPLimitExceeded)


def test_depth_and_item_limits_are_exact() -> None:
    scan(rlp_nested(rlp_guard.MAX_RLP_DEPTH - 1))  # MAX_RLP_DEPTH lists in all
    with pytest.raises(RLPLimitExceeded, match="nested deeper than 8"):
        scan(rlp_nested(rlp_guard.MAX_RLP_DEPTH))
    flat = rlp.encode([b"\x01"] * 99)
    assert scan(flat, max_items=100) == 100
    with pytest.raises(RLPLimitExceeded, match="more than 99"):
        scan(flat, max_items=99)
    with pytest.raises(RLPLimitExceeded):
        check_transaction(b"\x02" + rlp.encode([b"\x01"] * rlp_guard.MAX_TX_ITEMS))


def test_a_huge_declared_length_is_refused_without_allocating() -> None:
    with pytest.raises(MalformedRLP, match="declares"):
        scan(b"\xbf" + b"\x7f" + b"\xff" * 7 + b"x")
    with pytest.raises(MalformedRLP, match="declares"):
        scan(b"\xff" + b"\x7f" + b"\xff" * 7 + b"\xc0")


def test_the_header_slice_hashes_like_py_evm() -> None:
    m = chain_material()
    for block in m.blocks:
        decoded = rlp.decode(block, sedes=m.vm_class.get_block_class())
        assert keccak(header_rlp(block)) == block_hash_of(block) == bytes(decoded.hash)
        assert block_hash_of(block) == keccak(rlp.encode(rlp.decode(block)[0]))  # what the old code computed


def test_the_envelope_refuses_nesting_before_pyrlp_sees_it() -> None:
    with pytest.raises(EnvelopeError, match="nested deeper than 1"):
        Envelope.decode(rlp_nested(50_000))
    assert Envelope.decode(Envelope(b"block", b"cert").encode()) == Envelope(b"block", b"cert")


# ---- the linear decoder installed into pyrlp


def test_pyrlp_decodes_with_the_linear_decoder() -> None:
    import consensus  # noqa: F401 - installs it

    assert rlp.codec.decode_raw is rlp_guard.linear_decode_raw
    rlp_guard.install()  # idempotent
    assert rlp.codec.decode_raw is rlp_guard.linear_decode_raw


@pytest.mark.parametrize("keep", [True, False])
def test_the_linear_decoder_returns_what_pyrlp_returns(keep: bool) -> None:
    m = chain_material()
    samples = [*m.blocks, *(r for r in m.raw_txs if r[0] >= 0x80), *(r[1:] for r in m.raw_txs if r[0] < 0x80),
               b"\x05", b"\x80", rlp.encode([[], [[]], b"x" * 60, [b"y"] * 70])]
    for data in samples:
        item, per_item = rlp_guard._original_decode_raw(data, True, keep)  # noqa: SLF001
        ours = rlp_guard.linear_decode_raw(data, True, keep)
        assert ours == ((item, per_item) if keep else (item, per_item[:1]))


def test_the_linear_decoder_does_not_recurse() -> None:
    with pytest.raises(rlp.DecodingError, match="superfluous"):
        rlp_guard.linear_decode_raw(rlp_nested(200_000) + b"\x00", True, False)
    item, _ = rlp_guard.linear_decode_raw(rlp_nested(200_000), True, False)
    depth = 0
    while item:
        item, depth = item[0], depth + 1
    assert depth == 200_000
