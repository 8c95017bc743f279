"""The inspection pages (`GET /ui`) in a real browser against a real `bentoml serve` process.

A small synthetic shop is built, `popular` and `itemknn` are trained, registered and promoted
through the CLI (champion and challenger), and the service runs with an A/B split over champion,
challenger and control. Playwright drives Debian's Chromium (`/usr/bin/chromium`; `make test`
installs it when it can): every view renders without console errors and shows what the JSON API
answers for the same customer or item: the same items, scores, reasons and removed items with
their rules. A stock update that sells out the first item of a customer's block moves it to the
removed items with the rule "sold out", on the page as in the API. Without the key the pages are
refused. One screenshot per view is kept under the directory the test prints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pandas as pd
import pytest

from serving.devserver import bentoml_serve, serve_process

pytestmark = [pytest.mark.server, pytest.mark.slow]

API_KEY = "ui-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHROMIUM = Path(os.environ.get("SHOPREC_CHROMIUM", "/usr/bin/chromium"))
# As root, in a closed network: no sandbox (root), and none of Chromium's background connections.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
K = 10


def _cli(*args: str) -> dict:
    from typer.testing import CliRunner

    from serving.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic shop with features, two registered models, champion and challenger."""
    from features.synthetic import generate

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("ui") / "shop"
    generate(root, customers=150, items=240, days=45, seed=11, progress=False)
    _cli("features", "build", "--data", str(root))
    _cli("train", "--data", str(root), "--model", "popular")
    _cli("train", "--data", str(root), "--model", "itemknn")
    decision = _cli("promote", "--data", str(root))
    assert decision["challenger"] is not None, decision
    return {"root": root, "decision": decision}


@pytest.fixture(scope="module")
def server(shop: dict) -> Iterator[dict]:
    root = shop["root"]
    log = root / "server.log"
    env = {
        "SHOPREC_DATA": str(root),
        "SHOPREC_API_KEY": API_KEY,
        "SHOPREC_POLL_SECONDS": "0",
        "SHOPREC_AB_SHARES": "champion=0.5,challenger=0.3,control=0.2",
    }
    with serve_process(bentoml_serve("serving.service:ShopRec"), env=env, log_path=log, timeout_s=180) as run:
        yield {"url": run.url, "log": log, **shop}


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """Where the views' screenshots go (SHOPREC_UI_SCREENSHOTS, else pytest's temporary directory);
    printed so a person can open them."""
    where = os.environ.get("SHOPREC_UI_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nUI screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (`make test` does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (`make install` installs it)")
    with sync_playwright() as p:
        # Playwright starts every launch with a fresh, empty --user-data-dir of its own.
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A browser tab that records console errors and uncaught page errors."""

    def __init__(self, browser: object, base: str, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str, *, status: int = 200, shot: str | None = None) -> object:
        self.errors.clear()
        response = self.page.goto(self.base + path, wait_until="load")
        assert response is not None and response.status == status, (path, response and response.status)
        if shot:
            self.page.screenshot(path=str(self.shots / f"{shot}.png"), full_page=True)
        return response

    def login(self) -> None:
        self.open("/ui", status=401, shot="00-key")
        assert "enter the API key" in self.page.inner_text("#refusal")
        self.page.fill("input[name=key]", "not-the-key")
        self.page.click("button:has-text('Open') >> nth=-1")
        assert "not the server's API key" in self.page.inner_text("#refusal")
        self.page.fill("input[name=key]", API_KEY)
        with self.page.expect_navigation():
            self.page.click("button:has-text('Open') >> nth=-1")
        assert self.page.url.rstrip("/").endswith("/ui"), self.page.url
        self.errors.clear()

    def rows(self, selector: str) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all(
            selector,
            """rows => rows.map(r => ({
                item: r.querySelector('.item-id').textContent.trim(),
                reason: r.querySelector('.reason') ? r.querySelector('.reason').textContent.trim() : null,
                score: r.querySelector('.score') ? r.querySelector('.score').textContent.trim() : null,
                rule: r.querySelector('.rule') ? r.querySelector('.rule').textContent.trim() : null,
            }))""",
        )


def _same_scores(shown: list[dict[str, str]], api: list[dict]) -> bool:
    """The page's scores (rounded to 3 decimals for reading) are the API's."""
    page = [float(r["score"].replace(",", "")) for r in shown]
    return len(page) == len(api) and all(
        abs(p - float(i["score"])) <= 5e-4 + 1e-9 for p, i in zip(page, api, strict=True)
    )


def _api_block(url: str, user_id: str, channel: str) -> dict:
    r = httpx.post(
        f"{url}/recommend",
        json={"user_id": user_id, "k": K, "context": {"channel": channel}, "explain": True},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _assert_page_matches_api(tab: Page, url: str, user_id: str) -> dict[str, dict]:
    answers = {}
    for channel in ("web", "email"):
        api = _api_block(url, user_id, channel)
        block = tab.page.locator(f"#block-{channel}")
        assert block.get_attribute("data-variant") == api["variant"]
        assert block.get_attribute("data-version") == api["model_version"]
        shown = tab.rows(f"#block-{channel} tr.rec")
        assert [r["item"] for r in shown] == [i["item_id"] for i in api["items"]]
        assert [r["reason"] for r in shown] == [i["reason"] for i in api["items"]]
        assert _same_scores(shown, api["items"])
        # The page lists the items a rule kept out first, then (folded) those ranked below the block,
        # each group in the API's order.
        removed = tab.rows(f"#block-{channel} tr.removed")
        api_removed = [(x["item_id"], x["rule"]) for x in api["removed"]]
        below = [x for x in api_removed if x[1].startswith("ranked below the block")]
        assert [(r["item"], r["rule"]) for r in removed] == [x for x in api_removed if x not in below] + below
        answers[channel] = api
    return answers


def _customers(root: Path) -> tuple[str, str | None]:
    """(a customer with consent and purchases, a customer without consent) of the shop."""
    profiles = pd.read_parquet(root / "features" / "profiles.parquet")
    customers = pd.read_parquet(root / "validated" / "customers.parquet")
    merged = profiles.merge(customers, on="user_id", suffixes=("", "_raw"))
    consent = merged[merged["consent_personalisation_raw"].fillna(False).astype(bool)]
    best = consent.sort_values(["n_purchases", "user_id"], ascending=[False, True]).iloc[0]["user_id"]
    refused = merged[~merged["consent_personalisation_raw"].fillna(False).astype(bool)]
    return str(best), (str(refused.iloc[0]["user_id"]) if len(refused) else None)


def test_ui_refuses_without_the_key(server: dict) -> None:
    url = server["url"]
    for path in ("/ui", "/ui/customers/u1", "/ui/items/i1", "/ui/models", "/ui/ab"):
        assert httpx.get(url + path, timeout=30, follow_redirects=True).status_code == 401, path
        wrong = httpx.get(
            url + path, headers={"Authorization": "Bearer nope"}, timeout=30, follow_redirects=True
        )
        assert wrong.status_code == 401, path
        assert "API key" in wrong.text
    ok = httpx.get(url + "/ui/models", headers=AUTH, timeout=30)
    assert ok.status_code == 200 and "Champion" in ok.text
    cookie = httpx.get(url + "/ui/", cookies={"shoprec_ui": "forged"}, timeout=30)
    assert cookie.status_code == 401
    bad_login = httpx.post(url + "/ui/login", data={"key": "nope", "next": "/ui"}, timeout=30)
    assert bad_login.status_code == 401


def test_ui_without_a_configured_key_is_forbidden() -> None:
    """No SHOPREC_API_KEY: 403, as the write endpoints answer, whatever the request carries."""
    from starlette.requests import Request

    from serving.ui import authorised, session_token

    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "GET", "path": "/ui", "headers": raw})

    assert authorised(request({}), None)[0] == 403
    assert authorised(request({"Authorization": "Bearer x"}), None)[0] == 403
    assert authorised(request({"Authorization": "Bearer k"}), "k") is None
    assert authorised(request({"Cookie": f"shoprec_ui={session_token('k')}"}), "k") is None
    assert authorised(request({"Cookie": f"shoprec_ui={session_token('old')}"}), "k")[0] == 401
    assert authorised(request({"Authorization": "Bearer x"}), "k")[0] == 401


def test_ui_every_view_in_chromium_matches_the_json_api(
    browser: object, server: dict, screenshots: Path
) -> None:  # the browser first: without one the test skips before the shop is built
    url, root = server["url"], server["root"]
    user_id, refused = _customers(root)
    tab = Page(browser, url, screenshots)
    tab.login()
    tab.page.screenshot(path=str(screenshots / "01-start.png"), full_page=True)
    assert tab.page.locator("a.example-customer").count() > 0
    assert tab.errors == []

    # A customer: profile, history, and both blocks as the JSON API answers them.
    tab.open(f"/ui/customers/{user_id}", shot="02-customer")
    assert tab.page.inner_text("#user-id") == user_id
    assert "consent" in tab.page.inner_text("#consent")
    n_events = len(
        pd.read_parquet(root / "validated" / "events.parquet", filters=[("user_id", "==", user_id)])
    )
    assert tab.page.locator("#history .timeline li:not(.day)").count() == min(n_events, 200)
    before = _assert_page_matches_api(tab, url, user_id)
    assert tab.errors == []

    # Sell out the first item of the web block (every size): it leaves the block and shows up among
    # the removed items as "sold out", on the page exactly as in the API.
    first = before["web"]["items"][0]["item_id"]
    stock = pd.read_parquet(root / "validated" / "stock.parquet")
    sizes = stock.loc[stock["item_id"] == first, "size"].fillna("").tolist() or [""]
    r = httpx.post(
        f"{url}/stock", json={"stock": [{"item_id": first, "size": s, "quantity": 0} for s in sizes]},
        headers=AUTH, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while first in [i["item_id"] for i in _api_block(url, user_id, "web")["items"]]:
        assert time.monotonic() < deadline, "the stock update never reached the answers"
        time.sleep(0.2)
    tab.open(f"/ui/customers/{user_id}", shot="03-customer-sold-out")
    after = _assert_page_matches_api(tab, url, user_id)
    assert first not in [i["item_id"] for i in after["web"]["items"]]
    assert (first, "sold out") in [(x["item_id"], x["rule"]) for x in after["web"]["removed"]]
    assert tab.errors == []

    if refused is not None:  # no consent: the non-personal block, said on the page
        tab.open(f"/ui/customers/{refused}", shot="04-customer-no-consent")
        assert "no consent" in tab.page.inner_text("#consent")
        _assert_page_matches_api(tab, url, refused)
        assert tab.errors == []

    # An item with sizes: details, stock per size, bought together and similar, as the API answers.
    sized = stock[stock["size"].fillna("") != ""].groupby("item_id")["size"].count()
    item_id = str(sized.sort_values(ascending=False).index[0])
    tab.open(f"/ui/items/{item_id}", shot="05-item")
    rows = tab.page.eval_on_selector_all("#stock tr.stock-row", "rs => rs.map(r => r.dataset.size)")
    assert sorted(rows) == sorted(stock.loc[stock["item_id"] == item_id, "size"].fillna("").tolist())
    together = httpx.post(f"{url}/bought_together", json={"item_ids": [item_id], "k": K}, timeout=30).json()
    similar = httpx.post(f"{url}/similar_items", json={"item_id": item_id, "k": K}, timeout=30).json()
    for selector, api in (("#bought-together tr.together", together), ("#similar tr.similar", similar)):
        shown = tab.rows(selector)
        assert [(r["item"], r["reason"]) for r in shown] == [
            (i["item_id"], i["reason"]) for i in api["items"]
        ]
        assert _same_scores(shown, api["items"])
    assert tab.errors == []

    # The registry: champion and challenger as promoted, with the runs' metrics per segment.
    decision = server["decision"]
    tab.open("/ui/models", shot="06-models")
    assert tab.page.inner_text("#champion .version-number") == str(decision["champion"])
    assert tab.page.inner_text("#challenger .version-number") == str(decision["challenger"])
    _assert_metrics_match_the_run(tab, root, str(decision["champion"]))
    assert tab.errors == []

    # The A/B report: none yet (the page says how to make one), then the report and its plot.
    tab.open("/ui/ab", shot="07-ab-none")
    assert "No A/B report yet" in tab.page.inner_text("#no-report")
    assert tab.page.inner_text("#ab-command") == f"shoprec ab report --data {root}"
    # a real report of what this server showed (its impression log), one shown item clicked
    # through the answer's recommendation_id
    visitors = pd.read_parquet(root / "customers.parquet")["user_id"].head(60)
    with httpx.Client(base_url=url, timeout=30) as c:
        for visitor in visitors:  # traffic for every variant of the split
            assert c.post("/recommend", json={"user_id": visitor, "k": K}).status_code == 200
    shown = httpx.post(f"{url}/recommend", json={"user_id": user_id, "k": K}, timeout=30).json()
    click = {"user_id": user_id, "item_id": shown["items"][0]["item_id"], "event_type": "click",
             "recommendation_id": shown["recommendation_id"]}  # fmt: skip
    r = httpx.post(f"{url}/events", json={"events": [click]}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(2.5)  # the service writes its impression log out at least every second
    report = _real_ab_report(root)
    tab.open("/ui/ab", shot="08-ab-report")
    table = tab.page.inner_text("#table-variants")
    assert sum(v["clicks"] for v in report["variants"]) == 1, report
    assert {v["variant"] for v in report["variants"]} == {"champion", "challenger", "control"}
    for row in report["variants"]:
        assert row["variant"] in table
        assert f"{row['impressions']:,}" in table or str(row["impressions"]) in table
    assert tab.page.eval_on_selector("#plot img", "i => i.complete && i.naturalWidth") > 0
    assert tab.errors == []

    # Unknown ids: a clear page with 404, never a 500.
    tab.open("/ui/customers/nobody-at-all", status=404, shot="09-unknown-customer")
    assert "No customer" in tab.page.inner_text("#unknown")
    tab.open("/ui/items/no-such-item", status=404)
    assert "No item" in tab.page.inner_text("#unknown")
    odd = "a/b <script>alert(1)</script>"  # a slash and markup in an id: shown as text, never run
    tab.open("/ui/customers/" + quote(odd, safe=""), status=404)
    assert odd in tab.page.inner_text("#unknown")
    # Chromium reports the page's own 404 status in the console; nothing else may be there.
    assert [e for e in tab.errors if "status of 404" not in e] == []
    tab.context.close()

    # The access log names the page, never the customer.
    log = server["log"].read_text()
    assert "/ui/customers/-" in log
    assert user_id not in log


def _assert_metrics_match_the_run(tab: Page, root: Path, version: str) -> None:
    from mlflow import MlflowClient

    from serving.ui import _num

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(client.get_model_version("shoprec", version).run_id)
    metrics = run.data.metrics
    cells = tab.page.eval_on_selector_all(
        "#champion table.metrics td[data-key]", "ds => ds.map(d => [d.dataset.key, d.innerText.trim()])"
    )
    keys = {k for k, _ in cells}
    assert {"ndcg@10", "ndcg@10/new", "ndcg@10/returning"} <= keys, keys
    assert any(k.startswith("ndcg@10/segment_") for k in keys), keys
    for key, text in cells:
        logged = metrics.get(key.replace("@", "_at_"))
        assert text == (_num(float(logged), 4) if logged is not None else "–"), key


def _real_ab_report(root: Path) -> dict:
    """`shoprec ab report --data ROOT` as a user runs it (the server's shares), its JSON line."""
    return _cli("ab", "report", "--data", str(root), "--shares", "champion=0.5,challenger=0.3,control=0.2")
