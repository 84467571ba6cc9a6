"""Traffic meter: bytes per libp2p protocol and direction, and raw TCP bytes, counted always (for metrics).

Unlike the capture (capture.py, a debugging option that writes every byte to disk), the meter only adds
lengths to in-memory counters, so it is on in every node: one dict update per stream read or write.

Where it hooks (py-libp2p 0.8.1, this host's own objects only; no class is patched):
- streams: every NetStream, outbound (`Swarm.new_stream`) or inbound (`Swarm.common_stream_handler`, which
  BasicHost set to its protocol negotiation), gets its `muxed_stream` (the yamux stream) wrapped in a
  counter. A stream's bytes are counted under the protocol it negotiated (`NetStream.protocol_id`, read at
  each read/write); the multistream-select negotiation itself, before a protocol is agreed, is counted
  under NEGOTIATION. The protocol names are bounded: a stream only gets a protocol we have a handler for
  (inbound) or that we asked for (outbound). These are application bytes: yamux frame headers, window
  updates, Noise and TCP overhead are not in them;
- wire: every connection's TCP stream (`TransportUpgrader.upgrade_security`, as the capture hooks it) is
  wrapped to count every byte it carries, Noise and yamux included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from swarmnode.p2p.errors import ConfigError

NEGOTIATION = "(negotiation)"  # multistream-select bytes of a stream before its protocol is agreed
SENT, RECEIVED = "out", "in"


class _MeteredMuxedStream:
    """A yamux stream whose reads and writes are counted under its NetStream's current protocol."""

    __slots__ = ("_inner", "_net", "_received", "_sent")

    def __init__(self, inner: Any, net_stream: Any, sent: Counter[str], received: Counter[str]) -> None:
        self._inner = inner
        self._net = net_stream
        self._sent = sent
        self._received = received

    async def read(self, n: int | None = None) -> bytes:
        data = await self._inner.read(n)
        self._received[self._net.protocol_id or NEGOTIATION] += len(data)
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)
        self._sent[self._net.protocol_id or NEGOTIATION] += len(data)

    def __getattr__(self, name: str) -> Any:  # close, reset, muxed_conn, stream_id, ...
        return getattr(self._inner, name)


class _MeteredTcp:
    """A raw TCP stream (py-libp2p's ReadWriteCloser) whose bytes are counted."""

    __slots__ = ("_inner", "_wire")

    def __init__(self, inner: Any, wire: Counter[str]) -> None:
        self._inner = inner
        self._wire = wire

    async def read(self, n: int | None = None) -> bytes:
        data = await self._inner.read(n)
        self._wire[RECEIVED] += len(data)
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)
        self._wire[SENT] += len(data)

    def __getattr__(self, name: str) -> Any:  # close, get_remote_address, ...
        return getattr(self._inner, name)


class TrafficMeter:
    """Counters of one host: `sent` and `received` (protocol -> bytes), `wire` (SENT/RECEIVED -> bytes).
    `install(swarm)` starts counting; read the counters from any thread (`snapshot`)."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.wire: Counter[str] = Counter()
        self.streams = 0

    def install(self, swarm: Any) -> None:
        """Wrap this swarm's `new_stream`, `common_stream_handler` and `upgrader.upgrade_security`."""
        upgrader = getattr(swarm, "upgrader", None)
        for owner, name in ((swarm, "new_stream"), (swarm, "common_stream_handler"),
                            (upgrader, "upgrade_security")):
            if owner is None or not callable(getattr(owner, name, None)):
                raise ConfigError(f"py-libp2p's Swarm has no {name}: swarmnode.p2p.meter counts traffic there "
                                  f"(written for py-libp2p 0.8.1)")
        swarm.new_stream = self._wrap_outbound(swarm.new_stream)
        swarm.common_stream_handler = self._wrap_inbound(swarm.common_stream_handler)
        upgrader.upgrade_security = self._wrap_upgrade(upgrader.upgrade_security)

    def meter(self, net_stream: Any) -> None:
        """Count the bytes of `net_stream` from now on (a stream without a muxed stream is left alone)."""
        inner = getattr(net_stream, "muxed_stream", None)
        if inner is None or isinstance(inner, _MeteredMuxedStream):
            return
        net_stream.muxed_stream = _MeteredMuxedStream(inner, net_stream, self.sent, self.received)
        self.streams += 1

    def _wrap_outbound(self, new_stream: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def metered_new_stream(peer_id: Any) -> Any:
            net_stream = await new_stream(peer_id)
            self.meter(net_stream)
            return net_stream

        return metered_new_stream

    def _wrap_inbound(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def metered_handler(net_stream: Any) -> None:
            self.meter(net_stream)
            await handler(net_stream)

        return metered_handler

    def _wrap_upgrade(self, upgrade: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def metered_upgrade(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
            stream = getattr(raw_conn, "stream", None)
            if stream is not None and hasattr(stream, "read") and hasattr(stream, "write"):
                raw_conn.stream = _MeteredTcp(stream, self.wire)
            return await upgrade(raw_conn, is_initiator, peer_id)

        return metered_upgrade

    def snapshot(self) -> dict[str, Any]:
        """The counters, copied (safe from another thread: each copy is one C-level operation)."""
        return {"sent": dict(self.sent), "received": dict(self.received), "wire": dict(self.wire),
                "streams": self.streams}


__all__ = ["NEGOTIATION", "RECEIVED", "SENT", "TrafficMeter"]
