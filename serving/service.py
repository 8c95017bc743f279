"""The shoprec HTTP service (BentoML 1.4): a thin layer over `serving.pipeline.Engine`.

    bentoml serve serving.service:ShopRec          # or: shoprec serve --data DIR

Each endpoint validates its typed request (serving/schemas.py), picks the A/B variant for the
user, asks the engine of that variant, and answers `{items, model_version, variant,
recommendation_id}`; every block served is written to the impression log for attribution. Business
rules (filters, fallbacks, reasons, the online store) live in serving.pipeline and are tested
without a server; model loading and the champion hot-swap live in serving.loader; auth, body
limits and the /readyz detail in serving.app. Configuration is the environment (serving.loader).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import Any

import bentoml
from starlette.responses import JSONResponse, Response

from serving.app import AccessLogMiddleware, GuardMiddleware
from serving.loader import ModelHolder, Models, ServeConfig, default_engine_factory, make_source
from serving.schemas import (
    MAX_BODY_BYTES,
    BoughtTogetherRequest,
    EventsRequest,
    EventsResponse,
    ForgetRequest,
    ForgetResponse,
    ItemOut,
    PopularRequest,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
    SimilarItemsRequest,
    UserBlock,
)

logger = logging.getLogger("shoprec.serving")
# The access log: one line per request (method, path, status, sizes, latency), never a body, so no
# customer id. SHOPREC_ACCESS_LOG=0 turns it off (benchmarks). BentoML's own access log stays off:
# it cost ~1 ms per request here (benchmarks/bench_serving.py), this one a few microseconds.
access_logger = logging.getLogger("shoprec.access")

# The one live service instance of this worker process: the guard middleware asks it for the API
# key and the readiness detail (BentoML builds the middleware before it creates the instance).
_LIVE: dict[str, Any] = {}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def _api_key() -> str | None:
    svc = _LIVE.get("service")
    return svc.config.api_key if svc is not None else None


def _direct(path: str, body: bytes) -> bytes | None:
    svc = _LIVE.get("service")
    return svc.answer_direct(path, body) if svc is not None else None


def _ready_detail() -> dict[str, Any]:
    svc = _LIVE.get("service")
    if svc is None:
        return {"ready": False, "error": "service not started"}
    return svc.ready_detail()


class _NoImpressionLog:
    """Stand-in while serving.ab is not installed: impressions are not recorded (said in /readyz)."""

    enabled = False

    def log(self, **_: Any) -> None:
        return None


def _impression_log(path: Any) -> Any:
    if path is None:
        logger.warning("no workspace and no SHOPREC_IMPRESSIONS: impressions are not logged")
        return _NoImpressionLog()
    try:
        from serving.ab import ImpressionLog
    except ImportError:
        logger.warning("serving.ab is missing: impressions are not logged")
        return _NoImpressionLog()
    return ImpressionLog(path)


@functools.cache
def _context_fields(context_cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(context_cls))


class GcStats:
    """Garbage-collector pauses per generation since start (count, total and longest, in ms): the
    first suspect when the tail latency shows stalls. Shown in /readyz."""

    def __init__(self) -> None:
        self._start = 0.0
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        g = info.get("generation", 2)
        ms = (time.perf_counter() - self._start) * 1000
        self.count[g] += 1
        self.total_ms[g] += ms
        self.max_ms[g] = max(self.max_ms[g], ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "count": self.count[g],
                "total_ms": round(self.total_ms[g], 2),
                "max_ms": round(self.max_ms[g], 2),
            }
            for g in range(3)
        } | {"frozen_objects": gc.get_freeze_count()}


def _setup_access_log() -> None:
    """Give the access logger its own plain handler on stdout (where BentoML logs), at INFO.
    Called when the service starts, after BentoML has configured logging in the worker."""
    access_logger.disabled = False
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    if not access_logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            logging.Formatter("%(asctime)s [INFO] [access] %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
        )
        access_logger.addHandler(handler)


def _plain_json_output(model: type) -> type:
    """`model` as a BentoML output spec that sends the response as one JSON body with a
    Content-Length. BentoML's default re-validates the returned model into its own IO class and
    streams the body in chunks (three ASGI messages through every middleware instead of two);
    the JSON is the same (pydantic's model_dump_json), and so is the OpenAPI schema. Falls back
    to `model` itself when BentoML's IO base class is not where 1.4 keeps it."""
    try:
        from _bentoml_sdk.io_models import IOMixin
        from pydantic import create_model
    except ImportError:  # pragma: no cover - another BentoML version
        return model

    class _PlainJSON(IOMixin):
        @classmethod
        async def to_http_response(cls, obj: Any, serde: Any) -> Response:
            if isinstance(obj, model):
                return Response(obj.model_dump_json().encode(), media_type="application/json")
            return await super().to_http_response(obj, serde)

    return create_model(model.__name__, __base__=(_PlainJSON, model), __module__=model.__module__)


RecommendOut = _plain_json_output(RecommendResponse)
RecommendBatchOut = _plain_json_output(RecommendBatchResponse)


def _finite(x: float) -> float:
    # JSON has no infinity; a -inf padding score must never reach a client.
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _items(recs: Any) -> list[ItemOut]:
    """serving.pipeline.Rec records -> response items."""
    return [ItemOut(item_id=str(r.item_id), score=_finite(r.score), reason=str(r.reason)) for r in recs]


def _bad_request(ctx: bentoml.Context, message: str, status: int = 400) -> JSONResponse:
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status)


@bentoml.service(
    name="shoprec",
    # One worker by default: the engine holds the model and item tables in memory, and the swap
    # happens per process. SHOPREC_WORKERS raises it on machines with more cores.
    workers=int(os.environ.get("SHOPREC_WORKERS", "1")),
    traffic={"timeout": 30},
    # BentoML wraps every request in an OpenTelemetry span even with no exporter configured; that
    # costs CPU on every request and adds to the tail at saturation (benchmarks/bench_serving.py).
    # Off unless SHOPREC_TRACING=1 (set it together with BentoML's tracing exporter settings).
    tracing={"excluded_urls": [] if _env_flag("SHOPREC_TRACING", False) else [".*"]},
    # BentoML's access log is off; serving.app.AccessLogMiddleware writes a leaner one (see above).
    logging={"access": {"enabled": False}},
)
class ShopRec:
    """Recommendations for the web shop and the e-mail renderer (CONTRACT.md "HTTP API")."""

    def __init__(
        self, config: ServeConfig | None = None, engine_factory: Callable[..., Any] | None = None
    ) -> None:
        from serving.store import make_store

        self.config = config if config is not None else ServeConfig.from_env()
        self.store = make_store(self.config.redis_url)
        # Customers erased through POST /forget while this process runs: a model swapped in later
        # may have been trained before the erasure, so every new engine is told again.
        self._forgotten: set[str] = set()
        build = engine_factory if engine_factory is not None else default_engine_factory(self.store)

        def factory(path: Any, version: str) -> Any:
            engine = build(path, version)
            for user_id in list(self._forgotten):
                engine.forget(user_id)
            return engine

        # The read endpoints the guard middleware answers directly (answer_direct); SHOPREC_DIRECT=0
        # leaves every request to BentoML's dispatch (the benchmark's comparison).
        self._direct: dict[str, tuple[type, Callable[[Any], RecommendResponse]]] = (
            {
                "/recommend": (RecommendRequest, self.answer_recommend),
                "/bought_together": (BoughtTogetherRequest, self.answer_bought_together),
                "/similar_items": (SimilarItemsRequest, self.answer_similar_items),
                "/popular": (PopularRequest, self.answer_popular),
            }
            if _env_flag("SHOPREC_DIRECT", True)
            else {}
        )
        self.holder = ModelHolder(make_source(self.config), factory, self.config.poll_seconds)
        self.holder.load()
        self.impressions = _impression_log(self._impression_path())
        self.holder.start_polling()
        self.started_at = time.time()
        # Everything loaded so far (model, item tables, imports) lives as long as the process:
        # freezing it keeps the cyclic GC from re-scanning it on every collection, which otherwise
        # shows up as multi-millisecond pauses in the tail latency.
        if _env_flag("SHOPREC_GC_FREEZE", True):
            gc.collect()
            gc.freeze()
        if _env_flag("SHOPREC_ACCESS_LOG", True):
            _setup_access_log()
        self.gc_stats = GcStats()
        gc.callbacks.append(self.gc_stats)
        _LIVE["service"] = self
        models = self.holder.models
        logger.info("shoprec service ready: champion %s", models.champion_version if models else None)

    def _impression_path(self) -> Any:
        if os.environ.get("SHOPREC_IMPRESSIONS"):
            return os.environ["SHOPREC_IMPRESSIONS"]
        if self.config.data is not None:
            from features.workspace import Workspace

            return Workspace.at(self.config.data).serving_dir / "impressions.jsonl"
        return None

    # -- lifecycle and probes ---------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self.holder.models is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        if self.gc_stats in gc.callbacks:
            gc.callbacks.remove(self.gc_stats)
        self.impressions.close() if hasattr(self.impressions, "close") else None
        if _LIVE.get("service") is self:
            _LIVE.pop("service", None)

    def ready_detail(self) -> dict[str, Any]:
        """What /readyz says beside its status: versions, store state, hot-swap bookkeeping."""
        models = self.holder.models
        detail: dict[str, Any] = {
            "ready": models is not None,
            "model_version": models.champion_version if models else None,
            "challenger_version": models.challenger_version if models else None,
            "variants": dict(self.config.shares),
            "store": self.store.health(),
            "swaps": self.holder.swaps,
            "last_error": self.holder.last_error,
            "write_endpoints": "enabled" if self.config.api_key else "disabled (no SHOPREC_API_KEY)",
            "gc": self.gc_stats.as_dict(),
            "impressions": "logged" if getattr(self.impressions, "enabled", True) else "not logged",
        }
        if models is not None:
            try:
                detail["engine"] = models.champion.health()
            except Exception as e:  # the probe reports, it does not fail
                detail["engine"] = {"error": f"{type(e).__name__}: {e}"}
        return detail

    # -- A/B routing ------------------------------------------------------------------------------
    def _variant(self, models: Models, user_id: str | None) -> str:
        """The user's variant: a deterministic hash with the configured shares. Anonymous requests
        and a challenger share without a challenger model go to the champion."""
        if user_id is None or len(self.config.shares) == 1:
            return next(iter(self.config.shares)) if user_id is not None else "champion"
        from serving.ab import assign

        variant = assign(user_id, dict(self.config.shares), self.config.ab_salt)
        if variant == "challenger" and models.challenger is None:
            return "champion"
        return variant

    @staticmethod
    def _engine(models: Models, variant: str) -> tuple[Any, str]:
        if variant == "challenger" and models.challenger is not None:
            return models.challenger, str(models.challenger_version)
        return models.champion, models.champion_version

    def _context(self, rc: RequestContext | None) -> Any:
        """The request's context as serving.pipeline.Context (fields the engine does not know are
        left out rather than failing the request)."""
        from serving.pipeline import Context

        values = (rc or RequestContext()).model_dump(exclude_none=True)
        if "cart" in values:
            values["cart"] = tuple(values["cart"])
        return Context(**{k: v for k, v in values.items() if k in _context_fields(Context)})

    def _respond(
        self, endpoint: str, user_id: str | None, variant: str, version: str, recs: Any
    ) -> RecommendResponse:
        rid = uuid.uuid4().hex
        items = _items(recs)
        try:
            self.impressions.log(
                recommendation_id=rid,
                endpoint=endpoint,
                user_id=user_id,
                variant=variant,
                model_version=version,
                items=[i.item_id for i in items],
            )
        except Exception:  # attribution is best effort; the customer still gets the block
            logger.warning("impression log write failed", exc_info=True)
        return RecommendResponse(items=items, model_version=version, variant=variant, recommendation_id=rid)

    # -- read endpoints ---------------------------------------------------------------------------
    # Each read endpoint is one plain method taking its validated request model (`answer_*`), called
    # by the BentoML endpoint below it and by the direct route (`answer_direct`).
    def _routed(
        self,
        endpoint: str,
        user_id: str | None,
        k: int,
        context: RequestContext,
        personal: Callable[[Any, Any], Any],
    ) -> RecommendResponse:
        """The A/B step of every personal read endpoint: the user's variant picks the engine
        (`personal(engine, context)` answers); the control variant gets the popular block for the
        same context."""
        models = self.holder.models
        variant = self._variant(models, user_id)
        engine, version = self._engine(models, variant)
        cx = self._context(context)
        if variant == "control":
            recs = engine.popular(k, None, context.page_category, cx)
        else:
            recs = personal(engine, cx)
        return self._respond(endpoint, user_id, variant, version, recs)

    def answer_recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Personal recommendations for one customer in a context (page, cart, channel, size)."""
        return self._routed(
            "recommend", req.user_id, req.k, req.context, lambda e, cx: e.recommend(req.user_id, req.k, cx)
        )

    def answer_bought_together(self, req: BoughtTogetherRequest) -> RecommendResponse:
        """Complements of one item or of a whole cart (never the items themselves)."""
        return self._routed(
            "bought_together", req.user_id, req.k, req.context,
            lambda e, cx: e.bought_together(list(req.item_ids), req.k, req.user_id, cx),
        )  # fmt: skip

    def answer_similar_items(self, req: SimilarItemsRequest) -> RecommendResponse:
        """Items like this one (context.max_price: cheaper alternatives)."""
        return self._routed(
            "similar_items", req.user_id, req.k, req.context,
            lambda e, cx: e.similar_items(req.item_id, req.k, req.user_id, cx),
        )  # fmt: skip

    def answer_popular(self, req: PopularRequest) -> RecommendResponse:
        """Popular items, overall or for a customer segment and/or category (non-personal)."""
        models = self.holder.models
        engine, version = models.champion, models.champion_version
        recs = engine.popular(req.k, req.segment, req.category, self._context(req.context))
        return self._respond("popular", None, "champion", version, recs)

    def answer_direct(self, path: str, body: bytes) -> bytes | None:
        """The JSON answer of read endpoint `path` for a JSON request `body`, or None to let
        BentoML's own dispatch answer (an unknown path, a body that fails validation, any error).

        serving.app.GuardMiddleware calls this for the read endpoints before BentoML routes the
        request: the same request model, the same method, the same JSON, minus BentoML's generic
        dispatch (routing, request objects, IO-descriptor conversion, response wrapping), which
        cost more CPU per request than the 100k-item engine (benchmarks/bench_serving.py:
        `shoprec` against `shoprec-bentoml-dispatch`). Everything that fails here is answered by
        BentoML exactly as without this route: its 400s name the field, its 500s are logged."""
        route = self._direct.get(path)
        if route is None:
            return None
        model, answer = route
        try:
            return answer(model.model_validate_json(body)).model_dump_json().encode()
        except Exception:  # BentoML's path answers it, with its own error format and logging
            return None

    # BentoML's endpoints. The single-block ones are `async def`: BentoML then runs them on the event
    # loop instead of handing each request to a worker thread and back. A block costs ~1-2 ms of
    # numpy work, less than the thread hop and the GIL ping-pong it causes under load (measured:
    # benchmarks/bench_serving.py). recommend_batch (up to 500 users) and the write endpoints (Redis
    # I/O) stay in the thread pool so they never hold up the loop.
    @bentoml.api(route="/recommend", input_spec=RecommendRequest, output_spec=RecommendOut)
    async def recommend(
        self, user_id: str, k: int, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendResponse:
        """Personal recommendations for one customer in a context (page, cart, channel, size)."""
        return self.answer_recommend(RecommendRequest.model_construct(user_id=user_id, k=k, context=context))

    @bentoml.api(route="/bought_together", input_spec=BoughtTogetherRequest, output_spec=RecommendOut)
    async def bought_together(
        self, item_ids: list[str], k: int, user_id: str | None, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendResponse:
        """Complements of one item or of a whole cart (never the items themselves)."""
        return self.answer_bought_together(
            BoughtTogetherRequest.model_construct(item_ids=item_ids, k=k, user_id=user_id, context=context)
        )

    @bentoml.api(route="/similar_items", input_spec=SimilarItemsRequest, output_spec=RecommendOut)
    async def similar_items(
        self, item_id: str, k: int, user_id: str | None, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendResponse:
        """Items like this one (context.max_price: cheaper alternatives)."""
        return self.answer_similar_items(
            SimilarItemsRequest.model_construct(item_id=item_id, k=k, user_id=user_id, context=context)
        )

    @bentoml.api(route="/popular", input_spec=PopularRequest, output_spec=RecommendOut)
    async def popular(
        self, k: int, segment: str | None, category: str | None, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendResponse:
        """Popular items, overall or for a customer segment and/or category (non-personal)."""
        return self.answer_popular(
            PopularRequest.model_construct(k=k, segment=segment, category=category, context=context)
        )

    @bentoml.api(route="/recommend_batch", input_spec=RecommendBatchRequest, output_spec=RecommendBatchOut)
    def recommend_batch(
        self, user_ids: list[str], k: int, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendBatchResponse:
        """One block per user, in request order (the e-mail renderer's call)."""
        models = self.holder.models
        cx = self._context(context)
        groups: dict[str, list[int]] = {}
        for i, uid in enumerate(user_ids):
            groups.setdefault(self._variant(models, uid), []).append(i)
        blocks: list[UserBlock | None] = [None] * len(user_ids)
        for variant, rows in groups.items():
            engine, version = self._engine(models, variant)
            if variant == "control":
                shared = engine.popular(k, None, context.page_category if context else None, cx)
                answers = [shared] * len(rows)
            else:
                by_user = engine.recommend_batch([user_ids[i] for i in rows], k, cx)
                answers = [by_user[user_ids[i]] for i in rows]
            for i, recs in zip(rows, answers, strict=True):
                block = self._respond("recommend_batch", user_ids[i], variant, version, recs)
                blocks[i] = UserBlock(user_id=user_ids[i], **block.model_dump())
        return RecommendBatchResponse(results=[b for b in blocks if b is not None])

    # -- write endpoints (the guard middleware checks the API key before these run) ---------------
    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, events: list[Any], ctx: bentoml.Context) -> EventsResponse:
        """Real-time events; a purchase is excluded from the very next answer. Needs the API key."""
        rows = []
        for e in events:
            row = e.model_dump(exclude_none=True, exclude={"order_id", "session_id"})
            if "timestamp" in row:
                ts = row["timestamp"]
                row["timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
            rows.append(row)
        models = self.holder.models
        try:
            accepted = models.champion.record_events(rows)
        except ValueError as e:  # the pipeline's own validation (e.g. an unknown event type)
            return _bad_request(ctx, f"bad event: {e}")
        return EventsResponse(accepted=int(accepted))

    @bentoml.api(route="/forget", input_spec=ForgetRequest, output_spec=ForgetResponse)
    def forget(self, user_id: str, ctx: bentoml.Context) -> ForgetResponse:
        """Erase one customer from the online store (and the running engines). Needs the API key.
        With REDIS_URL the erasure is recorded in Redis, so every replica stops personalising for
        the customer (within a second), a restarted one too. The raw tables and features are
        erased by `shoprec forget --data DIR`."""
        self._forgotten.add(user_id)
        models = self.holder.models
        models.champion.forget(user_id)
        if models.challenger is not None:
            models.challenger.forget(user_id)
        logger.info("forgot one customer on request")  # never the id itself
        return ForgetResponse(forgotten=True)


# Starlette runs the first added middleware outermost: the access log sees every answer, the
# guard's own refusals (401/403/413/400) and its /readyz detail included.
if _env_flag("SHOPREC_ACCESS_LOG", True):
    ShopRec.add_asgi_middleware(AccessLogMiddleware, logger=access_logger)
ShopRec.add_asgi_middleware(
    GuardMiddleware,
    api_key=_api_key,
    ready_detail=_ready_detail,
    max_body_bytes=MAX_BODY_BYTES,
    direct=_direct,
)
