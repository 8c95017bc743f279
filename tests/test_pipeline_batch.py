"""recommend_batch scores many users of a factor model with one matrix product (a prefix of the
longest item factors), yet answers exactly as `recommend` per user: same items, order, score bits
and reasons. On a real ALS bundle of the synthetic shop, with the length pruning on."""

from __future__ import annotations

import pytest

from serving import pipeline
from serving.mips import NormOrdered
from serving.pipeline import Context, Engine, EngineConfig
from tests.test_pipeline import NOW


@pytest.mark.slow
@pytest.mark.parametrize(("block", "caps"), [(256, 3), (256, 1), (512, 3)])
def test_recommend_batch_equals_recommend_per_user(
    als_shop,
    block: int,
    caps: int,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001 - conftest.Shop
) -> None:
    """block 256: the batch product covers the 1024 longest of the 1500 items (about half the users
    need more: the scan answers those); 512: it covers every item."""
    monkeypatch.setattr(pipeline.time, "time", lambda: NOW)  # one clock for the re-buy windows
    tight = {"max_per_brand": caps, "max_per_category": caps}
    engine = Engine.from_bundle(
        als_shop.bundle, als_shop.state(), config=EngineConfig(prune_min_items=1, prune_block=block, **tight)
    )
    dense = Engine.from_bundle(
        als_shop.bundle, als_shop.state(), config=EngineConfig(prune_min_items=10**9, **tight)
    )
    assert engine.scorer.by_length is not None
    rescans = {"certain": 0, "scan": 0}
    rescan = NormOrdered.rescan

    def counted(self: NormOrdered, *a, **kw):
        got = rescan(self, *a, **kw)
        rescans["certain" if got is not None else "scan"] += 1
        return got

    monkeypatch.setattr(NormOrdered, "rescan", counted)
    items = engine.state.current.catalog.item_ids.astype(str)
    users = als_shop.user_ids[:150]
    users += [f"new-{j}" for j in range(10)] + users[:5]  # cold start and repeats
    for j, uid in enumerate(users[:60:3]):  # fresh events: views boost neighbours, purchases leave
        events = [
            {"user_id": uid, "item_id": items[(j * 7) % len(items)], "event_type": "view", "timestamp": NOW},
            {"user_id": uid, "item_id": items[(j * 13) % len(items)], "event_type": "purchase",
             "timestamp": NOW + 1},
        ]  # fmt: skip
        engine.record_events(events)
        dense.record_events(events)
    contexts = [Context(), Context(cart=(items[3], items[40])), Context(size="M", gender="women")]
    for cx in contexts:
        for k in (10, 60):
            batch = engine.recommend_batch(users, k, cx)
            assert list(batch) == list(dict.fromkeys(users))
            for uid, recs in batch.items():
                single = engine.recommend(uid, k, cx, now=NOW)
                assert recs == single, (uid, k, cx)
                assert [r.score for r in recs] == [r.score for r in single]  # (same bits)
                assert recs == dense.recommend(uid, k, cx, now=NOW)
    if block == 512:  # the product covers every item: no user needs the scan
        assert rescans["certain"] > 0 and rescans["scan"] == 0
    else:  # both ways answered some
        assert rescans["certain"] > 0 and rescans["scan"] > 0
