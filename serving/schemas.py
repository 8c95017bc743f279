"""Typed request and response models of the HTTP API (../shared/CONTRACT.md "HTTP API").

Every limit a client can hit lives here, so OpenAPI (`/docs.json`) documents it and pydantic turns
a violation into a 400 that names the field: `k` is capped, every list is capped, ids are bounded
strings, and unknown fields are an error (a typo such as `"userid"` must not silently become an
anonymous request).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Caps. A block on a page or in an e-mail never needs more than 100 items; a cart beyond 100
# lines is a bot. The batch endpoint serves the e-mail renderer, which pages through its users.
K_MAX = 100
K_DEFAULT = 10
MAX_ITEM_IDS = 100
MAX_RERANK_ITEMS = 500  # a search result or a category lister page; every one comes back
MAX_BATCH_USERS = 500
MAX_EVENTS = 1000
MAX_ROWS = 1000  # catalogue, stock or customer rows per write
MAX_ID_LENGTH = 128
# Request bodies above this are refused before they are parsed (serving.app.BodyLimitMiddleware).
# 1000 events of ~300 bytes fit comfortably.
MAX_BODY_BYTES = 1 << 20

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, description="a user or item id")]
K = Annotated[int, Field(ge=1, le=K_MAX, description=f"number of items wanted, 1..{K_MAX}")]


class _Strict(BaseModel):
    """Unknown fields are refused: a misspelt field is the client's bug, and silently ignoring it
    would serve a wrong answer."""

    # hide_input_in_errors: a validation error is logged by BentoML; the offending value may be a
    # customer id, which must never reach the logs.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class RequestContext(_Strict):
    """Where and for whom the block is shown; every field is optional."""

    channel: Literal["web", "email", "app"] | None = Field(None, description="where the block is shown")
    page_category: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="category path of the page, e.g. pets/cats/litter-boxes"
    )
    current_item: Id | None = Field(None, description="the item on the item page")
    cart: list[Id] = Field(default_factory=list, max_length=MAX_ITEM_IDS, description="item ids in the cart")
    size: Annotated[str, Field(max_length=32)] | None = Field(None, description="the customer's size")
    gender: Literal["women", "men", "unisex"] | None = Field(None, description="gender preference")
    max_price: Annotated[float, Field(ge=0)] | None = Field(
        None, description="only items up to this price (cheaper alternatives)"
    )
    cheaper: bool = Field(False, description="similar items: only cheaper than the reference item")
    device: Annotated[str, Field(max_length=32)] | None = Field(None, description="the visit's device")
    city: Annotated[str, Field(max_length=128)] | None = Field(None, description="the visit's city")
    weather: Annotated[str, Field(max_length=32)] | None = Field(None, description="the weather at the visit")


class RecommendRequest(_Strict):
    user_id: Id
    k: K = K_DEFAULT
    context: RequestContext = Field(default_factory=RequestContext)
    explain: bool = Field(False, description="also return the items the rules removed, and which rule")


class BoughtTogetherRequest(_Strict):
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_ITEM_IDS, description="one item or a whole cart")
    k: K = K_DEFAULT
    user_id: Id | None = None
    context: RequestContext = Field(default_factory=RequestContext)


class SimilarItemsRequest(_Strict):
    item_id: Id
    k: K = K_DEFAULT
    user_id: Id | None = None
    context: RequestContext = Field(default_factory=RequestContext)


class PopularRequest(_Strict):
    k: K = K_DEFAULT
    segment: Literal["new", "active", "vip", "at_risk", "lapsed"] | None = None
    category: Annotated[str, Field(max_length=256)] | None = None
    context: RequestContext = Field(default_factory=RequestContext)


class RerankRequest(_Strict):
    """A list the shop chose (search result, category lister) to put in the customer's order."""

    user_id: Id
    item_ids: list[Id] = Field(
        min_length=1,
        max_length=MAX_RERANK_ITEMS,
        description=f"the items to order, 1..{MAX_RERANK_ITEMS}; every one comes back (a repeated id once)",
    )
    context: RequestContext = Field(default_factory=RequestContext)


class RecommendBatchRequest(_Strict):
    user_ids: list[Id] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    k: K = K_DEFAULT
    context: RequestContext = Field(default_factory=RequestContext)


class Event(_Strict):
    """One real-time event, the same columns as the raw `events` table."""

    user_id: Id
    item_id: Id
    event_type: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")] = Field(
        description="view, add_to_cart, remove_from_cart, purchase (other types are kept with weight 0)"
    )
    timestamp: datetime | None = Field(None, description="UTC; default: when the service receives it")
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1
    price: Annotated[float, Field(ge=0)] | None = None
    order_id: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None
    session_id: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None
    size: Annotated[str, Field(max_length=32)] | None = None
    recommendation_id: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="the answer this event came from (a click or purchase on a shown block)"
    )
    device: Annotated[str, Field(max_length=32)] | None = Field(None, description="the visit's device")
    city: Annotated[str, Field(max_length=128)] | None = Field(None, description="the visit's city")
    weather: Annotated[str, Field(max_length=32)] | None = Field(None, description="the weather at the visit")


class EventsRequest(_Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class ForgetRequest(_Strict):
    user_id: Id


class CatalogItem(_Strict):
    """A catalogue row; fields left out keep their values (a price update needs item_id and price)."""

    item_id: Id
    title: Annotated[str, Field(max_length=512)] | None = None
    category: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="a path, e.g. pets/cats/food"
    )
    brand: Annotated[str, Field(max_length=128)] | None = None
    price: Annotated[float, Field(ge=0)] | None = None
    gender: Literal["women", "men", "unisex"] | None = None
    created_at: datetime | None = None
    active: bool | None = Field(None, description="false: the item leaves every answer")


class CatalogRequest(_Strict):
    items: list[CatalogItem] = Field(min_length=1, max_length=MAX_ROWS)


class StockRow(_Strict):
    item_id: Id
    size: Annotated[str, Field(max_length=32)] = Field("", description="empty for unsized items")
    quantity: Annotated[int, Field(ge=0)]


class StockRequest(_Strict):
    stock: list[StockRow] = Field(min_length=1, max_length=MAX_ROWS)


class CustomerRow(_Strict):
    """A customers row; fields left out keep their values."""

    user_id: Id
    birth_year: Annotated[int, Field(ge=1900, le=2100)] | None = None
    gender: Annotated[str, Field(max_length=32)] | None = None
    city: Annotated[str, Field(max_length=128)] | None = None
    signup_date: datetime | None = None
    consent_personalisation: bool | None = None
    consent_email: bool | None = None


class CustomersRequest(_Strict):
    customers: list[CustomerRow] = Field(min_length=1, max_length=MAX_ROWS)


class MergeRequest(_Strict):
    anonymous_id: Id = Field(description="the visitor's id before logging in")
    user_id: Id = Field(description="the customer who logged in")


class WriteResponse(BaseModel):
    accepted: int = Field(description="rows recorded (in the workspace's change log) and applied")


class MergeResponse(BaseModel):
    merged: int = Field(description="events of the anonymous session now in the customer's history")


class SocialProof(BaseModel):
    purchases_7d: int = Field(
        ge=5, description="customers who bought the item in the last 7 days (shown only from 5 on)"
    )


class ItemOut(BaseModel):
    item_id: str
    score: float = Field(description="higher is better; comparable within one block only")
    reason: str = Field(description="why this item is shown, readable by a marketer")
    social_proof: SocialProof | None = Field(
        None, description="present only when at least 5 customers bought the item in the last 7 days"
    )


class RecommendResponse(BaseModel):
    items: list[ItemOut]
    model_version: str = Field(description="registry version (or bundle id) that produced the block")
    variant: Literal["champion", "challenger", "control"]
    recommendation_id: str = Field(description="id of this impression, for click/conversion attribution")


class RemovedOut(BaseModel):
    item_id: str
    rule: str = Field(description="the rule that kept the item out of the block")


class ExplainedResponse(RecommendResponse):
    """A block with `removed`: the items the model ranked highest that the rules kept out."""

    removed: list[RemovedOut]


class UserBlock(RecommendResponse):
    user_id: str


class RecommendBatchResponse(BaseModel):
    results: list[UserBlock] = Field(description="one block per requested user, in request order")


class EventsResponse(BaseModel):
    accepted: int = Field(description="events recorded in the online store")


class ForgetResponse(BaseModel):
    forgotten: bool


def example_requests(user_id: str, item_id: str, other_item_id: str, category: str | None) -> dict[str, dict]:
    """One valid example body per endpoint (for `shoprec demo-curls` and the README), every one of
    which passes its request model."""
    ctx: dict = {"channel": "web"}
    if category:
        ctx["page_category"] = category
    examples: dict[str, dict] = {
        "/recommend": {"user_id": user_id, "k": 5, "context": ctx},
        "/bought_together": {"item_ids": [item_id], "k": 5, "user_id": user_id},
        "/similar_items": {"item_id": item_id, "k": 5, "context": {"max_price": 50.0}},
        "/popular": {"k": 5, **({"category": category} if category else {})},
        "/rerank": {"user_id": user_id, "item_ids": [other_item_id, item_id], "context": ctx},
        "/recommend_batch": {
            "user_ids": [user_id, "a-new-customer"],
            "k": 3,
            "context": {"channel": "email"},
        },
        "/events": {"events": [{"user_id": user_id, "item_id": other_item_id, "event_type": "purchase"}]},
        "/stock": {"stock": [{"item_id": item_id, "quantity": 0}]},
        "/catalog": {"items": [{"item_id": other_item_id, "price": 9.99}]},
        "/customers": {"customers": [{"user_id": user_id, "consent_email": True}]},
        "/forget": {"user_id": "a-customer-to-erase"},
    }
    models = {
        "/recommend": RecommendRequest,
        "/bought_together": BoughtTogetherRequest,
        "/similar_items": SimilarItemsRequest,
        "/popular": PopularRequest,
        "/rerank": RerankRequest,
        "/recommend_batch": RecommendBatchRequest,
        "/events": EventsRequest,
        "/stock": StockRequest,
        "/catalog": CatalogRequest,
        "/customers": CustomersRequest,
        "/forget": ForgetRequest,
    }
    for route, body in examples.items():
        models[route].model_validate(body)  # an example that does not validate is a bug here
    return examples
