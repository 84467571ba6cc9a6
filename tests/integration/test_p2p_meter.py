"""The traffic meter on real py-libp2p hosts, checked against the traffic capture of the same run: the
bytes it counts per protocol are the bytes the capture finds in that protocol's streams, and its wire
bytes are the raw TCP bytes the capture wrote."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import trio

from swarmnode.p2p.capture import RAW_IN, RAW_OUT, read_captures
from swarmnode.p2p.meter import NEGOTIATION, RECEIVED, SENT
from swarmnode.p2p.testing import star
from swarmnode.p2p.topics import UPDATES
from swarmnode.p2p.traffic import CONTROL, by_protocol, demux_all

MB = 1024 * 1024
BLOB = "/swarmnode/blob/1"


async def test_meter_counts_what_the_capture_sees(tmp_path: Path) -> None:
    # Prepare: two hosts, both capturing; one serves a 2 MiB blob to the other
    blob = os.urandom(2 * MB)
    capture_dir = tmp_path / "capture"
    async with star(2, capture_dir=capture_dir) as (server, client):
        with trio.fail_after(20):
            await client.gossip.wait_mesh(UPDATES, [server.peer_id])
        cid = await server.announce_blob(1, blob)
        with trio.fail_after(10):
            async for _ in client.gossip.channel(UPDATES):
                if client.blobs.providers(cid):
                    break
        # Execute
        with trio.fail_after(30):
            assert await client.blobs.fetch(cid, size=len(blob)) == blob
    metered = {n.peer_id: n.host.meter.snapshot() for n in (server, client)}  # the hosts are closed: final
    # Assert: per protocol, the meter agrees with the capture, byte for byte
    for peer_id, snap in metered.items():
        captures = [c for c in read_captures(capture_dir) if c.meta["local_peer"] == str(peer_id)]
        rows = by_protocol(demux_all(captures))
        for protocol, totals in rows.items():
            if protocol == CONTROL:
                continue
            assert snap["sent"].get(protocol, 0) == totals.sent, (peer_id, protocol, snap["sent"], totals)
            assert snap["received"].get(protocol, 0) == totals.received, (peer_id, protocol, snap["received"])
        assert set(snap["sent"]) - {NEGOTIATION} == {p for p, t in rows.items() if t.sent and p != CONTROL}
        raw = Counter[str]()
        for c in captures:
            raw[SENT] += len(c.data(RAW_OUT))
            raw[RECEIVED] += len(c.data(RAW_IN))
        assert snap["wire"] == dict(raw), (snap["wire"], raw)
    served = metered[server.peer_id]
    assert served["sent"][BLOB] >= len(blob) and metered[client.peer_id]["received"][BLOB] == served["sent"][BLOB]
    assert served["wire"][SENT] > served["sent"][BLOB]  # Noise and yamux add their own bytes
    assert served["sent"][NEGOTIATION] > 0 and served["streams"] >= 2
