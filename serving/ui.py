"""The inspection pages (`GET /ui`): server-side HTML for marketers and data scientists, no build step
and no JavaScript.

    /ui                      search a customer or an item; example customers; links
    /ui/customers/{user_id}  profile, segment, consent, history timeline, the block per channel (web,
                             e-mail) with scores and reasons, the items the rules removed and why
    /ui/items/{item_id}      details, stock per size, bought-together and similar items
    /ui/models               champion and challenger with their offline metrics per segment
    /ui/ab                   the A/B report of `shoprec ab report`, with its plot

A Starlette app that the service mounts at `/ui` (serving/service.py). What a page shows comes from
serving.views (plain data, the same engine and rules as the JSON API); this module only checks the
key, renders the templates in serving/templates/ and answers.

The key: the service's `SHOPREC_API_KEY`, sent as `Authorization: Bearer <key>` (as the write
endpoints take it) or entered once on the page, which then keeps a cookie holding an HMAC of the key
(never the key itself; HttpOnly, SameSite=Strict, path /ui). No key configured: every page is
refused (403), as the write endpoints are; a missing or wrong key is a 401 with the form to enter it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from serving import views
from serving.app import check_bearer

log = logging.getLogger("shoprec.ui")

COOKIE = "shoprec_ui"
MAX_FORM_BYTES = 4096
PAGE_K = 10
SECURITY_HEADERS = {
    # No script, no outside resource: styles are inline, the A/B plot is a data: image.
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",  # customer data: never kept by a browser or proxy
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):  # an interval, e.g. [low, high]
        return "[" + ", ".join(_num(x, digits) for x in value) + "]"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)  # a year stays 1990
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return _num(int(value))
        return f"{value:,.{digits}f}"
    return str(value)


def _when(value: Any, digits: int = 2) -> str:
    """A profile or detail value: a date as a date, a number rounded for reading."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return _num(value, digits)


_templates.filters["num"] = _num
_templates.filters["when"] = _when
_templates.filters["q"] = lambda s: quote(str(s), safe="")


def session_token(api_key: str) -> str:
    """The cookie's value: an HMAC of the key, so the browser never holds the key itself and a
    changed key logs every browser out."""
    return hmac.new(api_key.encode(), b"shoprec-ui-session", hashlib.sha256).hexdigest()


def authorised(request: Request, api_key: str | None) -> tuple[int, str] | None:
    """None when the request carries the key (Bearer header or the page's cookie); else (status,
    message): 403 when the service has no key, 401 when it is missing or wrong."""
    if not api_key:
        return 403, "the pages are disabled: the server has no SHOPREC_API_KEY configured"
    header = request.headers.get("authorization")
    if header:
        return check_bearer(header, api_key)
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return 401, "enter the API key to open the pages"
    if not hmac.compare_digest(cookie.encode(), session_token(api_key).encode()):
        return 401, "the key this browser entered is no longer the server's: enter it again"
    return None


def make_app(service: Callable[[], Any]) -> Starlette:
    """The pages as an ASGI app to mount at /ui. `service()` is the live serving.service.ShopRec of
    this worker (None while it starts): its models, router, shop state, workspace and key."""

    def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        svc = service()
        models = svc.holder.models if svc is not None else None
        html = _templates.get_template(template).render(
            root=_root(request),
            champion=models.champion_version if models is not None else None,
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def guarded(handler: Callable[[Request, Any], Response]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            svc = service()
            if svc is None or svc.holder.models is None:
                return page(request, "message.html", 503, title="Starting", message="the service is starting")
            refused = authorised(request, svc.config.api_key)
            if refused is not None:
                status, message = refused
                response = page(
                    request, "login.html", status, title="API key", message=message,
                    can_login=status == 401, next=str(request.url.path),
                )  # fmt: skip
                if status == 401:
                    response.headers["www-authenticate"] = "Bearer"
                return response
            start = time.perf_counter()
            try:
                return handler(request, svc)
            except Exception:  # a page never answers a bare 500; the log keeps the traceback
                log.exception("inspection page %s failed", _log_path(request.url.path))
                return page(
                    request, "message.html", 500, title="Error",
                    message="this page failed; the service log has the details",
                )  # fmt: skip
            finally:
                log.debug(
                    "page %s in %.1f ms", _log_path(request.url.path), (time.perf_counter() - start) * 1000
                )

        return endpoint

    def index(request: Request, svc: Any) -> Response:
        models = svc.holder.models
        state = models.champion.state
        return page(
            request, "index.html", title="shoprec", examples=_example_customers(state),
            items=_top_items(state), workspace=str(svc.ws.root) if svc.ws is not None else None,
        )  # fmt: skip

    def find(request: Request, svc: Any) -> Response:
        q = request.query_params
        root = _root(request)
        if q.get("customer", "").strip():
            return RedirectResponse(f"{root}/customers/{quote(q['customer'].strip(), safe='')}", 303)
        if q.get("item", "").strip():
            return RedirectResponse(f"{root}/items/{quote(q['item'].strip(), safe='')}", 303)
        return RedirectResponse(f"{root}", 303)

    def customer(request: Request, svc: Any) -> Response:
        from serving.schemas import RequestContext

        user_id = request.path_params["user_id"]
        contexts = {c: svc.context(RequestContext(channel=c)) for c in views.CHANNELS}
        view = views.customer_view(svc.router, svc.holder.models, svc.ws, user_id, contexts, k=PAGE_K)
        if view is None:
            return page(request, "unknown.html", 404, title="Unknown customer", kind="customer", id=user_id)
        return page(request, "customer.html", title=f"Customer {user_id}", c=view)

    def item(request: Request, svc: Any) -> Response:
        from serving.schemas import RequestContext

        item_id = request.path_params["item_id"]
        view = views.item_view(svc.holder.models, item_id, svc.context(RequestContext()), k=PAGE_K)
        if view is None:
            return page(request, "unknown.html", 404, title="Unknown item", kind="item", id=item_id)
        return page(request, "item.html", title=f"Item {item_id}", it=view)

    def registry(request: Request, svc: Any) -> Response:
        from training.evaluate import NEW_USER_MAX_ITEMS

        view = views.registry_view(svc.config.registry_uri, svc.config.model_name, svc.holder.models)
        return page(
            request,
            "models.html",
            title="Models",
            r=view,
            headline=views.HEADLINE,
            new_max=NEW_USER_MAX_ITEMS,
        )

    def ab(request: Request, svc: Any) -> Response:
        view = views.ab_view(svc.ws)
        facts, tables = views.report_tables(view.report) if view.report is not None else ({}, {})
        return page(request, "ab.html", title="A/B report", ab=view, facts=facts, tables=tables)

    def not_found(request: Request, svc: Any) -> Response:
        return page(request, "message.html", 404, title="Not found", message="no such page")

    async def login(request: Request) -> Response:
        svc = service()
        if svc is None:
            return page(request, "message.html", 503, title="Starting", message="the service is starting")
        api_key = svc.config.api_key
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return page(request, "message.html", 413, title="Too large", message="form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        target = form.get("next", "")
        root = _root(request)
        if not target.startswith(root + "/") and target != root:
            target = root  # only a page of /ui: never a redirect elsewhere
        if not api_key:
            return page(request, "login.html", 403, title="API key", can_login=False, next=target,
                        message="the pages are disabled: the server has no SHOPREC_API_KEY configured")  # fmt: skip
        if not hmac.compare_digest(form.get("key", "").strip().encode(), api_key.encode()):
            return page(request, "login.html", 401, title="API key", can_login=True, next=target,
                        message="that is not the server's API key")  # fmt: skip
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE, session_token(api_key), path=root, httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    def logout(request: Request) -> Response:
        response = RedirectResponse(_root(request), 303)
        response.delete_cookie(COOKIE, path=_root(request))
        return response

    routes = [
        Route("/", guarded(index)),
        Route("/find", guarded(find)),
        Route("/customers/{user_id:path}", guarded(customer)),
        Route("/items/{item_id:path}", guarded(item)),
        Route("/models", guarded(registry)),
        Route("/ab", guarded(ab)),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout),
        Route("/{rest:path}", guarded(not_found)),
    ]
    return Starlette(routes=routes)


def _root(request: Request) -> str:
    """Where the app is mounted (`/ui`), for links that work behind any prefix."""
    return str(request.scope.get("root_path", "")).rstrip("/") or "/ui"


def _log_path(path: str) -> str:
    from serving.app import log_path

    return log_path(path)


def _example_customers(state: Any, per_segment: int = 2, scan: int = 50_000) -> list[dict[str, Any]]:
    """A few customers to click on: the first two of each segment with a history, and one without
    consent, from the first `scan` customers (a shop may have millions; no sort, no copy)."""
    out: list[dict[str, Any]] = []
    seen: dict[str | None, int] = {}
    no_consent: dict[str, Any] | None = None
    for uid, c in itertools.islice(state.customers.items(), scan):
        if c.row < 0:
            continue
        if not c.consent:
            no_consent = no_consent or {"user_id": uid, "segment": c.segment, "consent": False}
        elif seen.get(c.segment, 0) < per_segment:
            seen[c.segment] = seen.get(c.segment, 0) + 1
            out.append({"user_id": uid, "segment": c.segment, "consent": True})
    return out + ([no_consent] if no_consent is not None else [])


def _top_items(state: Any, n: int = 8) -> list[dict[str, Any]]:
    import numpy as np

    snap = state.current
    cat = snap.catalog
    order = np.argsort(-np.asarray(snap.popularity), kind="stable")[:n]
    return [{"item_id": str(cat.item_ids[i]), "title": str(cat.titles[i])} for i in order.tolist()]
