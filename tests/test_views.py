"""What the inspection pages show (serving.views), without a server or a browser: on the ALS shop of
tests/conftest.py, a customer's blocks are the router's answers (and looking records no impression),
the timeline is their events newest first with live events on top, unknown and erased customers and
unknown items have no page; the A/B report and the registry's metrics come out as tables; customer
ids never reach the access log's paths."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from serving import views
from serving.app import log_path
from serving.explain import removed_items
from serving.loader import Models
from serving.pipeline import Context, Engine
from serving.router import Router
from serving.store import Event


class Recorded:
    """An impression log that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def log(self, **fields: object) -> None:
        self.lines.append(fields)


@pytest.fixture(scope="module")
def served(als_shop) -> tuple[Engine, Models, Router, Recorded]:
    engine = Engine.from_bundle(als_shop.bundle, als_shop.state(), model_version="7")
    models = Models(engine, "7")
    log = Recorded()
    return engine, models, Router(lambda: models, {"champion": 1.0}, "salt", log), log


CONTEXTS = {"web": Context(channel="web"), "email": Context(channel="email")}


def test_customer_blocks_are_the_routers_answers_and_record_no_impression(als_shop, served) -> None:
    engine, models, router, log = served
    user_id = als_shop.user_ids[3]
    before = len(log.lines)
    view = views.customer_view(router, models, als_shop.ws, user_id, CONTEXTS, k=8)
    assert len(log.lines) == before, "looking at a customer must not count as showing them a block"
    for block in view.blocks:
        cx = CONTEXTS[block.channel]
        answer = router.block("recommend", user_id, 8, cx, lambda e, cx=cx: e.recommend(user_id, 8, cx))
        assert (block.variant, block.model_version) == (answer.variant, answer.model_version)
        assert [(s.item_id, s.reason) for s in block.items] == [(r.item_id, r.reason) for r in answer.items]
        assert [s.score for s in block.items] == pytest.approx([r.score for r in answer.items])
        expected = removed_items(engine, user_id, 8, cx, answer.items)
        assert [(r.item_id, r.rule) for r in block.removed] == [(r.item_id, r.rule) for r in expected]
        assert block.kept_out + block.ranked_below == sorted(
            block.removed, key=lambda r: r.rule.startswith(views.RANKED_BELOW)
        )
    assert view.segment == engine.state.customer(user_id).segment


def test_timeline_is_the_customers_events_newest_first_with_live_events_on_top(als_shop, served) -> None:
    engine, models, router, _ = served
    user_id = als_shop.user_ids[5]
    events = pd.read_parquet(als_shop.ws.validated("events"), filters=[("user_id", "==", user_id)])
    view = views.customer_view(router, models, als_shop.ws, user_id, {}, k=5)
    assert len(view.timeline) + view.older_events == len(events)
    stamps = [e.timestamp for e in view.timeline]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == pd.to_datetime(events["timestamp"], utc=True).max().to_pydatetime()

    item = str(engine.state.current.catalog.item_ids[0])
    now = datetime.now(UTC).timestamp()
    engine.store.add([Event(user_id, item, "view", now), Event(user_id, item, "add_to_cart", now + 1)])
    live = views.customer_view(router, models, als_shop.ws, user_id, {}, k=5)
    assert [(e.event_type, e.item_id, e.live) for e in live.timeline[:2]] == [
        ("add_to_cart", item, True),
        ("view", item, True),
    ]


def test_unknown_and_erased_customers_and_unknown_items_have_no_page(als_shop) -> None:
    state = als_shop.state()
    engine = Engine.from_bundle(als_shop.bundle, state, model_version="1")
    models = Models(engine, "1")
    router = Router(lambda: models, {"champion": 1.0}, "salt")
    assert views.customer_view(router, models, als_shop.ws, "nobody-at-all", CONTEXTS) is None
    user_id = als_shop.user_ids[0]
    assert views.customer_view(router, models, als_shop.ws, user_id, CONTEXTS) is not None
    engine.forget(user_id)
    assert views.customer_view(router, models, als_shop.ws, user_id, CONTEXTS) is None
    assert views.item_view(models, "no-such-item", Context()) is None


def test_item_view_has_the_stock_per_size_and_the_engines_neighbours(als_shop, served) -> None:
    engine, models, _, _ = served
    stock = pd.read_parquet(als_shop.ws.validated("stock"))
    item_id = str(stock.groupby("item_id").size().sort_values().index[-1])
    view = views.item_view(models, item_id, Context(), k=6)
    assert view.stock == engine.state.stock_of(item_id)
    assert sorted(view.stock) == sorted(stock.loc[stock.item_id == item_id, "size"].fillna("").astype(str))
    assert [s.item_id for s in view.similar] == [r.item_id for r in engine.similar_items(item_id, 6)]
    assert [s.item_id for s in view.bought_together] == [
        r.item_id for r in engine.bought_together([item_id], 6)
    ]
    assert (
        view.details["title"]
        == engine.state.current.catalog.titles[engine.state.current.catalog.index[item_id]]
    )


def test_metrics_table_groups_history_and_segments_even_when_a_segment_is_called_new() -> None:
    v = views.Version(
        "3", "als", ["champion"], "r", None, "loo", "h",
        {"ndcg@10": 0.5, "ndcg@10/new": 0.2, "ndcg@10/returning": 0.6, "ndcg@10/segment_new": 0.9,
         "ndcg@10/segment_vip": 0.7, "coverage@10": 0.3, "n_users": 10.0, "n_users/new": 4.0,
         "n_users/returning": 6.0, "n_users/segment_new": 2.0, "n_users/segment_vip": 3.0},
    )  # fmt: skip
    t = v.table(("ndcg@10", "recall@10", "coverage@10"))
    assert t.groups == [("", 1), ("by history", 2), ("by segment", 2)]
    assert t.columns == ["all", "new", "returning", "new", "vip"]
    rows = dict(t.rows)
    assert [x for _, x in rows["ndcg@10"]] == [0.5, 0.2, 0.6, 0.9, 0.7]
    assert [k for k, _ in rows["ndcg@10"]][3] == "ndcg@10/segment_new"
    assert [x for _, x in rows["coverage@10"]] == [0.3, None, None, None, None]
    assert [x for _, x in rows["customers evaluated"]] == [10.0, 4.0, 6.0, 2.0, 3.0]
    assert "recall@10" not in rows


def test_report_tables_show_whatever_columns_the_report_has(tmp_path: Path) -> None:
    report = {
        "variants": [{"variant": "champion", "ctr": 0.04}, {"variant": "control", "ctr": 0.03, "users": 9}],
        "uplift": {"challenger": {"ctr": 0.1}, "champion": {"ctr": 0.2}},
        "srm": {"p_value": 0.5, "ok": True},
        "n_days": 14,
        "plot": "x.png",
    }
    facts, tables = views.report_tables(report)
    assert facts == {"srm.p_value": 0.5, "srm.ok": True, "n_days": 14}
    assert tables["variants"].columns == ["variant", "ctr", "users"]
    assert tables["variants"].rows == [["champion", 0.04, None], ["control", 0.03, 9]]
    assert tables["uplift"].rows == [["challenger", 0.1], ["champion", 0.2]]


def test_ab_view_reads_the_workspaces_report_and_its_plot_or_says_how_to_make_one(tmp_path: Path) -> None:
    from features.workspace import Workspace

    ws = Workspace.at(tmp_path)
    none = views.ab_view(ws)
    assert none.report is None and none.command == f"shoprec ab report --data {ws.root}"
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "ab_report.json").write_text('{"variants": [{"variant": "champion"}]}')
    (tmp_path / "reports" / "ab_report.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    got = views.ab_view(ws)
    assert got.report == {"variants": [{"variant": "champion"}]}
    assert got.plot_png_base64 == "iVBORw0KGgo="
    (tmp_path / "reports" / "ab_report.json").write_text("[1, 2]")
    bad = views.ab_view(ws)
    assert bad.report is None and "expected a JSON object" in bad.error


def test_paths_with_a_customer_id_are_logged_without_it() -> None:
    assert log_path("/ui/customers/u123") == "/ui/customers/-"
    assert log_path("/ui/items/i9") == "/ui/items/i9"
    assert log_path("/recommend") == "/recommend"
    assert views._redact_uri("postgresql://ml:secret@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
