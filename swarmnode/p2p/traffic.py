"""Reading a traffic capture by protocol: each connection's plaintext split into its muxer negotiation,
yamux frames, and per stream the protocol it negotiated and the bytes it carried each way.

    python -m swarmnode.p2p.traffic DIR        # bytes per protocol, sent and received, for a capture

A connection's plaintext (capture.py) is, in each direction: multistream-select (`/multistream/1.0.0`,
then `/yamux/1.0.0`), then yamux frames (12-byte header: version, type, flags, stream id, length; a DATA
frame's payload follows). Each yamux stream again starts with a multistream-select negotiation (the
opener proposes, the other side answers `na` or echoes the protocol), then carries the protocol's bytes.
Stream ids tell who opened a stream: odd ones the connection's dialer, even ones the side that accepted.
A capture cut off mid-frame (the node stopped) ends at the last whole frame.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.p2p.capture import PLAIN_IN, PLAIN_OUT, RAW_IN, RAW_OUT, CapturedConnection, read_captures

MULTISTREAM = "/multistream/1.0.0"
YAMUX_HEADER = struct.Struct("!BBHII")  # version, type, flags, stream id, length
YAMUX_DATA = 0
CONTROL = "(yamux control)"  # frame headers, window updates, pings, go-away
UNKNOWN = "(not negotiated)"  # a stream whose negotiation was not captured whole


@dataclass
class StreamTraffic:
    stream_id: int
    opened_by_us: bool
    protocol: str = UNKNOWN
    accepted: bool = False  # the other side agreed to the protocol (its answer was captured)
    sent: bytes = b""  # the protocol's bytes, after the negotiation
    received: bytes = b""
    negotiation_sent: int = 0
    negotiation_received: int = 0


@dataclass
class ConnectionTraffic:
    capture: CapturedConnection
    muxer: str = UNKNOWN
    streams: dict[int, StreamTraffic] = field(default_factory=dict)
    control_sent: int = 0  # yamux headers and control frames, and the muxer negotiation
    control_received: int = 0
    leftover_sent: int = 0  # bytes after the last whole frame (cut off) or not yamux at all
    leftover_received: int = 0

    @property
    def peer(self) -> str:
        return str(self.capture.meta.get("peer", "?"))


def read_uvarint(data: bytes, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None if `data` ends inside it or it is longer than 9 bytes."""
    value = shift = 0
    for i in range(offset, min(len(data), offset + 9)):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    return None


def multistream_messages(data: bytes, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` leading multistream-select messages of `data`: (text without the newline, offset
    after it). Stops at the first bytes that are not a whole, newline-terminated message."""
    out: list[tuple[str, int]] = []
    offset = 0
    while len(out) < limit:
        head = read_uvarint(data, offset)
        if head is None:
            break
        length, start = head
        end = start + length
        if length < 1 or length > 1024 or end > len(data) or data[end - 1:end] != b"\n":
            break
        try:
            text = data[start:end - 1].decode()
        except UnicodeDecodeError:
            break
        out.append((text, end))
        offset = end
    return out


def negotiate(opener: bytes, answerer: bytes) -> tuple[str, bool, int, int]:
    """A multistream-select negotiation seen from both sides: (protocol, accepted, bytes of it on the
    opener's side, bytes of it on the answerer's side). Each side sends the header; the opener then
    proposes, and the answerer answers each proposal with `na` or by echoing it. Without an accepting
    answer in the capture, the protocol is the opener's last proposal (`accepted` False)."""
    answers = multistream_messages(answerer, 64)
    kept = answers[:1] if answers and answers[0][0] == MULTISTREAM else []
    accepted = False
    for text, end in answers[1:] if kept else []:
        kept.append((text, end))
        if text != "na":
            accepted = True
            break
    rejected = len(kept) - 1 - accepted if kept else 0
    proposals = multistream_messages(opener, 2 + rejected)  # header, the rejected ones, the last one
    if not proposals or proposals[0][0] != MULTISTREAM:
        return UNKNOWN, False, 0, kept[-1][1] if kept else 0
    if accepted:
        protocol = kept[-1][0]
    else:
        protocol = proposals[-1][0] if len(proposals) > 1 else UNKNOWN
    return protocol, accepted, proposals[-1][1], kept[-1][1] if kept else 0


def yamux_frames(data: bytes, offset: int) -> tuple[dict[int, bytearray], int, int]:
    """The DATA payloads per stream id in `data` from `offset`, the bytes of frame headers and control
    frames, and the leftover bytes after the last whole frame."""
    streams: dict[int, bytearray] = {}
    control = 0
    while offset + YAMUX_HEADER.size <= len(data):
        version, kind, _flags, stream_id, length = YAMUX_HEADER.unpack_from(data, offset)
        if version != 0 or kind > 3:
            break  # not yamux: everything from here is leftover
        body = offset + YAMUX_HEADER.size
        if kind == YAMUX_DATA:
            if body + length > len(data):
                break
            streams.setdefault(stream_id, bytearray()).extend(data[body:body + length])
            offset = body + length
        else:
            offset = body
        control += YAMUX_HEADER.size
    return streams, control, len(data) - offset


def demux(capture: CapturedConnection) -> ConnectionTraffic:
    """One connection's plaintext by stream and protocol (see the module docstring)."""
    sent, received = capture.data(PLAIN_OUT), capture.data(PLAIN_IN)
    we_dialed = capture.initiator
    opener, answerer = (sent, received) if we_dialed else (received, sent)
    muxer, _, opener_used, answerer_used = negotiate(opener, answerer)
    sent_from, received_from = (opener_used, answerer_used) if we_dialed else (answerer_used, opener_used)
    traffic = ConnectionTraffic(capture, muxer, control_sent=sent_from, control_received=received_from)
    out_streams, control, traffic.leftover_sent = yamux_frames(sent, sent_from)
    traffic.control_sent += control
    in_streams, control, traffic.leftover_received = yamux_frames(received, received_from)
    traffic.control_received += control
    for stream_id in sorted(set(out_streams) | set(in_streams)):
        ours = (stream_id % 2 == 1) == we_dialed
        out, inn = bytes(out_streams.get(stream_id, b"")), bytes(in_streams.get(stream_id, b""))
        protocol, accepted, opener_used, answerer_used = negotiate(*((out, inn) if ours else (inn, out)))
        out_used, in_used = (opener_used, answerer_used) if ours else (answerer_used, opener_used)
        traffic.streams[stream_id] = StreamTraffic(stream_id, ours, protocol, accepted, out[out_used:], inn[in_used:],
                                                   out_used, in_used)
    return traffic


def demux_all(captures: Iterable[CapturedConnection]) -> list[ConnectionTraffic]:
    return [demux(c) for c in captures]


@dataclass(frozen=True)
class ProtocolTotals:
    streams: int
    sent: int  # the protocol's bytes (after negotiation), summed over its streams
    received: int


def by_protocol(connections: Iterable[ConnectionTraffic]) -> dict[str, ProtocolTotals]:
    """Per protocol: streams, bytes sent and received (application bytes; CONTROL holds the yamux frame
    headers, control frames and the muxer and stream negotiations)."""
    streams, sent, received = Counter[str](), Counter[str](), Counter[str]()
    for conn in connections:
        sent[CONTROL] += conn.control_sent
        received[CONTROL] += conn.control_received
        for s in conn.streams.values():
            streams[s.protocol] += 1
            sent[s.protocol] += len(s.sent)
            received[s.protocol] += len(s.received)
            sent[CONTROL] += s.negotiation_sent
            received[CONTROL] += s.negotiation_received
    return {p: ProtocolTotals(streams[p], sent[p], received[p]) for p in sorted(set(sent) | set(received))}


def totals(captures: Iterable[CapturedConnection]) -> dict[str, int]:
    """Bytes per layer and direction over all connections: plaintext and raw (TCP) bytes."""
    out = Counter[str]()
    for c in captures:
        out["plain_sent"] += len(c.data(PLAIN_OUT))
        out["plain_received"] += len(c.data(PLAIN_IN))
        out["raw_sent"] += len(c.data(RAW_OUT))
        out["raw_received"] += len(c.data(RAW_IN))
    return dict(out)


def report(directory: Path) -> str:
    captures = read_captures(directory)
    rows = by_protocol(demux_all(captures))
    lines = [f"{len(captures)} connections captured in {directory}",
             f"{'protocol':32} {'streams':>8} {'sent':>12} {'received':>12}"]
    lines += [f"{p:32} {t.streams:8d} {t.sent:12d} {t.received:12d}" for p, t in rows.items()]
    lines += [f"{k}: {v}" for k, v in totals(captures).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path, help="what `swarmnode run --capture-traffic DIR` wrote")
    args = ap.parse_args(argv)
    print(report(args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
