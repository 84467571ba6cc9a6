"""Traffic capture, for audits and debugging: every byte the node exchanges with its peers, per connection,
in plaintext (just before Noise encrypts it, just after Noise decrypts it) and as raw TCP bytes.

Off unless asked for (`swarmnode run --capture-traffic DIR`, or `P2PConfig.capture_dir`). Off, nothing is
installed and no code runs on any path. On, each write or read on a peer connection appends one record to
that connection's file, synchronously on the event loop (one `writev` into the page cache; a debugging
option is allowed that cost). The files hold the plaintext of every message, so they are created 0600 in a
0700 directory; they never hold keys (Noise keys stay inside py-libp2p).

Where it hooks (py-libp2p 0.8.1). Every TCP connection, dialed or accepted, passes through the swarm's
`TransportUpgrader.upgrade_security(raw_conn, is_initiator, peer_id)`; `install` wraps that one method of
the node's own upgrader instance (no class is patched):
- raw: before the upgrade, `RawConnection.stream` (the TCP stream) is replaced by a tap. Everything the
  connection ever carries passes there: the security multistream negotiation (`/multistream/1.0.0`,
  `/noise`: plaintext by protocol) and the Noise handshake messages, then only Noise transport messages
  (2-byte length + ciphertext);
- plaintext: Noise returns a `SecureSession` whose `conn` (a `NoiseTransportReadWriter`) encrypts each
  `write_msg(plaintext)` and decrypts each `read_msg()`. `conn` is replaced by a tap, so the record is
  the whole plaintext write, before Noise splits it into 64 KiB messages. Everything above Noise writes
  through `SecureSession.write` -> `conn.write_msg`: the muxer negotiation (`/yamux/1.0.0`), then yamux
  frames carrying every stream (their multistream negotiation, identify, gossipsub, and our consensus,
  handshake, peer exchange, blob and sync protocols).
Nothing is hooked below TCP, and nothing a connection sends escapes both taps. A connection refused before
its upgrade (P2PHost._on_inbound) has nothing sent to it.

File format (one file per connection, `<seq>-<dialed|accepted>-<ip>-<port>.swcap`):
    file   := MAGIC record*
    record := kind u8 | time_ns u64 (wall clock) | length u32 | payload      (big-endian)
    kind   := META (a JSON object; the reader merges them in order) | PLAIN_OUT | PLAIN_IN | RAW_OUT | RAW_IN
The first META names the connection (seq, local peer, dialed or accepted, remote address); a second one,
once the Noise handshake is done, the authenticated remote peer; a last one, `closed`. A record is written
whole (header and payload in one writev) or, after a crash, is the file's truncated tail.
`swarmnode.p2p.traffic` splits a capture into protocols.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmnode.p2p.errors import CaptureError, ConfigError

log = logging.getLogger(__name__)

MAGIC = b"SWCAP01\n"
HEADER = struct.Struct(">BQI")  # kind, time_ns, length
META, PLAIN_OUT, PLAIN_IN, RAW_OUT, RAW_IN = 0x01, 0x10, 0x11, 0x20, 0x21
KINDS = {META: "meta", PLAIN_OUT: "plain_out", PLAIN_IN: "plain_in", RAW_OUT: "raw_out", RAW_IN: "raw_in"}
SUFFIX = ".swcap"
MAX_RECORD = 2**32 - 1


def encode_record(kind: int, payload: bytes, time_ns: int) -> bytes:
    """One record's bytes (the writer sends header and payload separately, uncopied)."""
    return HEADER.pack(kind, time_ns, len(payload)) + payload


class ConnectionLog:
    """The capture file of one connection: records appended unbuffered, so whatever was written is on
    disk (in the page cache) even if the process dies. After `close` (or a write error, logged once and
    marked by a `<file>.incomplete` beside it) further records are dropped and counted."""

    def __init__(self, path: Path, clock: Callable[[], int] = time.time_ns) -> None:
        self.path = path
        self._clock = clock
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self.dropped = 0
        self._write(self._fd, MAGIC, b"")

    @property
    def closed(self) -> bool:
        return self._fd is None

    def record(self, kind: int, payload: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            self.dropped += 1
            return
        data = bytes(payload)
        if len(data) > MAX_RECORD:  # a single write of 4 GiB does not happen on a peer connection
            self._fail(f"a record of {len(data)} bytes")
            return
        self._write(self._fd, HEADER.pack(kind, self._clock(), len(data)), data)

    def meta(self, **fields: Any) -> None:
        self.record(META, json.dumps(fields, sort_keys=True).encode())

    def close(self, **fields: Any) -> None:
        if self._fd is None:
            return
        self.meta(closed=True, **fields)
        fd, self._fd = self._fd, None
        os.close(fd)

    def _write(self, fd: int, header: bytes, payload: bytes) -> None:
        try:
            done = os.writev(fd, [header, payload])
            if done < len(header) + len(payload):  # a regular file takes it all unless the disk is full
                rest = (header + payload)[done:]
                while rest:
                    rest = rest[os.write(fd, rest):]
        except OSError as exc:
            self._fail(str(exc))

    def _fail(self, reason: str) -> None:
        log.error("event=traffic_capture_failed file=%s reason=%s (this connection is no longer captured)",
                  self.path, reason)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            Path(f"{self.path}.incomplete").write_text(reason + "\n")
        except OSError:
            pass


class _RawTap:
    """A TCP stream (py-libp2p's ReadWriteCloser) whose reads and writes are recorded."""

    def __init__(self, inner: Any, conn_log: ConnectionLog) -> None:
        self._inner = inner
        self._log = conn_log

    async def write(self, data: bytes) -> None:
        self._log.record(RAW_OUT, data)
        await self._inner.write(data)

    async def read(self, n: int | None = None) -> bytes:
        data = await self._inner.read(n)
        if data:
            self._log.record(RAW_IN, data)
        return data

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            self._log.close()

    def __getattr__(self, name: str) -> Any:  # get_remote_address, get_local_address, ...
        return getattr(self._inner, name)


class _PlainTap:
    """A Noise transport reader/writer (EncryptedMsgReadWriter) whose plaintext messages are recorded."""

    def __init__(self, inner: Any, conn_log: ConnectionLog) -> None:
        self._inner = inner
        self._log = conn_log

    async def write_msg(self, msg: bytes, *args: Any, **kwargs: Any) -> None:
        self._log.record(PLAIN_OUT, msg)
        await self._inner.write_msg(msg, *args, **kwargs)

    async def read_msg(self, *args: Any, **kwargs: Any) -> bytes:
        msg = await self._inner.read_msg(*args, **kwargs)
        if msg:
            self._log.record(PLAIN_IN, msg)
        return msg

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            self._log.close()

    def __getattr__(self, name: str) -> Any:  # encrypt, decrypt, get_remote_address, ...
        return getattr(self._inner, name)


class TrafficCapture:
    """Writes a capture file per peer connection into `directory`; `install(swarm)` starts it, `close()`
    closes the files of connections still open (the host calls it when it stops)."""

    def __init__(self, directory: Path, local_peer: str, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.directory = Path(directory)
        self.local_peer = local_peer
        self._clock = clock
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"traffic capture directory {self.directory}: {exc}") from exc
        existing = [_seq_of(p) for p in self.directory.glob(f"*{SUFFIX}")]
        self._seq = itertools.count(max(existing, default=0) + 1)
        self._open: dict[int, ConnectionLog] = {}
        self.counters = Counter[str]()

    def install(self, swarm: Any) -> None:
        """Wrap `swarm.upgrader.upgrade_security` (this swarm's upgrader only)."""
        upgrader = getattr(swarm, "upgrader", None)
        if upgrader is None or not hasattr(upgrader, "upgrade_security"):
            raise ConfigError("py-libp2p's Swarm has no upgrader.upgrade_security: swarmnode.p2p.capture hooks "
                              "connections there (written for py-libp2p 0.8.1)")
        upgrader.upgrade_security = self._wrap(upgrader.upgrade_security)

    def _wrap(self, upgrade: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
            conn_log = self.open_connection(is_initiator, _remote(raw_conn))
            self.tap_raw(raw_conn, conn_log)
            try:
                secure = await upgrade(raw_conn, is_initiator, peer_id)
            except BaseException:
                conn_log.close(reason="security upgrade failed")
                raise
            self.tap_secure(secure, conn_log)
            return secure

        return upgrade_security

    def open_connection(self, is_initiator: bool, remote: tuple[str, int] | None) -> ConnectionLog:
        ip, port = remote if remote else ("unknown", 0)
        side = "dialed" if is_initiator else "accepted"
        while True:
            seq = next(self._seq)
            path = self.directory / f"{seq:06d}-{side}-{_safe(ip)}-{port}{SUFFIX}"
            try:
                conn_log = ConnectionLog(path, self._clock)
                break
            except FileExistsError:  # another process writes into the same directory
                continue
        conn_log.meta(seq=seq, local_peer=self.local_peer, initiator=is_initiator, remote=f"{ip}:{port}")
        self._open = {s: c for s, c in self._open.items() if not c.closed}  # the connections still open
        self._open[seq] = conn_log
        self.counters["connections"] += 1
        return conn_log

    def tap_raw(self, raw_conn: Any, conn_log: ConnectionLog) -> None:
        """Record the raw TCP bytes of `raw_conn` (a RawConnection: its `stream` is replaced by a tap).
        Another connection type is left alone, and the META record says so."""
        stream = getattr(raw_conn, "stream", None)
        if stream is None or not hasattr(stream, "write") or not hasattr(stream, "read"):
            conn_log.meta(raw="not captured: the connection has no stream", conn_type=type(raw_conn).__name__)
            self.counters["raw_not_captured"] += 1
            return
        raw_conn.stream = _RawTap(stream, conn_log)

    def tap_secure(self, secure: Any, conn_log: ConnectionLog) -> None:
        """Record the plaintext of a secured connection (a SecureSession: its `conn` is replaced by a tap)."""
        inner = getattr(secure, "conn", None)
        if inner is None or not hasattr(inner, "write_msg") or not hasattr(inner, "read_msg"):
            conn_log.meta(plaintext="not captured: the secure session has no message reader/writer",
                          secure_type=type(secure).__name__)
            self.counters["plain_not_captured"] += 1
            return
        secure.conn = _PlainTap(inner, conn_log)
        conn_log.meta(peer=str(secure.get_remote_peer()), security=type(inner).__name__)

    def close(self) -> None:
        for conn_log in self._open.values():
            conn_log.close(reason="capture stopped")
        self._open.clear()

    def statistics(self) -> dict[str, int]:
        self._open = {s: c for s, c in self._open.items() if not c.closed}
        return {**self.counters, "open": len(self._open)}


def _remote(raw_conn: Any) -> tuple[str, int] | None:
    try:
        address = raw_conn.get_remote_address()
    except Exception:  # a connection closed meanwhile
        return None
    return (str(address[0]), int(address[1])) if address else None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)


def _seq_of(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


# ---- reading ----


@dataclass(frozen=True)
class Record:
    kind: int
    time_ns: int
    payload: bytes


@dataclass(frozen=True)
class CapturedConnection:
    """One connection's capture: its merged META fields and its data records in order."""

    path: Path
    meta: dict[str, Any]
    records: tuple[Record, ...]
    truncated: bool = False  # the file ended inside a record (the process died while writing it)
    incomplete: bool = False  # the writer gave up on this connection (a `.incomplete` marker)

    def data(self, kind: int) -> bytes:
        """Every payload of one kind (PLAIN_OUT, ...), concatenated: that direction's byte stream."""
        return b"".join(r.payload for r in self.records if r.kind == kind)

    @property
    def initiator(self) -> bool:
        return bool(self.meta.get("initiator"))

    def sizes(self) -> dict[str, int]:
        totals = Counter[str]()
        for r in self.records:
            totals[KINDS.get(r.kind, str(r.kind))] += len(r.payload)
        return dict(totals)


def parse_records(data: bytes) -> tuple[list[Record], bool]:
    """The records of a capture file's bytes, and whether its tail was cut off mid-record; CaptureError
    if it is not a capture file or a record has an unknown kind."""
    if not data.startswith(MAGIC):
        raise CaptureError(f"not a traffic capture (starts {data[:8]!r}, expected {MAGIC!r})")
    records: list[Record] = []
    offset = len(MAGIC)
    while offset < len(data):
        if offset + HEADER.size > len(data):
            return records, True
        kind, time_ns, length = HEADER.unpack_from(data, offset)
        if kind not in KINDS:
            raise CaptureError(f"record of unknown kind {kind:#x} at offset {offset}")
        start = offset + HEADER.size
        if start + length > len(data):
            return records, True
        records.append(Record(kind, time_ns, data[start:start + length]))
        offset = start + length
    return records, False


def read_capture(path: Path) -> CapturedConnection:
    records, truncated = parse_records(Path(path).read_bytes())
    meta: dict[str, Any] = {}
    for r in records:
        if r.kind == META:
            try:
                fields = json.loads(r.payload)
            except ValueError as exc:
                raise CaptureError(f"{path}: META record is not JSON: {exc}") from exc
            if not isinstance(fields, dict):
                raise CaptureError(f"{path}: META record is not a JSON object")
            meta.update(fields)
    return CapturedConnection(Path(path), meta, tuple(r for r in records if r.kind != META), truncated,
                              Path(f"{path}.incomplete").exists())


def read_captures(directory: Path) -> list[CapturedConnection]:
    """Every connection captured in `directory` (and below), in file-name order."""
    return [read_capture(p) for p in sorted(Path(directory).rglob(f"*{SUFFIX}"))]


__all__ = [
    "KINDS", "MAGIC", "META", "PLAIN_IN", "PLAIN_OUT", "RAW_IN", "RAW_OUT", "CapturedConnection",
    "ConnectionLog", "Record", "TrafficCapture", "encode_record", "parse_records", "read_capture",
    "read_captures",
]
