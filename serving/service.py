"""The shoprec HTTP service (BentoML 1.4): a thin layer over `serving.pipeline.Engine`.

    bentoml serve serving.service:ShopRec          # or: shoprec serve --data DIR

Each read endpoint validates its typed request (serving/schemas.py) and answers through the router
(serving/router.py: the A/B variant, the engine of that variant, the impression log) with
`{items, model_version, variant, recommendation_id}`. The write endpoints record what the shop tells
them in the workspace's change log and apply it to the live shop state (serving/sync.py: every
worker and replica within a second). Business rules live in serving.pipeline and serving.rules and
are tested without a server; the shop state in serving.state; model loading and the champion
hot-swap in serving.loader; auth, body limits and the /readyz detail in serving.app; the inspection
pages (`GET /ui`) in serving.ui.
Configuration is the environment (serving.loader.ServeConfig).
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
from collections.abc import Callable
from datetime import UTC
from typing import Any

import bentoml
from starlette.responses import JSONResponse, Response

from serving.app import AccessLogMiddleware, GuardMiddleware
from serving.loader import ModelHolder, ServeConfig, default_engine_factory, load_state, make_source
from serving.router import Answer, Router
from serving.schemas import (
    MAX_BODY_BYTES,
    BoughtTogetherRequest,
    CatalogRequest,
    CustomersRequest,
    EventsRequest,
    EventsResponse,
    ExplainedResponse,
    ForgetRequest,
    ForgetResponse,
    ItemOut,
    MergeRequest,
    MergeResponse,
    PopularRequest,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    RecommendResponse,
    RemovedOut,
    RequestContext,
    RerankRequest,
    SimilarItemsRequest,
    StockRequest,
    UserBlock,
    WriteResponse,
)
from serving.ui import make_app as make_ui_app

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


def _impression_log(path: Any, salt: str) -> Any:
    if path is None:
        logger.warning("no workspace and no SHOPREC_IMPRESSIONS: impressions are not logged")
        return _NoImpressionLog()
    try:
        from serving.ab import ImpressionLog
    except ImportError:
        logger.warning("serving.ab is missing: impressions are not logged")
        return _NoImpressionLog()
    return ImpressionLog(path, salt=salt)


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
                # exclude_none: an item without social proof has no `social_proof` key at all
                return Response(
                    obj.model_dump_json(exclude_none=True).encode(), media_type="application/json"
                )
            return await super().to_http_response(obj, serde)

    return create_model(model.__name__, __base__=(_PlainJSON, model), __module__=model.__module__)


RecommendOut = _plain_json_output(RecommendResponse)
RecommendBatchOut = _plain_json_output(RecommendBatchResponse)


def _finite(x: float) -> float:
    # JSON has no infinity; a -inf padding score must never reach a client.
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _items(recs: Any, counts: Any = None) -> list[ItemOut]:
    """serving.pipeline.Rec records -> response items, with social proof from `counts` (a
    serving.social.PurchaseCounts) where an item has enough purchases in the last 7 days."""
    if counts is None:
        return [ItemOut(item_id=str(r.item_id), score=_finite(r.score), reason=str(r.reason)) for r in recs]
    counts.expire()
    proof = counts.social_proof
    return [
        ItemOut(
            item_id=str(r.item_id),
            score=_finite(r.score),
            reason=str(r.reason),
            social_proof=proof(r.item_id),
        )
        for r in recs
    ]


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
        from serving.sync import StateSync

        self.config = config if config is not None else ServeConfig.from_env()
        self.store = make_store(self.config.redis_url, prefix=self.config.redis_prefix)
        self.ws = self._workspace()
        self.state = load_state(self.config)
        if self.ws is not None:  # `shoprec forget` in any process reaches this one (one stat per check)
            from features.privacy import ForgetList

            self.state.watch_erasures(ForgetList(self.ws).__contains__)
        self.sync = StateSync(
            self.state, self.store, self.ws, redis_url=self.config.redis_url, prefix=self.config.redis_prefix
        )
        build = (
            engine_factory if engine_factory is not None else default_engine_factory(self.state, self.store)
        )

        def factory(path: Any, version: str) -> Any:
            engine = build(path, version)
            for user_id in list(self.state.forgotten):  # erased while this process runs
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
                "/rerank": (RerankRequest, self.answer_rerank),
            }
            if _env_flag("SHOPREC_DIRECT", True)
            else {}
        )
        self.holder = ModelHolder(make_source(self.config), factory, self.config.poll_seconds)
        self.holder.load()
        self.impressions = _impression_log(self._impression_path(), self.config.ab_salt)
        self.router = Router(
            lambda: self.holder.models, self.config.shares, self.config.ab_salt, self.impressions
        )
        self.holder.start_polling()
        self.sync.start()
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

    def _workspace(self) -> Any:
        if self.config.data is None:
            return None
        from features.workspace import Workspace

        return Workspace.at(self.config.data)

    def _impression_path(self) -> Any:
        if os.environ.get("SHOPREC_IMPRESSIONS"):
            return os.environ["SHOPREC_IMPRESSIONS"]
        if self.ws is not None:
            return self.ws.serving_dir / "impressions.jsonl"
        return None

    # -- lifecycle and probes ---------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self.holder.models is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Graceful stop (SIGTERM to `shoprec serve`): the requests in flight have been answered;
        stop following the change log and the registry, write out the buffered impressions."""
        self.sync.stop()
        self.holder.stop()
        if self.gc_stats in gc.callbacks:
            gc.callbacks.remove(self.gc_stats)
        self.impressions.close() if hasattr(self.impressions, "close") else None
        if _LIVE.get("service") is self:
            _LIVE.pop("service", None)

    def ready_detail(self) -> dict[str, Any]:
        """What /readyz says beside its status: versions, shop state, store, hot-swap bookkeeping."""
        models = self.holder.models
        detail: dict[str, Any] = {
            "ready": models is not None,
            "model_version": models.champion_version if models else None,
            "challenger_version": models.challenger_version if models else None,
            "variants": dict(self.config.shares),
            "store": self.store.health(),
            "shop_state": {"source": self.state.source, **self.sync.health()},
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

    def context(self, rc: RequestContext | None) -> Any:
        """The request's context as serving.pipeline.Context."""
        from serving.pipeline import Context

        values = (rc or RequestContext()).model_dump(exclude_none=True)
        if "cart" in values:
            values["cart"] = tuple(values["cart"])
        return Context(**{k: v for k, v in values.items() if k in _context_fields(Context)})

    def _response(self, answer: Answer) -> RecommendResponse:
        return RecommendResponse(
            items=_items(answer.items, self.state.purchases_7d),
            model_version=answer.model_version,
            variant=answer.variant,
            recommendation_id=answer.recommendation_id,
        )

    # -- read endpoints ---------------------------------------------------------------------------
    # Each read endpoint is one plain method taking its validated request model (`answer_*`), called
    # by the BentoML endpoint below it and by the direct route (`answer_direct`).
    def answer_recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Personal recommendations for one customer in a context (page, cart, channel, size);
        with `explain`, also the items the rules removed and which rule removed each."""
        cx = self.context(req.context)
        models = self.holder.models
        answer = self.router.block(
            "recommend", req.user_id, req.k, cx, lambda e: e.recommend(req.user_id, req.k, cx), models=models
        )
        if not req.explain:
            return self._response(answer)
        from serving.explain import removed_items

        engine, _ = self.router.engine(models, answer.variant)
        removed = removed_items(engine, req.user_id, req.k, cx, answer.items)
        return ExplainedResponse(
            **self._response(answer).model_dump(),
            removed=[RemovedOut(item_id=r.item_id, rule=r.rule) for r in removed],
        )

    def answer_bought_together(self, req: BoughtTogetherRequest) -> RecommendResponse:
        """Complements of one item or of a whole cart (never the items themselves)."""
        cx = self.context(req.context)
        return self._response(
            self.router.block(
                "bought_together", req.user_id, req.k, cx,
                lambda e: e.bought_together(list(req.item_ids), req.k, req.user_id, cx),
            )
        )  # fmt: skip

    def answer_similar_items(self, req: SimilarItemsRequest) -> RecommendResponse:
        """Items like this one (context.max_price: cheaper alternatives)."""
        cx = self.context(req.context)
        return self._response(
            self.router.block(
                "similar_items",
                req.user_id,
                req.k,
                cx,
                lambda e: e.similar_items(req.item_id, req.k, req.user_id, cx),
            )
        )

    def answer_popular(self, req: PopularRequest) -> RecommendResponse:
        """Popular items, overall or for a customer segment and/or category (non-personal)."""
        models = self.holder.models
        recs = models.champion.popular(req.k, req.segment, req.category, self.context(req.context))
        return self._response(self.router.record("popular", None, "champion", models.champion_version, recs))

    def answer_rerank(self, req: RerankRequest) -> RecommendResponse:
        """The given items (a search result, a category lister) in the customer's order, every one
        kept (serving/rerank.py); the control variant gets the non-personal order."""
        from serving.ab import CONTROL

        cx = self.context(req.context)
        models = self.holder.models
        variant = self.router.variant(models, req.user_id)
        engine, version = self.router.engine(models, variant)
        recs = engine.rerank(None if variant == CONTROL else req.user_id, list(req.item_ids), cx)
        return self._response(self.router.record("rerank", req.user_id, variant, version, recs))

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
            return answer(model.model_validate_json(body)).model_dump_json(exclude_none=True).encode()
        except Exception:  # BentoML's path answers it, with its own error format and logging
            return None

    # BentoML's endpoints. The single-block ones are `async def`: BentoML then runs them on the event
    # loop instead of handing each request to a worker thread and back. A block costs ~1-2 ms of
    # numpy work, less than the thread hop and the GIL ping-pong it causes under load (measured:
    # benchmarks/bench_serving.py). recommend_batch (up to 500 users) and the write endpoints (disk
    # and Redis I/O) stay in the thread pool so they never hold up the loop.
    @bentoml.api(route="/recommend", input_spec=RecommendRequest, output_spec=RecommendOut)
    async def recommend(
        self, user_id: str, k: int, context: RequestContext, ctx: bentoml.Context, explain: bool = False
    ) -> RecommendResponse:
        """Personal recommendations for one customer in a context (page, cart, channel, size)."""
        return self.answer_recommend(
            RecommendRequest.model_construct(user_id=user_id, k=k, context=context, explain=explain)
        )

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

    @bentoml.api(route="/rerank", input_spec=RerankRequest, output_spec=RecommendOut)
    async def rerank(
        self, user_id: str, item_ids: list[str], context: RequestContext, ctx: bentoml.Context
    ) -> RecommendResponse:
        """The given items (a search result, a category lister) in the customer's order: their
        brands and sizes first, what the rules would remove last (the reason says which rule)."""
        return self.answer_rerank(
            RerankRequest.model_construct(user_id=user_id, item_ids=item_ids, context=context)
        )

    @bentoml.api(route="/recommend_batch", input_spec=RecommendBatchRequest, output_spec=RecommendBatchOut)
    def recommend_batch(
        self, user_ids: list[str], k: int, context: RequestContext, ctx: bentoml.Context
    ) -> RecommendBatchResponse:
        """One block per user, in request order (the e-mail renderer's call): the same engine, rules
        and variants as /recommend and the `shoprec recommend` feed."""
        answers = self.router.batch(list(user_ids), k, self.context(context))
        return RecommendBatchResponse(
            results=[UserBlock(user_id=a.user_id, **self._response(a).model_dump()) for a in answers]
        )

    # -- write endpoints (the guard middleware checks the API key before these run) ---------------
    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, events: list[Any], ctx: bentoml.Context) -> EventsResponse:
        """Real-time events: a purchase is excluded from the very next answer, views re-rank it;
        kept in the workspace's change log for the next training. Needs the API key."""
        from serving.store import parse_event

        rows = []
        for n, e in enumerate(events):
            row = e.model_dump(exclude_none=True)
            ts = row.get("timestamp")
            row["timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)) if ts is not None else _now()
            try:  # the online store's own check (event type, ids), with the event's position
                parse_event(
                    {k: v for k, v in row.items() if k in ("user_id", "item_id", "event_type", "size")}
                )
            except ValueError as err:
                return _bad_request(ctx, f"bad event: event {n}: {err}")
            if not self.state.is_forgotten(str(row["user_id"])):
                rows.append(row)
        return EventsResponse(accepted=self.sync.write("events", rows))

    @bentoml.api(route="/catalog", input_spec=CatalogRequest, output_spec=WriteResponse)
    def catalog(self, items: list[Any], ctx: bentoml.Context) -> WriteResponse:
        """Catalogue rows (new items, prices, titles, `active: false` to take an item out of every
        answer), in effect on every worker and replica within a second. Needs the API key."""
        return self._write(ctx, "catalog", [r.model_dump(exclude_none=True) for r in items])

    @bentoml.api(route="/stock", input_spec=StockRequest, output_spec=WriteResponse)
    def stock(self, stock: list[Any], ctx: bentoml.Context) -> WriteResponse:
        """Stock per item and size (quantity 0: sold out), in effect within a second. Needs the key."""
        return self._write(ctx, "stock", [r.model_dump() for r in stock])

    @bentoml.api(route="/customers", input_spec=CustomersRequest, output_spec=WriteResponse)
    def customers(self, customers: list[Any], ctx: bentoml.Context) -> WriteResponse:
        """Customer rows (consent given or withdrawn, profile), in effect within a second. Needs the
        API key."""
        return self._write(ctx, "customers", [r.model_dump(exclude_none=True) for r in customers])

    def _write(self, ctx: bentoml.Context, table: str, rows: list[dict[str, Any]]) -> Any:
        try:
            return WriteResponse(accepted=self.sync.write(table, rows))
        except ValueError as e:
            return _bad_request(ctx, f"bad {table} row: {e}")

    @bentoml.api(route="/merge", input_spec=MergeRequest, output_spec=MergeResponse)
    def merge(self, anonymous_id: str, user_id: str, ctx: bentoml.Context) -> MergeResponse:
        """A visitor who logs in: their anonymous session's events become the customer's (in the
        online store now, in the change log for the next training). Needs the API key."""
        session = self.store.recent(anonymous_id, 1000)
        if self.state.is_forgotten(user_id) or not session:
            return MergeResponse(merged=0)
        rows = [
            {"user_id": user_id, "item_id": e.item_id, "event_type": e.event_type,
             "timestamp": _dt(e.timestamp), **({"size": e.size} if e.size else {})}
            for e in reversed(session)
        ]  # fmt: skip
        merged = self.sync.write("events", rows)
        self.store.clear(anonymous_id)
        return MergeResponse(merged=merged)

    @bentoml.api(route="/forget", input_spec=ForgetRequest, output_spec=ForgetResponse)
    def forget(self, user_id: str, ctx: bentoml.Context) -> ForgetResponse:
        """Erase one customer: the online store, the shop state and the served models' user rows at
        once (every replica through Redis or the workspace's forget log), and the workspace's
        tables, change log and registered bundles (features.privacy). Needs the API key."""
        models = self.holder.models
        for engine in (models.champion, models.challenger):
            if engine is not None:
                engine.forget(user_id)
        if self.ws is not None:
            from training.forget import forget_customer

            forget_customer(self.ws, user_id)
        path = self._impression_path()
        if path is not None:
            from serving.ab import forget_impressions

            self.impressions.flush() if hasattr(self.impressions, "flush") else None
            forget_impressions(path, user_id, self.config.ab_salt)
        logger.info("forgot one customer on request")  # never the id itself
        return ForgetResponse(forgotten=True)


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC)


def _dt(epoch: float) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(epoch, tz=UTC)


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
    own_paths=("/ui/",),
)
# The inspection pages (serving/ui.py): HTML for people, behind the same API key.
ShopRec.mount_asgi_app(make_ui_app(lambda: _LIVE.get("service")), path="/ui", name="ui")
