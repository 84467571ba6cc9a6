"""HTTP JSON-RPC 2.0 server (trio + h11) for the standard Ethereum methods, extensible with more.

    server = RpcServer(service)                  # service: consensus.service.ChainService
    server.register_method("swarm_foo", fn)      # fn: async (params) -> JSON-able result
    port = await nursery.start(server.serve)     # binds 127.0.0.1, port 0 = any free port

Methods that read or change the chain run in the chain's single worker thread (service.run); eth_call and
eth_estimateGas run in worker processes instead (chain_reads.CallWorkers), never on the chain's thread.

Hostile input never takes the server down, and one client cannot hold it (RpcOptions has every limit):
- who may ask: the Host header must name this machine (localhost, 127.0.0.1, [::1], or the address the
  server is bound to) unless `vhosts` allows more, and a browser's Origin must be a localhost page unless
  `cors_origins` allows more; anything else gets 403 with the reason. This is what stops a web page from
  reaching the node through the user's browser (CSRF, DNS rebinding).
- connections: at most `max_accept_rate` new ones a second are taken (a flood waits in the kernel's
  backlog, not on the event loop); at most `max_connections` are served at once; more wait (FIFO) up to
  `wait_timeout`, at most `max_waiting` of them, and then get 503. While some wait, a connection that has
  sat idle or has been sending one request for `evict_after` seconds is closed to make room, and one that
  has been serving one request that long closes after its response ("connection: close"). A connection in
  active use (short requests, short pauses) keeps its slot whatever else arrives.
- time: a connection with no request for `idle_timeout` is closed; a request must arrive whole (head and
  body) within `request_timeout` of its first byte (408 otherwise: a slowloris client holds nothing for
  long); a response must be written within `write_timeout` (a client that does not read is dropped).
- size: the body is capped (413), the head by h11 (16 KiB), the JSON by nesting depth, count of arrays and
  objects, count of elements, batch length, and the size of a batch's responses.
- CPU: large bodies, batches and large responses are heavy work for the event loop's thread, which shares
  the interpreter lock with the chain's thread: they are parsed one at a time and only while the chain's
  executor runs nothing more urgent than RPC, and are throttled to a fraction of the thread (_LoopGate).
  Methods that may read a lot (eth_getLogs, swarm_getRound, swarm_roundHistory, swarm_participants) run
  as several short executor jobs (rpc_eth.JOB_BUDGET), so consensus work never waits long behind them.
JSON-RPC errors: bad JSON -32700, a bad request -32600, an unknown method -32601, bad params -32602, a
rejected transaction -32000 with the pool's reason, a reverted call 3 with the revert data, a failed or
timed-out call -32000, a limit -32005, anything unexpected -32603 (logged, connection kept).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from consensus.chain_reads import CallLimits, CallWorkers
from consensus.rpc_eth import Calls, eth_methods
from consensus.rpc_format import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    InvalidParams,
    RpcError,
)
from consensus.service import ChainService

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_BATCH = 100
MAX_JSON_DEPTH = 64
MAX_CONTAINERS = 4096  # arrays + objects in one body: bounds the parser's work and its C recursion
MAX_ELEMENTS = 20_000  # commas in one body: bounds the parser's work (50k floats take ~20 ms)
MAX_RESPONSE = 16 * 1024 * 1024  # bytes of one batch's responses
MAX_CONNECTIONS = 64
READ_TIMEOUT = 30.0  # kept for callers of the old name: the keep-alive idle timeout
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_RECEIVE = 64 * 1024
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

Method = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class RpcOptions:
    """Every limit of the JSON-RPC server (see the module docstring)."""

    max_body: int = MAX_BODY
    max_batch: int = MAX_BATCH
    max_json_depth: int = MAX_JSON_DEPTH
    max_containers: int = MAX_CONTAINERS
    max_elements: int = MAX_ELEMENTS
    max_response: int = MAX_RESPONSE
    max_connections: int = MAX_CONNECTIONS
    max_waiting: int = 256  # connections waiting for a slot; more get 503 at once
    wait_timeout: float = 5.0  # seconds a connection waits for a slot before 503
    evict_after: float = 1.0  # while others wait, an idle or slow-sending connection this old is closed
    idle_timeout: float = READ_TIMEOUT  # keep-alive: seconds without a new request before closing
    request_timeout: float = 10.0  # seconds from a request's first byte to the end of its body
    write_timeout: float = 10.0  # seconds to write one response
    max_accept_rate: float = 200.0  # new connections taken per second (more wait in the kernel's backlog)
    heavy_bytes: int = 32 * 1024  # a body or response this large, or a batch, is heavy work (see _LoopGate)
    heavy_pause: float = 3.0  # after a heavy request that took c s of CPU, the next heavy one waits this * c
    chain_first: float = 0.5  # heavy work waits up to this long while the chain's thread runs urgent work
    vhosts: tuple[str, ...] = ()  # Host names accepted besides this machine's; "*" accepts any
    cors_origins: tuple[str, ...] = ()  # browser Origins accepted besides localhost pages; "*" accepts any
    calls: CallLimits = field(default_factory=CallLimits)  # eth_call / eth_estimateGas
    call_wait_timeout: float = 5.0  # seconds a call waits for a free worker before -32005


def json_too_deep(body: bytes, limit: int = 0) -> bool:
    """True if arrays/objects nest deeper than `limit` (MAX_JSON_DEPTH). A byte scan in Python: the
    dispatcher bounds the count of arrays/objects first, parses, and measures the parsed value instead."""
    limit = limit or MAX_JSON_DEPTH
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def value_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted up to limit + 1; iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _LoopGate:
    """Heavy work on the event loop's thread: a large body, a batch, a large response.

    It is synchronous Python: while it runs, nothing else on the loop runs, and it takes the interpreter
    lock from the chain's thread (py-evm) in 5 ms turns. So (1) a large body is parsed only while the
    chain's executor runs no job more urgent than RPC (waiting up to `chain_first` seconds for that), one
    at a time, so a small request waits behind at most one parse; (2) after a heavy request, which used
    c seconds of the loop thread's CPU from its first byte to its response, the next heavy piece waits
    `pause` * c: whoever sends them, heavy requests get at most 1 / (1 + pause) of the thread."""

    def __init__(self, executor: Any, pause: float, chain_first: float) -> None:
        self.executor, self.pause, self.chain_first = executor, pause, chain_first
        self._lock = trio.Lock()
        self.charged = 0
        self.cpu_seconds = 0.0

    async def _chain_first(self) -> None:
        if self.executor is not None:
            give_up = trio.current_time() + self.chain_first
            while self.executor.urgent_running() and trio.current_time() < give_up:
                await trio.sleep(0.002)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """`async with gate.turn(): <synchronous heavy work>`"""
        async with self._lock:
            await self._chain_first()
            yield

    async def charge(self, cpu: float) -> None:
        """A heavy request used `cpu` seconds of the loop's thread: the next heavy piece waits for it."""
        self.charged += 1
        self.cpu_seconds += cpu
        async with self._lock:
            await trio.sleep(cpu * self.pause)


class RpcDispatcher:
    """Maps method names to async handlers and turns request bodies into response bodies."""

    def __init__(self, options: RpcOptions | None = None, executor: Any = None) -> None:
        self.options = options or RpcOptions()
        self._methods: dict[str, Method] = {}
        self.gate = _LoopGate(executor, self.options.heavy_pause, self.options.chain_first)

    def register_method(self, name: str, fn: Method) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"bad method name {name!r}")
        self._methods[name] = fn

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(sorted(self._methods))

    def parse(self, body: bytes) -> Any:
        """The JSON value of a body, within the limits; RpcError(PARSE_ERROR) otherwise. The counts come
        first (C speed): they bound what json.loads may build and how deep its C recursion may go (py-evm
        raises the recursion limit to 100000, so that limit would not stop it before the C stack ends)."""
        opt = self.options
        containers = body.count(b"[") + body.count(b"{")
        if containers > opt.max_containers:
            raise RpcError(PARSE_ERROR, f"JSON has more than {opt.max_containers} arrays and objects")
        if body.count(b",") >= opt.max_elements:
            raise RpcError(PARSE_ERROR, f"JSON has more than {opt.max_elements} elements")
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RpcError(PARSE_ERROR, f"parse error: {str(exc)[:200]}") from exc
        if containers > opt.max_json_depth and value_depth(value, opt.max_json_depth) > opt.max_json_depth:
            raise RpcError(PARSE_ERROR, f"JSON nested deeper than {opt.max_json_depth}")
        return value

    async def handle_body(self, body: bytes) -> bytes | None:
        """The response body for a request body (None for a batch of notifications only)."""
        try:
            if len(body) > self.options.heavy_bytes:
                async with self.gate.turn():
                    request = self.parse(body)
            else:
                request = self.parse(body)
        except RpcError as exc:
            return _encode(_error_response(None, exc))
        if isinstance(request, list):
            return await self._handle_batch(request)
        response = await self.handle_one(request)
        return _encode(response) if response is not None else None

    async def _handle_batch(self, requests: list[Any]) -> bytes | None:
        if not requests:
            return _encode(_error_response(None, RpcError(INVALID_REQUEST, "empty batch")))
        if len(requests) > self.options.max_batch:
            return _encode(_error_response(None, RpcError(
                INVALID_REQUEST, f"batch of {len(requests)} requests; at most {self.options.max_batch}")))
        parts: list[bytes] = []
        size = 0
        for request in requests:
            if size > self.options.max_response:  # the rest is not even run
                req_id = request.get("id") if isinstance(request, dict) else None
                response: dict[str, Any] | None = _error_response(_plain_id(req_id), RpcError(
                    LIMIT_EXCEEDED, f"batch response exceeds {self.options.max_response} bytes"))
            else:
                response = await self.handle_one(request)
            if response is not None:
                parts.append(_encode(response))
                size += len(parts[-1])
        return b"[" + b",".join(parts) + b"]" if parts else None

    async def handle_one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            return _error_response(None, RpcError(INVALID_REQUEST, "invalid request: need jsonrpc '2.0' and a method"))
        req_id = request.get("id")
        if req_id is not None and (not isinstance(req_id, (str, int, float)) or isinstance(req_id, bool)):
            return _error_response(None, RpcError(INVALID_REQUEST, "invalid request id"))
        is_notification = "id" not in request
        try:
            result = await self._call(request["method"], request.get("params"))
        except RpcError as exc:
            response = _error_response(req_id, exc)
        else:
            response = {"jsonrpc": "2.0", "id": req_id, "result": result}
        return None if is_notification else response

    async def _call(self, method: str, params: Any) -> Any:
        fn = self._methods.get(method)
        if fn is None:
            raise RpcError(METHOD_NOT_FOUND, f"method {method[:64]!r} not found")
        try:
            return await fn(params)
        except RpcError:
            raise
        except InvalidParams as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from exc
        except Exception as exc:  # a bug or an unexpected library error: answer, log, keep serving
            log.exception("JSON-RPC method %s failed", method[:64])
            raise RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _plain_id(req_id: Any) -> Any:
    return req_id if isinstance(req_id, (str, int, float)) and not isinstance(req_id, bool) else None


def _error_response(req_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": error.to_json()}


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- who may ask


def host_name(value: str) -> str | None:
    """The host of a Host header ("name", "name:port", "[v6]:port"), lowercased, IPv6 without brackets;
    None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
    else:
        host, sep, port = value.partition(":")
        rest = sep + port
    if rest and not (rest[0] == ":" and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return host or None


class RequestGate:
    """Host and Origin checks against DNS rebinding and cross-site requests (geth's --http.vhosts and
    --http.corsdomain). Host: absent (HTTP/1.0), this machine's loopback names, the address the server is
    bound to, or one of `vhosts`. Origin: absent (not a browser), http(s)://localhost|127.0.0.1|[::1] on
    any port, or one of `cors_origins` (scheme://host[:port]). "*" in either list accepts anything."""

    def __init__(self, bound_host: str, vhosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = ()) -> None:
        names = {h.strip().lower().strip("[]") for h in vhosts if h.strip()}
        self.any_host = "*" in names
        bound = bound_host.strip().lower().strip("[]")
        self.hosts = frozenset(LOCAL_HOSTS | names | ({bound} if bound not in ("", "0.0.0.0", "::") else set()))
        origins = {o.strip().lower().rstrip("/") for o in cors_origins if o.strip()}
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def host_problem(self, value: bytes | None) -> str | None:
        if value is None or self.any_host:
            return None
        text = value.decode("latin-1")
        name = host_name(text)
        if name is None:
            return f"malformed Host header {text[:100]!r}"
        if name not in self.hosts:
            return (f"Host {text[:100]!r} is not allowed: the node answers requests for "
                    f"{', '.join(sorted(self.hosts))} (add the name to the RPC vhosts option)")
        return None

    def origin_allowed(self, value: bytes) -> bool:
        origin = value.decode("latin-1").strip().lower().rstrip("/")
        if self.any_origin or origin in self.origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and "/" not in rest and host_name(rest) in LOCAL_HOSTS

    def check(self, request: h11.Request) -> tuple[str | None, bytes | None]:
        """(why the request is refused or None, the Origin to allow in the response or None)."""
        host = origin = None
        for name, value in request.headers:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        problem = self.host_problem(host)
        if problem is None and origin is not None and not self.origin_allowed(origin):
            problem = (f"Origin {origin.decode('latin-1')[:100]!r} is not allowed: browsers may call the node "
                       f"only from localhost pages (add the origin to the RPC cors_origins option)")
        return problem, origin


# ---------------------------------------------------------------- connections


_IDLE, _READING, _BUSY = "idle", "reading", "busy"


class _Conn:
    """One connection's state, for eviction: what it is doing since when."""

    __slots__ = ("scope", "state", "since", "give_up")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.state = _IDLE
        self.since = time.monotonic()
        self.give_up = False  # close after the response being served: others wait for a slot

    def enter(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()


class _BodyTooLarge(Exception):
    pass


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RpcServer:
    """JSON-RPC over HTTP/1.1 (keep-alive, POST only) on 127.0.0.1 unless told otherwise."""

    def __init__(self, service: ChainService, *, host: str = "127.0.0.1", port: int = 0,
                 max_body: int | None = None, client_version: str = "swarmnode/0.1.0",
                 options: RpcOptions | None = None) -> None:
        self.host, self.port = host, port
        self.service, self.client_version = service, client_version
        self.dispatcher = RpcDispatcher()
        self._extra: dict[str, Method] = {}
        self.calls: CallWorkers | None = None
        self._conns: set[_Conn] = set()
        self._waiting = 0
        self.counters = {"connections": 0, "refused_busy": 0, "evicted": 0, "timeouts": 0, "forbidden": 0}
        self.configure(options or RpcOptions(), max_body=max_body)

    def configure(self, options: RpcOptions, *, max_body: int | None = None) -> None:
        """Set the limits (before `serve`): RpcOptions, with `max_body` overriding its max_body."""
        if max_body is not None:
            options = dataclasses.replace(options, max_body=max_body)
        if self.calls is not None and self.calls.statistics()["workers"]:
            raise RuntimeError("configure() must come before the server runs")
        self.options = options
        self.max_body = options.max_body
        self.gate = RequestGate(self.host, options.vhosts, options.cors_origins)
        self._slots = trio.Semaphore(options.max_connections)
        chain = self.service.chain
        self.calls = CallWorkers(chain.reader.base_db, chain.chain_id, options.calls)
        methods = eth_methods(self.service, self.client_version, Calls(self.calls, options.call_wait_timeout))
        self.dispatcher = RpcDispatcher(options, self.service.executor)
        for name, fn in {**methods, **self._extra}.items():
            self.dispatcher.register_method(name, fn)

    def register_method(self, name: str, fn: Method) -> None:
        """Add (or replace) a method: `fn` is an async callable taking the raw params."""
        self.dispatcher.register_method(name, fn)
        self._extra[name] = fn

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve forever; `nursery.start(server.serve)` returns the bound port. On the way out
        it stops the call workers (before the caller closes the chain's database)."""
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._evict_while_waiting)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(self.port)
        finally:
            with trio.CancelScope(shield=True):
                if self.calls is not None and not await trio.to_thread.run_sync(self.calls.close):
                    log.warning("event=rpc_calls_still_running")

    def statistics(self) -> dict[str, Any]:
        return {"open": len(self._conns), "waiting": self._waiting, **self.counters,
                "calls": self.calls.statistics() if self.calls is not None else {}}

    # ---- admission

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """trio.serve_listeners, at most max_accept_rate connections a second: a flood of connections
        waits in the kernel's backlog instead of taking the event loop."""
        interval = 1.0 / self.options.max_accept_rate
        burst = max(1.0, self.options.max_accept_rate / 10)
        tokens, last = burst, trio.current_time()
        async with listener:
            while True:
                now = trio.current_time()
                tokens = min(burst, tokens + (now - last) / interval)
                last = now
                if tokens < 1:
                    await trio.sleep((1 - tokens) * interval)
                    continue
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors or memory: as serve_listeners, wait
                    if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                        log.warning("event=rpc_accept_failed error=%s (sleeping 0.1 s)", exc)
                        await trio.sleep(0.1)
                        continue
                    raise
                tokens -= 1
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """Never raises (but Cancelled): an exception here would end serve_listeners, i.e. the server."""
        self.counters["connections"] += 1
        try:
            if not await self._admit(stream):
                return
            conn = _Conn()
            self._conns.add(conn)
            try:
                with conn.scope:
                    await self._serve_admitted(stream, conn)
            finally:
                self._conns.discard(conn)
                self._slots.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception:
            log.exception("JSON-RPC connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _admit(self, stream: trio.abc.Stream) -> bool:
        """Take a connection slot, waiting (FIFO) when all are taken; False after a 503."""
        if self._slots.value == 0:
            if self._waiting >= self.options.max_waiting:
                return await self._busy(stream, f"{self._waiting} connections already waiting")
            self._make_room(self._waiting + 1)
        self._waiting += 1
        try:
            with trio.move_on_after(self.options.wait_timeout):
                await self._slots.acquire()
                return True
        finally:
            self._waiting -= 1
        return await self._busy(stream, f"no connection free within {self.options.wait_timeout:g} s")

    async def _busy(self, stream: trio.abc.Stream, why: str) -> bool:
        self.counters["refused_busy"] += 1
        conn = h11.Connection(h11.SERVER)
        body = json.dumps({"error": f"server busy: {self.options.max_connections} connections in use, {why}; "
                                    f"try again later"}).encode()
        await _try_send_error(conn, stream, 503, body, timeout=1.0, raw=True)
        await _linger(stream, 64 * 1024, seconds=0.2)
        return False

    def _evict(self, count: int) -> int:
        """Close up to `count` connections idle or still sending one request for evict_after seconds,
        the longest such first."""
        cutoff = time.monotonic() - self.options.evict_after
        idle = sorted((c for c in self._conns if c.state != _BUSY and c.since <= cutoff and not c.scope.cancel_called),
                      key=lambda c: c.since)
        for conn in idle[:count]:
            conn.scope.cancel()  # never picked twice: its scope is cancelled
        self.counters["evicted"] += min(count, len(idle))
        return min(count, len(idle))

    def _make_room(self, count: int) -> None:
        """For `count` waiting connections: close idle or slow ones; if that is not enough, ask those that
        have been serving one request for evict_after seconds to close after it. A connection in active
        use (short requests, short pauses) keeps its slot: a client holding its connection is never cut
        off by a flood of new ones."""
        short = count - self._evict(count) - sum(1 for c in self._conns if c.give_up)
        if short <= 0:
            return
        cutoff = time.monotonic() - self.options.evict_after
        slow = sorted((c for c in self._conns if not c.give_up and not c.scope.cancel_called and c.since <= cutoff),
                      key=lambda c: c.since)
        for conn in slow[:short]:
            conn.give_up = True

    async def _evict_while_waiting(self) -> None:
        period = min(0.25, max(0.01, self.options.evict_after / 4))
        while True:
            await trio.sleep(period)
            if self._waiting:
                self._make_room(self._waiting)

    # ---- requests

    async def _serve_admitted(self, stream: trio.abc.Stream, state: _Conn) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while await self._serve_one(conn, stream, state):
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        except trio.TooSlowError:
            self.counters["timeouts"] += 1
            if state.state == _READING:
                await _try_send_error(conn, stream, 408, f"request not received within "
                                                         f"{self.options.request_timeout:g} s", timeout=0.5)
        except h11.RemoteProtocolError as exc:
            await _try_send_error(conn, stream, exc.error_status_hint, f"bad HTTP request: {exc}")
        except Exception:  # a bug in serving ONE connection must not take the server down with it
            log.exception("JSON-RPC connection handler failed")
            await _try_send_error(conn, stream, 500, "internal server error")

    async def _serve_one(self, conn: h11.Connection, stream: trio.abc.Stream, state: _Conn) -> bool:
        """Serve one request; False when the connection should close."""
        opt = self.options
        if not conn.trailing_data[0]:  # nothing of the next request yet: wait for it, idle
            state.enter(_IDLE)
            chunk = b""
            with trio.move_on_after(opt.idle_timeout):
                chunk = await stream.receive_some(_RECEIVE)
            if not chunk:  # idle for too long, or the client closed
                return False
            conn.receive_data(chunk)
        state.enter(_READING)
        cpu = time.thread_time()  # of the loop's thread (other tasks' share included: an overestimate)
        with trio.fail_after(opt.request_timeout):
            event = await _next_event(conn, stream)
            if not isinstance(event, h11.Request):
                return False
            try:
                origin = self._check_request(event)
                if event.method == b"OPTIONS":  # a browser's CORS preflight from an allowed origin
                    await self._send(conn, stream, 204, b"", origin, preflight=True, give_up=state.give_up)
                    return conn.our_state is h11.DONE and conn.their_state is h11.DONE
                body = await self._read_body(conn, stream, event)
            except _Refused as refused:
                await self._send(conn, stream, refused.status, json.dumps({"error": refused.message}).encode())
                await _linger(stream, opt.max_body)
                return False
        state.enter(_BUSY)
        response = await self.dispatcher.handle_body(body)
        await self._send(conn, stream, 200 if response is not None else 204, response or b"", origin,
                         give_up=state.give_up)
        if max(len(body), len(response or b"")) > opt.heavy_bytes or body.lstrip()[:1] == b"[":
            await self.dispatcher.gate.charge(time.thread_time() - cpu)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _check_request(self, request: h11.Request) -> bytes | None:
        """The allowed Origin to echo (None without one); _Refused for a request this server refuses."""
        problem, origin = self.gate.check(request)
        if problem is not None:
            self.counters["forbidden"] += 1
            raise _Refused(403, problem)
        if request.method not in (b"POST", b"OPTIONS"):
            raise _Refused(405, "use POST with a JSON-RPC body")
        return origin

    async def _read_body(self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request) -> bytes:
        too_large = _Refused(413, f"body larger than {self.max_body} bytes")
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                raise too_large
        chunks, size = [], 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise too_large
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise trio.BrokenResourceError("connection closed mid-body")

    async def _send(self, conn: h11.Connection, stream: trio.abc.Stream, status: int, body: bytes,
                    origin: bytes | None = None, *, preflight: bool = False, give_up: bool = False) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if status >= 400 or give_up:
            headers.append(("connection", "close"))
        if origin is not None:
            headers += [("access-control-allow-origin", origin.decode("latin-1")), ("vary", "origin")]
            if preflight:
                headers += [("access-control-allow-methods", "POST, OPTIONS"),
                            ("access-control-allow-headers", "content-type"), ("access-control-max-age", "600")]
        with trio.fail_after(self.options.write_timeout):
            await _send_response(conn, stream, status, headers, body)


async def _linger(stream: trio.abc.Stream, limit: int, seconds: float = 2.0) -> None:
    """Read and drop what the client is still sending, briefly, so that closing with unread data does
    not reset the connection before the client has read our error response (a "lingering close")."""
    drained = 0
    with trio.move_on_after(seconds):
        while drained < 4 * limit:
            try:
                chunk = await stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            drained += len(chunk)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE))
            continue
        return event


async def _send_response(conn: h11.Connection, stream: trio.abc.Stream, status: int,
                         headers: list[tuple[str, str]], body: bytes) -> None:
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if body:
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _try_send_error(conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str | bytes,
                          *, timeout: float = 5.0, raw: bool = False) -> None:
    """Best effort: an error response, then the caller closes. `raw`: `message` is the JSON body already."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = message if raw and isinstance(message, bytes) else json.dumps({"error": str(message)[:300]}).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")]
    try:
        with trio.move_on_after(timeout):
            if raw:  # no request was read: write the response bytes directly
                await stream.send_all(_raw_response(status, headers, body))
            else:
                await _send_response(conn, stream, status, headers, body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass


def _raw_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    reason = {503: b"Service Unavailable"}.get(status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)] + [f"{k}: {v}".encode() for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
