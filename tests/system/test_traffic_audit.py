"""Traffic audit: no training example leaves a node, only updates do.

Three daemons of the "hospitals" example (scripts/example_hospitals.py), started through the CLI, each
holding only its own CSV, run a few rounds; node 0 runs with `--capture-traffic`, which records every byte
it exchanges with its peers over every protocol, in plaintext (before Noise) and raw (TCP). The capture is
then searched for node 0's training data: every row of its CSV, as the row's text and as its 30 feature
values in float32 and float64 (little- and big-endian), raw and standardised by the task's mean and std
(the float32 values are exactly the model's inputs). None may appear.

Controls, so that the audit can fail: node 0's own committed updates (read from its blob store) are found
in the capture by the same search, in the plaintext of the blob protocol and nowhere in the raw TCP bytes
(ciphertext); the search finds a row planted in a buffer; and every protocol the node speaks carries bytes.
"""

from __future__ import annotations

import csv
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmnode.node.keys import address_of, load_key
from swarmnode.node.localnet import LocalSwarm, make_genesis, wait_for
from swarmnode.p2p.blobstore import DirectoryBlobStore
from swarmnode.p2p.capture import PLAIN_IN, PLAIN_OUT, RAW_IN, RAW_OUT, read_captures
from swarmnode.p2p.traffic import UNKNOWN, by_protocol, demux_all, totals

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import example_hospitals  # noqa: E402
from examples_common import load_data, load_task  # noqa: E402

pytestmark = pytest.mark.slow

NODES = 3
ROUNDS = 3  # rounds 0..2 final
KEY = 8  # needles are indexed by their first 8 bytes
# protocols node 0 sends bytes on in every run; /swarmnode/sync/1 only when a node starts with peers up
# (asserted when it was used)
EXPECTED = {"/ipfs/id/1.0.0", "/meshsub/1.1.0", "/swarmnode/handshake/1", "/swarmnode/peers/1",
            "/swarmnode/consensus/1", "/swarmnode/blob/1"}
SYNC = "/swarmnode/sync/1"


def find_needles(haystacks: dict[str, bytes], needles: dict[str, bytes]) -> list[tuple[str, str, int]]:
    """Every (haystack, needle, offset) where a needle occurs whole in a haystack. Needles (>= 8 bytes
    each) are indexed by their first 8 bytes; all offsets of a haystack are looked up at once (8 strided
    uint64 views cover every offset), and each candidate is compared in full."""
    index: dict[int, list[tuple[str, bytes]]] = {}
    for name, needle in needles.items():
        if len(needle) < KEY:
            raise ValueError(f"needle {name} is {len(needle)} bytes, at least {KEY} are needed")
        index.setdefault(int.from_bytes(needle[:KEY], "little"), []).append((name, needle))
    keys = np.fromiter(index, dtype=np.uint64, count=len(index))
    found: list[tuple[str, str, int]] = []
    for where, hay in haystacks.items():
        for start in range(min(KEY, max(len(hay) - KEY + 1, 0))):
            words = np.frombuffer(hay, dtype="<u8", count=(len(hay) - start) // KEY, offset=start)
            for i in np.flatnonzero(np.isin(words, keys)):
                offset = start + KEY * int(i)
                for name, needle in index[int(words[i])]:
                    if hay[offset:offset + len(needle)] == needle:
                        found.append((where, name, offset))
    return found


def row_needles(csv_path: Path, task: Any) -> tuple[dict[str, bytes], int]:
    """Every encoding of every row of a hospital's CSV that could carry it out of the node, and the rows."""
    schema = task.schema()
    lines = csv_path.read_text().splitlines()
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    names = [c.name for c in schema.features]
    x = np.array([[float(v) for v in r[:len(names)]] for r in rows])  # (N, F) float64, the columns in task order
    mean = np.array([c.mean for c in schema.features])
    std = np.array([c.std for c in schema.features])
    standardised = (x - mean) / std  # float64, as the node computes it before its float32 cast
    model_inputs = load_data(task, csv_path).images.numpy()  # (N, F) float32: what the node trains on
    # so the standardised float32 encodings below are the model's input bytes
    assert np.array_equal(model_inputs, standardised.astype(np.float32)), "standardisation differs from the node's"
    needles: dict[str, bytes] = {}
    for i, (line, raw, std_row) in enumerate(zip(lines[1:], x, standardised, strict=True)):
        needles[f"row {i} text"] = line.encode()
        for label, values in (("raw", raw), ("standardised", std_row)):
            for dtype in ("<f8", ">f8", "<f4", ">f4"):
                needles[f"row {i} {label} {dtype}"] = values.astype(dtype).tobytes()
    return needles, len(rows)


def test_find_needles_finds_a_planted_row() -> None:
    rng = np.random.default_rng(1)
    row = rng.normal(size=30)
    needles = {"f8": row.astype("<f8").tobytes(), "f4": row.astype("<f4").tobytes(), "text": b"17.99,10.38,122.8"}
    for name, needle in needles.items():
        for offset in (0, 1, 7, 1001):
            hay = rng.bytes(offset) + needle + rng.bytes(500)
            assert find_needles({"buf": hay}, needles) == [("buf", name, offset)], (name, offset)
    assert find_needles({"buf": rng.bytes(4096)}, needles) == []
    cut = needles["f8"][:-1]  # a needle one byte short of whole is not a match
    assert find_needles({"buf": b"x" * 9 + cut + b"y"}, needles) == []


def test_no_training_row_leaves_the_node(tmp_path: Path) -> None:
    example_hospitals.prepare(tmp_path, nodes=NODES, seed=7)
    files = [tmp_path / f"hospital-{i}.csv" for i in range(NODES)]
    task = load_task(tmp_path)
    capture_dir = tmp_path / "capture"
    base = tmp_path / "swarm"
    base.mkdir()
    genesis, keys = make_genesis(base, NODES, tmp_path / "task.toml", commit_window_s=30, extra_args=("--force",))
    with LocalSwarm(base, genesis, keys, extra_env={"OMP_NUM_THREADS": "1"}) as swarm:
        for i, f in enumerate(files):
            swarm.init_node(i, init_args=("--local-data", str(f)))
        swarm.start_all(list(range(NODES)), extra_args={0: ("--capture-traffic", str(capture_dir))})
        wait_for(lambda: max(swarm.final_hashes(0) or {-1: ""}) >= ROUNDS - 1, 60.0 * ROUNDS, f"{ROUNDS} final rounds")
        me = "0x" + address_of(load_key(swarm.nodes[0].data_dir / "node.key")).hex()
        ours = {r: c["updateHash"] for r in range(ROUNDS) for c in swarm.rpc(0, "swarm_getRound", r)["commits"]
                if c["participant"].lower() == me}
        codes = swarm.stop_many(list(range(NODES)))
    assert codes[0] == 0, f"node 0 did not stop cleanly ({codes[0]}): {swarm.tail(0)}"
    assert ours, f"node 0 committed no update in rounds 0..{ROUNDS - 1}"
    store = DirectoryBlobStore(swarm.nodes[0].data_dir / "blobs")
    updates = {f"update of round {r}": store.get(bytes.fromhex(h[2:])) for r, h in ours.items()}
    assert all(updates.values()), "node 0 no longer holds its own updates"

    # the capture: files 0600 in a 0700 directory, whole (closed on exit), the connections to both peers
    assert stat.S_IMODE(capture_dir.stat().st_mode) == 0o700
    captures = read_captures(capture_dir)
    assert captures, "nothing captured"
    for c in captures:
        assert stat.S_IMODE(c.path.stat().st_mode) == 0o600, f"{c.path} is not 0600"
        assert not c.incomplete and not c.truncated, f"{c.path} is incomplete"
    secured = [c for c in captures if "peer" in c.meta]
    assert {c.meta["peer"] for c in secured} >= {n.listen[0].rsplit("/", 1)[1] for n in list(swarm.nodes.values())[1:]}
    connections = demux_all(secured)
    protocols = by_protocol(connections)
    print(f"\nnode 0: {len(captures)} connections; per protocol (streams, bytes sent, bytes received):")
    for name, t in protocols.items():
        print(f"  {name:28} {t.streams:5d} {t.sent:10d} {t.received:10d}")
    layers = totals(captures)
    print("  " + ", ".join(f"{k} {v}" for k, v in layers.items()))
    silent = sorted(p for p in EXPECTED | ({SYNC} & set(protocols)) if protocols.get(p) is None or protocols[p].sent == 0)
    assert not silent, f"nothing sent on {silent}: the capture misses a protocol ({sorted(protocols)})"
    # every plaintext byte is accounted for: yamux frames to the end, every stream's protocol identified
    for c in connections:
        assert c.muxer == "/yamux/1.0.0" and c.leftover_sent == c.leftover_received == 0, (c.capture.path, c.muxer)
        # a stream opened as the node stops (or refused) may end before its protocol is agreed: it must then
        # carry nothing but its negotiation; every other stream's protocol is identified
        unknown = [s.stream_id for s in c.streams.values()
                   if (s.protocol == UNKNOWN or not s.accepted) and (s.sent or s.received)]
        assert not unknown, f"{c.capture.path.name}: streams {unknown} carry data with no protocol negotiated"
    assert layers["raw_sent"] > layers["plain_sent"] > 0, layers
    # raw TCP bytes are ciphertext: only the security negotiation (/noise) is readable there
    raw_sent = b"".join(c.data(RAW_OUT) for c in captures)
    assert b"/noise" in raw_sent
    for inner in (b"/yamux/1.0.0", b"/meshsub/1.1.0", b"/swarmnode/consensus/1"):
        assert inner not in raw_sent, f"{inner!r} readable in the raw TCP bytes"

    # what node 0 sent and received, plaintext and raw, whole streams and by protocol
    haystacks: dict[str, bytes] = {}
    for capture in captures:
        for kind, label in ((PLAIN_OUT, "plain sent"), (PLAIN_IN, "plain received"),
                            (RAW_OUT, "raw sent"), (RAW_IN, "raw received")):
            haystacks[f"{capture.path.name} {label}"] = capture.data(kind)
    for c in connections:  # a row split between yamux frames is whole again in its stream
        name = c.capture.path.name
        for s in c.streams.values():
            haystacks[f"{name} stream {s.stream_id} {s.protocol} sent"] = s.sent
            haystacks[f"{name} stream {s.stream_id} {s.protocol} received"] = s.received

    # control: node 0's own updates are found, in plaintext on the blob protocol, never in raw TCP bytes
    seen = find_needles(haystacks, updates)
    print(f"node 0's updates ({', '.join(f'{len(u)} bytes' for u in updates.values())}) found at:")
    for where, what, offset in seen:
        print(f"  {what}: {where} @{offset}")
    assert {what for _, what, _ in seen} == set(updates), f"an update of node 0 was never seen leaving it: {seen}"
    assert any("/swarmnode/blob/1 sent" in where for where, _, _ in seen)
    assert not [w for w, _, _ in seen if " raw " in w], "plaintext in the raw TCP bytes: not encrypted"

    # the audit: no row of node 0's CSV, in any encoding, in any byte node 0 exchanged
    needles, rows = row_needles(files[0], task)
    scanned = sum(len(h) for h in haystacks.values())
    leaks = find_needles(haystacks, needles)
    print(f"audit: {rows} rows of {files[0].name}, {len(needles)} encodings, {scanned} bytes scanned "
          f"({len(haystacks)} byte streams): {len(leaks)} matches")
    assert not leaks, f"training data of node 0 left it: {leaks[:10]}"
    # and the same search finds a row of that CSV planted inside a captured message
    stream = max((h for w, h in haystacks.items() if "/meshsub/1.1.0 sent" in w), key=len)
    for planted in ("row 5 text", "row 5 standardised <f4", "row 5 raw >f8"):
        hay = stream[:777] + needles[planted] + stream[777:]
        assert ("planted", planted, 777) in find_needles({"planted": hay}, needles), planted
