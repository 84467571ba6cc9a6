"""The traffic capture writer (swarmnode/p2p/capture.py) and its reader by protocol (traffic.py)."""

from __future__ import annotations

import stat
import struct
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import trio

from swarmnode.p2p.capture import (
    HEADER,
    MAGIC,
    META,
    PLAIN_IN,
    PLAIN_OUT,
    RAW_IN,
    RAW_OUT,
    CapturedConnection,
    ConnectionLog,
    TrafficCapture,
    encode_record,
    parse_records,
    read_capture,
    read_captures,
)
from swarmnode.p2p.errors import CaptureError
from swarmnode.p2p.traffic import demux, multistream_messages, negotiate

# ---- writer and file format ----


def clock() -> Any:
    ticks = count(1000)
    return lambda: next(ticks)


def test_connection_log_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.swcap"
    log = ConnectionLog(path, clock())
    payloads = [(PLAIN_OUT, b"hello"), (PLAIN_IN, b""), (RAW_OUT, bytes(range(256)) * 300),
                (RAW_IN, bytearray(b"\x00\x01")), (PLAIN_OUT, memoryview(b"view"))]
    log.meta(seq=1, peer=None)
    for kind, payload in payloads:
        log.record(kind, payload)
    log.meta(peer="16Uiu2")
    log.close(reason="done")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = read_capture(path)
    assert [(r.kind, r.payload) for r in got.records] == [(k, bytes(p)) for k, p in payloads]
    assert [r.time_ns for r in got.records] == [1001, 1002, 1003, 1004, 1005]  # 1000: the first META
    assert got.meta == {"seq": 1, "peer": "16Uiu2", "closed": True, "reason": "done"}
    assert not got.truncated and not got.incomplete
    assert got.data(PLAIN_OUT) == b"helloview" and got.data(RAW_IN) == b"\x00\x01"
    assert got.sizes() == {"plain_out": 9, "plain_in": 0, "raw_out": 76800, "raw_in": 2}
    # the bytes are exactly the documented framing
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    kind, time_ns, length = HEADER.unpack_from(data, len(MAGIC))
    assert kind == META and time_ns == 1000 and data[len(MAGIC) + HEADER.size:][:length].startswith(b"{")


def test_records_after_close_are_dropped(tmp_path: Path) -> None:
    log = ConnectionLog(tmp_path / "c.swcap", clock())
    log.record(PLAIN_OUT, b"a")
    log.close()
    log.record(PLAIN_OUT, b"b")
    log.close()  # twice: no-op
    assert log.dropped == 1
    assert read_capture(tmp_path / "c.swcap").data(PLAIN_OUT) == b"a"


def test_truncated_tail_keeps_whole_records() -> None:
    whole = MAGIC + encode_record(PLAIN_OUT, b"abc", 1) + encode_record(PLAIN_IN, b"defg", 2)
    for cut in range(len(MAGIC) + HEADER.size + 3 + 1, len(whole)):  # inside the second record
        records, truncated = parse_records(whole[:cut])
        assert truncated and [r.payload for r in records] == [b"abc"], cut
    records, truncated = parse_records(whole)
    assert not truncated and [(r.kind, r.time_ns, r.payload) for r in records] == [(PLAIN_OUT, 1, b"abc"),
                                                                                    (PLAIN_IN, 2, b"defg")]


def test_malformed_captures_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not a traffic capture"):
        parse_records(b"GARBAGE!" + encode_record(PLAIN_OUT, b"x", 0))
    with pytest.raises(CaptureError, match="unknown kind 0x7f"):
        parse_records(MAGIC + struct.pack(">BQI", 0x7F, 0, 1) + b"x")
    (tmp_path / "m.swcap").write_bytes(MAGIC + encode_record(META, b"[1, 2]", 0))
    with pytest.raises(CaptureError, match="not a JSON object"):
        read_capture(tmp_path / "m.swcap")


def test_capture_directory_is_0700_and_numbering_continues(tmp_path: Path) -> None:
    directory = tmp_path / "cap"
    first = TrafficCapture(directory, "me", clock=clock())
    a = first.open_connection(True, ("127.0.0.1", 4001))
    b = first.open_connection(False, None)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (a.path.name, b.path.name) == ("000001-dialed-127.0.0.1-4001.swcap", "000002-accepted-unknown-0.swcap")
    second = TrafficCapture(directory, "me", clock=clock())  # a restart into the same directory
    assert second.open_connection(True, ("::1", 5)).path.name == "000003-dialed-__1-5.swcap"
    assert first.statistics() == {"connections": 2, "open": 2}
    first.close()
    assert first.statistics()["open"] == 0
    assert [c.meta.get("closed", False) for c in read_captures(directory)] == [True, True, False]


# ---- the hook: taps on a connection's TCP stream and Noise reader/writer ----


class FakeStream:
    def __init__(self, incoming: list[bytes]) -> None:
        self.written: list[bytes] = []
        self.incoming = incoming
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def read(self, n: int | None = None) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    async def close(self) -> None:
        self.closed = True

    def get_remote_address(self) -> tuple[str, int]:
        return ("10.0.0.2", 4001)


class FakeRawConnection:  # py-libp2p's RawConnection: reads and writes go through .stream
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.read(n)

    async def close(self) -> None:
        await self.stream.close()

    def get_remote_address(self) -> tuple[str, int]:
        return self.stream.get_remote_address()


class FakeNoise:  # a NoiseTransportReadWriter over the raw connection: "encrypts" by reversing
    def __init__(self, raw: FakeRawConnection) -> None:
        self.raw = raw

    async def write_msg(self, msg: bytes) -> None:
        await self.raw.write(msg[::-1])

    async def read_msg(self) -> bytes:
        return (await self.raw.read())[::-1]

    async def close(self) -> None:
        await self.raw.close()

    def get_remote_address(self) -> tuple[str, int]:
        return self.raw.get_remote_address()


class FakeSession:  # a SecureSession: .conn is the Noise reader/writer
    def __init__(self, raw: FakeRawConnection) -> None:
        self.conn = FakeNoise(raw)

    async def write(self, data: bytes) -> None:
        await self.conn.write_msg(data)

    async def read(self) -> bytes:
        return await self.conn.read_msg()

    def get_remote_peer(self) -> str:
        return "16Uiu2Peer"


class FakeUpgrader:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def upgrade_security(self, raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> FakeSession:
        await raw_conn.write(b"/noise handshake")  # before encryption: raw only
        await raw_conn.read()
        if self.fail:
            raise RuntimeError("handshake failed")
        return FakeSession(raw_conn)


class FakeSwarm:
    def __init__(self, upgrader: FakeUpgrader) -> None:
        self.upgrader = upgrader


def test_installed_capture_records_plaintext_and_raw(tmp_path: Path) -> None:
    capture = TrafficCapture(tmp_path, "me", clock=clock())
    swarm = FakeSwarm(FakeUpgrader())
    capture.install(swarm)
    stream = FakeStream([b"handshake reply", b"olleh"])

    async def session() -> None:
        secure = await swarm.upgrader.upgrade_security(FakeRawConnection(stream), True, "16Uiu2Peer")
        await secure.write(b"yamux frame")
        assert await secure.read() == b"hello"
        await secure.conn.close()

    trio.run(session)
    assert stream.closed and stream.written == [b"/noise handshake", b"emarf xumay"]
    (got,) = read_captures(tmp_path)
    assert got.data(PLAIN_OUT) == b"yamux frame" and got.data(PLAIN_IN) == b"hello"
    assert got.data(RAW_OUT) == b"/noise handshake" + b"emarf xumay"
    assert got.data(RAW_IN) == b"handshake reply" + b"olleh"
    assert got.meta["peer"] == "16Uiu2Peer" and got.meta["initiator"] is True and got.meta["closed"] is True
    assert got.meta["remote"] == "10.0.0.2:4001" and got.meta["local_peer"] == "me"


def test_failed_upgrade_closes_its_log(tmp_path: Path) -> None:
    capture = TrafficCapture(tmp_path, "me", clock=clock())
    swarm = FakeSwarm(FakeUpgrader(fail=True))
    capture.install(swarm)
    with pytest.raises(RuntimeError):
        trio.run(swarm.upgrader.upgrade_security, FakeRawConnection(FakeStream([b"x"])), False)
    (got,) = read_captures(tmp_path)
    assert got.meta["reason"] == "security upgrade failed" and "peer" not in got.meta
    assert got.data(RAW_OUT) == b"/noise handshake" and got.data(PLAIN_OUT) == b""
    assert capture.statistics()["open"] == 0


# ---- reading by protocol ----


def ms(*lines: str) -> bytes:
    """multistream-select messages: uvarint length, text, newline."""
    out = b""
    for line in lines:
        body = line.encode() + b"\n"
        out += bytes([len(body)]) + body
    return out


def frame(stream_id: int, payload: bytes = b"", kind: int = 0, flags: int = 0, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("!BBHII", 0, kind, flags, stream_id, size) + payload


def connection(sent: bytes, received: bytes, initiator: bool) -> CapturedConnection:
    from swarmnode.p2p.capture import Record

    records = (Record(PLAIN_OUT, 0, sent[:7]), Record(PLAIN_IN, 1, received), Record(PLAIN_OUT, 2, sent[7:]))
    return CapturedConnection(Path("x.swcap"), {"initiator": initiator}, records)


def test_negotiation_parses_rejections_and_pipelined_data() -> None:
    opener = ms("/multistream/1.0.0", "/meshsub/1.2.0", "/meshsub/1.1.0") + b"\x05hello"
    answerer = ms("/multistream/1.0.0", "na", "/meshsub/1.1.0") + b"reply"
    protocol, accepted, used_opener, used_answerer = negotiate(opener, answerer)
    assert (protocol, accepted) == ("/meshsub/1.1.0", True)
    assert opener[used_opener:] == b"\x05hello" and answerer[used_answerer:] == b"reply"
    # the answer never came: the opener's proposal, not accepted
    assert negotiate(ms("/multistream/1.0.0", "/x/1"), b"")[:2] == ("/x/1", False)
    assert multistream_messages(b"\x05abc", 4) == []  # not a whole message


def test_demux_splits_a_connection_by_stream_and_protocol() -> None:
    # we dialed: our streams are odd; the peer opened stream 2
    sent = (ms("/multistream/1.0.0", "/yamux/1.0.0")
            + frame(1, kind=1, flags=1)  # SYN as a window update
            + frame(1, ms("/multistream/1.0.0", "/swarmnode/blob/1") + b"\x00\x00\x00\x02rq")
            + frame(2, ms("/multistream/1.0.0", "/swarmnode/consensus/1"))
            + frame(2, b"vote" * 100)
            + frame(0, kind=2, length=7))  # a ping
    received = (ms("/multistream/1.0.0", "/yamux/1.0.0")
                + frame(2, ms("/multistream/1.0.0", "/swarmnode/consensus/1"), flags=1)
                + frame(1, ms("/multistream/1.0.0", "/swarmnode/blob/1") + b"BLOB")
                + frame(1, kind=1, length=4096))
    conn = demux(connection(sent, received, initiator=True))
    assert conn.muxer == "/yamux/1.0.0" and conn.leftover_sent == conn.leftover_received == 0
    blob, consensus = conn.streams[1], conn.streams[2]
    assert (blob.protocol, blob.opened_by_us, blob.accepted) == ("/swarmnode/blob/1", True, True)
    assert blob.sent == b"\x00\x00\x00\x02rq" and blob.received == b"BLOB"
    assert (consensus.protocol, consensus.opened_by_us) == ("/swarmnode/consensus/1", False)
    assert consensus.sent == b"vote" * 100 and consensus.received == b""
    # every byte sent is accounted for: control (negotiation of the muxer, 12-byte headers), streams
    streams = sum(s.negotiation_sent + len(s.sent) for s in conn.streams.values())
    assert conn.control_sent + streams == len(sent)
    assert conn.control_sent == len(ms("/multistream/1.0.0", "/yamux/1.0.0")) + 5 * 12


def test_demux_keeps_a_cut_off_tail_as_leftover() -> None:
    sent = ms("/multistream/1.0.0", "/yamux/1.0.0") + frame(1, b"abcdef")
    conn = demux(connection(sent[:-2], ms("/multistream/1.0.0", "/yamux/1.0.0"), initiator=True))
    assert conn.leftover_sent == 12 + 4 and conn.streams == {}
