"""Traffic capture on real py-libp2p hosts: off, nothing is hooked; on, a blob served over
/swarmnode/blob/1 is found whole in the plaintext capture of its stream and nowhere in the raw TCP bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from swarmnode.p2p.capture import PLAIN_OUT, RAW_OUT, read_captures
from swarmnode.p2p.host import P2PHost
from swarmnode.p2p.testing import make_config, star
from swarmnode.p2p.topics import UPDATES
from swarmnode.p2p.traffic import demux_all

MB = 1024 * 1024


def test_capture_off_hooks_nothing() -> None:
    host = P2PHost(make_config(0))
    upgrader = host.libp2p.get_network().upgrader  # type: ignore[attr-defined]
    assert host.capture is None
    # the traffic meter (always on, counters only) is the one wrapper: no capture code runs
    wrapper = vars(upgrader)["upgrade_security"]
    assert "TrafficMeter" in wrapper.__qualname__, f"the upgrader is wrapped by {wrapper.__qualname__} with capture off"


async def test_served_blob_is_in_the_plaintext_capture_only(tmp_path: Path) -> None:
    blob = os.urandom(3 * MB)  # three 1 MiB frames of the blob protocol, each split by Noise and yamux
    capture_dir = tmp_path / "capture"
    async with star(2, capture_dir=capture_dir) as (server, client):
        with trio.fail_after(20):
            await client.gossip.wait_mesh(UPDATES, [server.peer_id])
        cid = await server.announce_blob(1, blob)
        with trio.fail_after(10):
            async for _ in client.gossip.channel(UPDATES):
                if client.blobs.providers(cid):
                    break
        with trio.fail_after(30):
            assert await client.blobs.fetch(cid, size=len(blob)) == blob
    captures = read_captures(capture_dir)  # both nodes captured, one file per connection each
    assert len(captures) == 2 and all(stat.S_IMODE(c.path.stat().st_mode) == 0o600 for c in captures)
    (served,) = [c for c in captures if c.meta["local_peer"] == str(server.peer_id)]
    assert served.meta["peer"] == str(client.peer_id) and served.meta["closed"]
    (conn,) = demux_all([served])
    (stream,) = [s for s in conn.streams.values() if s.protocol == "/swarmnode/blob/1"]
    assert not stream.opened_by_us and stream.accepted
    for i in range(3):
        assert blob[i * MB:(i + 1) * MB] in stream.sent, f"MiB {i} of the blob missing from the blob stream"
    assert blob[:1024] in served.data(PLAIN_OUT)  # (whole MiBs only in the stream: yamux splits them into frames)
    assert len(served.data(RAW_OUT)) > len(served.data(PLAIN_OUT))
    assert blob[:64] not in served.data(RAW_OUT) and b"/swarmnode/blob/1" not in served.data(RAW_OUT)
