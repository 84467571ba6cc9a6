"""HTTP JSON-RPC 2.0 server (trio + h11) for the standard Ethereum methods, extensible with more.

    server = RpcServer(service)                  # service: consensus.service.ChainService
    server.register_method("swarm_foo", fn)      # fn: async (params) -> JSON-able result
    port = await nursery.start(server.serve)     # binds 127.0.0.1, port 0 = any free port

Methods that read or change the chain run in the chain's single worker thread (service.run).
Hostile input never takes the server down: bodies are size-capped (413), slow clients time out, bad
JSON gives -32700, a bad request -32600, an unknown method -32601, bad params -32602, a rejected
transaction -32000 with the pool's reason, a reverted call 3 with the revert data, anything
unexpected -32603 (logged, connection kept).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from consensus.rpc_eth import eth_methods
from consensus.rpc_format import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
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
MAX_CONNECTIONS = 64
READ_TIMEOUT = 30.0

Method = Callable[[Any], Awaitable[Any]]


def json_too_deep(body: bytes, limit: int = 0) -> bool:
    """True if arrays/objects nest deeper than MAX_JSON_DEPTH. py-evm raises the recursion limit to 100000,
    so the C JSON parser would overflow the stack (a segfault, not an exception) on [[[[...]]]]."""
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


class RpcDispatcher:
    """Maps method names to async handlers and turns request bodies into response bodies."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register_method(self, name: str, fn: Method) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"bad method name {name!r}")
        self._methods[name] = fn

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(sorted(self._methods))

    async def handle_body(self, body: bytes) -> bytes | None:
        """The response body for a request body (None for a batch of notifications only)."""
        if json_too_deep(body):
            return _encode(_error_response(None, RpcError(PARSE_ERROR, f"JSON nested deeper than {MAX_JSON_DEPTH}")))
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...]]]] bombs
            return _encode(_error_response(None, RpcError(PARSE_ERROR, f"parse error: {str(exc)[:200]}")))
        if isinstance(request, list):
            return await self._handle_batch(request)
        response = await self.handle_one(request)
        return _encode(response) if response is not None else None

    async def _handle_batch(self, requests: list[Any]) -> bytes | None:
        if not requests:
            return _encode(_error_response(None, RpcError(INVALID_REQUEST, "empty batch")))
        if len(requests) > MAX_BATCH:
            return _encode(_error_response(None, RpcError(INVALID_REQUEST, f"batch larger than {MAX_BATCH}")))
        responses = [r for r in [await self.handle_one(q) for q in requests] if r is not None]
        return _encode(responses) if responses else None

    async def handle_one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            return _error_response(None, RpcError(INVALID_REQUEST, "invalid request: need jsonrpc '2.0' and a method"))
        req_id = request.get("id")
        if req_id is not None and not isinstance(req_id, (str, int, float)):
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
            log.exception("JSON-RPC method %s failed", method)
            raise RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}") from exc


def _error_response(req_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": error.to_json()}


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _BodyTooLarge(Exception):
    pass


class RpcServer:
    """JSON-RPC over HTTP/1.1 (keep-alive, POST only) on 127.0.0.1 unless told otherwise."""

    def __init__(self, service: ChainService, *, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = MAX_BODY, client_version: str = "swarmnode/0.1.0") -> None:
        self.host, self.port, self.max_body = host, port, max_body
        self.dispatcher = RpcDispatcher()
        self._connections = trio.CapacityLimiter(MAX_CONNECTIONS)
        for name, fn in eth_methods(service, client_version).items():
            self.dispatcher.register_method(name, fn)

    def register_method(self, name: str, fn: Method) -> None:
        """Add (or replace) a method: `fn` is an async callable taking the raw params."""
        self.dispatcher.register_method(name, fn)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve forever; `nursery.start(server.serve)` returns the bound port."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        async with self._connections:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
            try:
                while await self._serve_one(conn, stream):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.LocalProtocolError):
                pass
            except h11.RemoteProtocolError as exc:
                await _try_send_error(conn, stream, exc.error_status_hint, f"bad HTTP request: {exc}")
            except Exception:  # a bug in serving ONE connection must not take the server down with it
                log.exception("JSON-RPC connection handler failed")
                await _try_send_error(conn, stream, 500, "internal server error")
            finally:
                await trio.aclose_forcefully(stream)

    async def _serve_one(self, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        """Serve one request; False when the connection should close."""
        with trio.fail_after(READ_TIMEOUT):
            event = await _next_event(conn, stream)
            if not isinstance(event, h11.Request):
                return False
            if event.method != b"POST":
                await _send(conn, stream, 405, b'{"error":"use POST with a JSON-RPC body"}')
                return False
            try:
                body = await self._read_body(conn, stream, event)
            except _BodyTooLarge:
                await _send(conn, stream, 413, f'{{"error":"body larger than {self.max_body} bytes"}}'.encode())
                await _linger(stream)
                return False
        response = await self.dispatcher.handle_body(body)
        await _send(conn, stream, 200 if response is not None else 204, response or b"")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_body(self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request) -> bytes:
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                raise _BodyTooLarge
        chunks, size = [], 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise trio.BrokenResourceError("connection closed mid-body")


async def _linger(stream: trio.abc.Stream, limit: int = 4 * MAX_BODY, seconds: float = 2.0) -> None:
    """Read and drop what the client is still sending, briefly, so that closing with unread data does
    not reset the connection before the client has read our error response (a "lingering close")."""
    drained = 0
    with trio.move_on_after(seconds):
        while drained < limit:
            chunk = await stream.receive_some(64 * 1024)
            if not chunk:
                return
            drained += len(chunk)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(64 * 1024))
            continue
        return event


async def _send(conn: h11.Connection, stream: trio.abc.Stream, status: int, body: bytes) -> None:
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if status >= 400:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if body:
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _try_send_error(conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = json.dumps({"error": message[:200]}).encode()
    try:
        with trio.move_on_after(5):
            await _send(conn, stream, status, body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
