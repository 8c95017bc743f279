"""The service's HTTP guard: one plain ASGI middleware in front of BentoML's app.

It does what must happen before a request reaches an endpoint, and what BentoML's own routes
cannot say:

- write endpoints (`/events`, `/forget`, `/catalog`, `/stock`, `/customers`, `/merge`) need `Authorization: Bearer <SHOPREC_API_KEY>`; with no
  key configured they are refused (403) with a message saying how to enable them; a missing or
  wrong key is a 401;
- request bodies are size-limited (413), read fully and checked to be JSON (400 with the parser's
  message) before BentoML parses them, so a malformed body is never a 5xx;
- `/readyz` keeps BentoML's status code but answers a JSON detail (model versions, online store
  state, last hot-swap error) instead of an empty line;
- POSTs under `own_paths` (the inspection pages' key form, `/ui/`) go on untouched: that app checks
  its own key and reads its own (small, bounded) form;
- given `direct(path, body)`, a JSON POST it answers (bytes) is sent as is, without BentoML's
  dispatch; when it answers None the request goes on to BentoML (serving.service's read endpoints
  use this: the same models and methods, a shorter path).

`AccessLogMiddleware` is the service's lean access log (one line per request, no customer id).

It is ASGI-only (no BentoML import), so it is tested with any ASGI app.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITE_PATHS: frozenset[str] = frozenset({"/events", "/forget", "/catalog", "/stock", "/customers", "/merge"})


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()
) -> None:
    """Send one complete JSON response."""
    await send_raw_json(send, status, json.dumps(body).encode(), headers)


async def send_raw_json(send: Send, status: int, raw: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Send one complete response whose body `raw` is JSON already."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def check_bearer(authorization: str | None, api_key: str | None) -> tuple[int, str] | None:
    """None when `authorization` carries `api_key`; else (status, message). Constant-time compare."""
    if not api_key:
        return 403, "write endpoints are disabled: the server has no SHOPREC_API_KEY configured"
    if not authorization:
        return 401, "missing 'Authorization: Bearer <key>' header (this endpoint needs the API key)"
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401, "the Authorization header must be 'Bearer <key>'"
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return 401, "invalid API key"
    return None


class GuardMiddleware:
    """Auth for write endpoints, body limit + JSON check for POSTs, JSON detail on /readyz.

    `api_key()` and `ready_detail()` are asked per request, so they follow the live service (its
    configuration is read when the service starts, after this middleware was built)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: Callable[[], str | None],
        ready_detail: Callable[[], dict[str, Any]],
        max_body_bytes: int,
        write_paths: frozenset[str] = WRITE_PATHS,
        direct: Callable[[str, bytes], bytes | None] | None = None,
        own_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.own_paths = own_paths
        self.direct = direct
        self.api_key = api_key
        self.ready_detail = ready_detail
        self.max_body_bytes = max_body_bytes
        self.write_paths = write_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if path == "/readyz":
            await self._readyz(scope, receive, send)
            return
        if method != "POST" or path.startswith(self.own_paths):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path in self.write_paths:
            refused = check_bearer(headers.get("authorization"), self.api_key())
            if refused is not None:
                status, message = refused
                extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
                await send_json(send, status, {"error": message}, extra)
                return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json(send, 413, {"error": f"request body over {self.max_body_bytes} bytes"})
            return
        # Read the whole (bounded) body now: a chunked upload without Content-Length is capped too,
        # and a body that is not JSON is answered here with the parser's message, not a 5xx later.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_json(send, 413, {"error": f"request body over {self.max_body_bytes} bytes"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if self.direct is not None and content_type == "application/json":
            answer = self.direct(path, body)
            if answer is not None:
                await send_raw_json(send, 200, answer)
                return
        if content_type in ("application/json", "", "text/plain"):
            try:
                parsed = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError) as e:
                await send_json(send, 400, {"error": f"request body is not valid JSON: {e}"})
                return
            if not isinstance(parsed, dict):
                got = "an empty body" if parsed is None else f"a JSON {type(parsed).__name__}"
                await send_json(send, 400, {"error": f"request body must be a JSON object, got {got}"})
                return
        elif content_type != "application/vnd.bentoml+json":
            await send_json(
                send, 415, {"error": f"unsupported content type {content_type!r}: send application/json"}
            )
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run BentoML's readiness check for its status code; answer our detail with that code."""
        status = 500
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            captured.append(message)

        await self.app(scope, receive, capture)
        try:
            detail = self.ready_detail()
        except Exception as e:  # the probe must answer even when the detail cannot be computed
            detail = {"error": f"{type(e).__name__}: {e}"}
        detail["ready"] = status == 200 and bool(detail.get("ready", True))
        await send_json(send, status if detail["ready"] or status != 200 else 503, detail)


# Paths that carry a customer id (the inspection pages): logged with the id left out.
_PERSONAL_PATHS: tuple[str, ...] = ("/ui/customers/",)


def log_path(path: str) -> str:
    """`path` as the logs may show it: a customer id in it is replaced by `-`."""
    for prefix in _PERSONAL_PATHS:
        if path.startswith(prefix):
            return prefix + "-"
    return path


class AccessLogMiddleware:
    """One line per HTTP request at INFO on `logger`: method, path, status, request and response
    body bytes, latency. Never the query string, headers or body, and a path's customer id is left
    out (`log_path`), so no customer id reaches it.

    It replaces BentoML's access log, which costs far more per request (measured in
    benchmarks/bench_serving.py: shoprec against shoprec-nolog)."""

    def __init__(self, app: ASGIApp, *, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            received = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"0")
            self.logger.info(
                "%s %s %d in=%s out=%d %.1fms",
                scope.get("method", ""),
                log_path(scope.get("path", "")),
                status,
                received.decode("latin-1"),
                sent,
                (time.perf_counter() - start) * 1000,
            )
