"""The A/B report (serving.ab_report, `shoprec ab report`): its intervals and p-values against a case
solved by hand, attribution by recommendation id and by the window after an impression, the
sample-ratio check on a skewed and on a fair split, and the command on a workspace (report and plot
where /ui/ab reads them, one JSON line last)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.ab import ImpressionLog, hash_user, read_impressions
from serving.ab_report import ReportConfig, attribute, build_report
from serving.ab_stats import mean_difference, proportion_uplift, sample_ratio, wilson

SALT = "s"
HOUR = 3600.0


def test_wilson_interval_solved_by_hand() -> None:
    # 30 of 100, z = 1.959964: centre (0.3 + z^2/200) / (1 + z^2/100) = 0.3073987,
    # half-width z * sqrt(0.3 * 0.7 / 100 + z^2 / 40000) / (1 + z^2/100) = 0.0884498.
    low, high = wilson(30, 100)
    assert low == pytest.approx(0.3073987 - 0.0884498, abs=2e-7)
    assert high == pytest.approx(0.3073987 + 0.0884498, abs=2e-7)
    assert wilson(0, 0) == (None, None)


def test_uplift_interval_and_p_value_solved_by_hand() -> None:
    # 30/100 against 20/100: risk ratio 1.5, uplift +50%. Katz: se(log RR) =
    # sqrt(1/30 - 1/100 + 1/20 - 1/100) = 0.251661, RR * exp(+-1.959964 * se) = [0.915961, 2.456437].
    # Pearson chi-square of [[30, 70], [20, 80]]: expected 25 and 75 in each row,
    # 2 * (25/25 + 25/75) = 2.666667 on 1 df, p = 0.102470.
    got = proportion_uplift(30, 100, 20, 100)
    assert got["uplift"] == pytest.approx(0.5)
    assert got["uplift_low"] == pytest.approx(0.915961 - 1, abs=1e-5)
    assert got["uplift_high"] == pytest.approx(2.456437 - 1, abs=1e-5)
    assert got["p_value"] == pytest.approx(0.102470, abs=1e-5)
    # nobody converted anywhere: no evidence either way, never a division by zero
    assert proportion_uplift(0, 50, 0, 50)["p_value"] == 1.0


def test_revenue_difference_is_welchs_solved_by_hand() -> None:
    # a = (1, 2, 3, 4), b = (2, 3, 4, 5, 6): difference -1.5; variances 1.6667/4 and 2.5/5, se 0.957427;
    # Welch df = 0.916667^2 / (0.416667^2/3 + 0.5^2/4) = 6.98077; t = -1.566699, p = 0.161286;
    # t(0.975, 6.98077) = 2.366213: interval -1.5 +- 2.265425.
    got = mean_difference(np.array([1, 2, 3, 4.0]), np.array([2, 3, 4, 5, 6.0]))
    assert got["difference"] == pytest.approx(-1.5)
    assert got["p_value"] == pytest.approx(0.161286, abs=1e-5)
    assert got["difference_low"] == pytest.approx(-3.765220, abs=1e-4)
    assert got["difference_high"] == pytest.approx(0.765220, abs=1e-4)


def _impressions(rows: list[tuple[str, str, str, list[str], float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"recommendation_id": r, "variant": v, "user": hash_user(u, SALT), "items": items, "ts": ts}
            for r, v, u, items, ts in rows
        ]
    )


def _events(rows: list[tuple]) -> pd.DataFrame:
    cols = ["user_id", "item_id", "event_type", "timestamp", "recommendation_id", "price"]
    return pd.DataFrame([(*r, *([None] * (len(cols) - len(r)))) for r in rows], columns=cols)


def test_attribution_by_recommendation_id() -> None:
    imp = _impressions(
        [("r1", "champion", "u1", ["a", "b"], 0.0), ("r2", "control", "u2", ["a"], 0.0),
         ("r3", "control", "u3", ["c"], 0.0)]
    )  # fmt: skip
    ev = _events(
        [
            ("u1", "b", "click", 10.0, "r1"),  # a click on r1
            ("u1", "b", "purchase", 20.0, "r1", 5.0),  # bought from r1 (quotes it)
            ("u2", "z", "purchase", 30.0, "r2", 7.0),  # quotes r2: r2's even for an item it did not show
            ("u3", "c", "view", 40.0),  # a view without an id is no click
        ]
    )
    per, counts = attribute(imp, ev, salt=SALT)
    per = per.set_index("recommendation_id")
    assert per["clicked"].to_dict() == {"r1": True, "r2": True, "r3": False}  # a purchase clicks too
    assert per["purchases"].to_dict() == {"r1": 1, "r2": 1, "r3": 0}
    assert per.loc["r2", "revenue"] == 7.0
    assert counts == {"purchases": 2, "by_id": 2, "by_window": 0, "not_attributed": 0, "clicks_by_id": 2}


def test_attribution_by_window_after_an_impression_of_that_item_to_that_customer() -> None:
    t0 = 1_000_000.0
    imp = _impressions(
        [("r1", "champion", "u1", ["a", "b"], t0), ("r2", "champion", "u1", ["a"], t0 + 2 * HOUR),
         ("r3", "control", "u2", ["c"], t0)]
    )  # fmt: skip
    ev = _events(
        [
            ("u1", "a", "purchase", t0 + 3 * HOUR, None, 4.0),  # a shown by r1 and r2: the last, r2
            ("u1", "b", "purchase", t0 + 23 * HOUR, None, 6.0),  # b within 24 h of r1
            ("u1", "b", "purchase", t0 + 25 * HOUR, None, 6.0),  # too late
            ("u1", "b", "purchase", t0 - 1, None, 6.0),  # before it was shown
            ("u2", "a", "purchase", t0 + HOUR, None, 1.0),  # a was never shown to u2
            ("u1", "c", "purchase", t0 + HOUR, None, 1.0),  # c was shown to u2, not to u1
            ("u2", "c", "purchase", t0 + HOUR, "unknown-id", 2.0),  # an id the log lacks: by window
        ]
    )
    per, counts = attribute(imp, ev, salt=SALT, window_hours=24)
    per = per.set_index("recommendation_id")
    assert per["purchases"].to_dict() == {"r1": 1, "r2": 1, "r3": 1}
    assert per["revenue"].to_dict() == {"r1": 6.0, "r2": 4.0, "r3": 2.0}
    assert not per["clicked"].any()  # buying later without the id says nothing about a click
    assert counts["by_window"] == 3 and counts["not_attributed"] == 4 and counts["by_id"] == 0
    # a shorter window drops the purchase 23 h after r1
    per2, _ = attribute(imp, ev, salt=SALT, window_hours=12)
    assert per2.set_index("recommendation_id")["purchases"].to_dict() == {"r1": 0, "r2": 1, "r3": 1}
    # the impression log's hashes need the service's salt: another salt matches nobody
    assert attribute(imp, ev, salt="other")[1]["by_window"] == 0


def test_report_per_variant_counts_users_conversion_and_revenue() -> None:
    # champion: 4 customers, 2 buy (one by id, one by window); control: 4 customers, 1 buys.
    rows, events = [], []
    for n in range(4):
        rows.append((f"c{n}", "champion", f"uc{n}", ["a"], 0.0))
        rows.append((f"k{n}", "control", f"uk{n}", ["b"], 0.0))
    rows.append(("c0-again", "champion", "uc0", ["a"], 5.0))  # a second block for the same customer
    events += [("uc0", "a", "purchase", 10.0, "c0", 10.0), ("uc1", "a", "purchase", 10.0, None, 20.0)]
    events += [("uk0", "b", "click", 3.0, "k0"), ("uk0", "b", "purchase", 10.0, None, 8.0)]
    rep = build_report(
        _impressions(rows), _events(events), ReportConfig(shares={"champion": 0.5, "control": 0.5}, salt=SALT)
    )
    v = {r["variant"]: r for r in rep["variants"]}
    assert [r["variant"] for r in rep["variants"]] == ["champion", "control"]
    assert (v["champion"]["users"], v["champion"]["impressions"], v["champion"]["purchases"]) == (4, 5, 2)
    assert v["champion"]["conversion"] == 0.5 and v["control"]["conversion"] == 0.25
    assert v["champion"]["clicks"] == 1 and v["control"]["clicks"] == 1  # the purchase by id clicks
    assert v["champion"]["revenue_per_user"] == pytest.approx(7.5) and v["control"]["revenue"] == 8.0
    (low, high) = wilson(2, 4)
    assert (v["champion"]["conversion_low"], v["champion"]["conversion_high"]) == (low, high)
    up = {u["metric"]: u for u in rep["uplift"]}
    assert up["conversion"]["uplift"] == pytest.approx(1.0)  # 0.5 against 0.25
    assert up["conversion"]["p_value"] == pytest.approx(proportion_uplift(2, 4, 1, 4)["p_value"])
    assert not up["conversion"]["significant"]  # 8 customers prove nothing
    assert up["revenue_per_user"]["uplift"] == pytest.approx((7.5 - 2.0) / 2.0)
    assert rep["srm"]["flagged"] is False


def test_sample_ratio_mismatch_flagged_on_a_skewed_split_and_not_on_a_fair_one() -> None:
    shares = {"champion": 0.8, "control": 0.2}
    fair = sample_ratio({"champion": 8_030, "control": 1_970}, shares)  # 0.75 sd from 8000
    assert not fair["flagged"] and fair["p_value"] > 0.3
    skewed = sample_ratio({"champion": 8_200, "control": 1_800}, shares)  # 5 sd: chi2 = 25, p = 5.7e-7
    assert skewed["flagged"] and skewed["chi2"] == pytest.approx(25.0) and skewed["p_value"] < 1e-6
    # a variant with customers that the configuration does not have (a challenger without a model)
    assert sample_ratio({"champion": 90, "control": 10, "challenger": 1}, {"champion": 0.9, "control": 0.1})[
        "flagged"
    ]
    assert not sample_ratio({"champion": 10}, {"champion": 1.0})["flagged"]


def test_ab_report_command_writes_the_report_and_plot_where_the_ui_reads_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from features.changelog import append
    from features.workspace import Workspace
    from serving import views
    from serving.cli import app

    ws = Workspace.at(tmp_path / "shop")
    ws.root.mkdir()
    now = pd.Timestamp.now(tz="UTC").timestamp()
    pd.DataFrame(
        {"user_id": ["old"], "item_id": ["a"], "event_type": ["purchase"],
         "timestamp": [pd.Timestamp(now - 10 * 86400, unit="s", tz="UTC")], "price": [1.0]}
    ).to_parquet(ws.root / "events.parquet")  # fmt: skip
    pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"], "price": [3.0, 4.0]}).to_parquet(
        ws.root / "catalog.parquet"
    )
    with ImpressionLog(ws.serving_dir / "impressions.jsonl", salt="shop-salt") as log:
        for n in range(40):
            variant = "champion" if n % 2 else "control"
            log.log(f"r{n}", variant, "3", f"u{n}", ["a", "b"], timestamp=now + n)
    rows = [{"user_id": f"u{n}", "item_id": "b", "event_type": "purchase", "recommendation_id": f"r{n}",
             "timestamp": pd.Timestamp(int(now) + 100, unit="s", tz="UTC")} for n in range(1, 40, 4)]  # fmt: skip
    append(
        ws, "events", rows
    )  # as POST /events does: champion customers u1, u5, ... buy b (price 4 from the catalog)

    res = CliRunner().invoke(
        app, ["ab", "report", "--data", str(ws.root), "--shares", "champion=0.5,control=0.5"],
        env={"SHOPREC_AB_SALT": "shop-salt"},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    on_disk = json.loads((ws.root / views.AB_REPORT).read_text())
    assert printed == on_disk
    v = {r["variant"]: r for r in on_disk["variants"]}
    assert v["champion"]["purchases"] == 10 and v["champion"]["revenue"] == 40.0
    assert v["control"]["purchases"] == 0 and v["champion"]["users"] == v["control"]["users"] == 20
    assert on_disk["attribution"]["by_id"] == 10
    assert (ws.root / views.AB_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = views.ab_view(ws)
    assert page.report == on_disk and page.plot_png_base64
    facts, tables = views.report_tables(page.report)
    assert {"variants", "uplift"} <= set(tables) and "srm.flagged" in facts
    assert "A/B report" in res.stderr and "champion" in res.stderr


def test_report_reads_the_impression_log_file(tmp_path: Path) -> None:
    path = tmp_path / "imp.jsonl"
    with ImpressionLog(path, salt=SALT) as log:
        log.log("r1", "champion", "v1", "u1", ["a"], timestamp=0.0)
        log.log("r2", "champion", "v1", None, ["a"], timestamp=0.0)  # anonymous: outside the experiment
    rep = build_report(
        read_impressions(path), _events([("u1", "a", "purchase", 1.0)]), ReportConfig(salt=SALT)
    )
    assert rep["variants"][0]["users"] == 1 and rep["variants"][0]["purchases"] == 1
    assert rep["attribution"]["anonymous_impressions"] == 1


def test_channel_counts_only_that_channels_blocks_and_attributes_within_it() -> None:
    """A customer mailed by a campaign and shown the same item on the site later: with every block
    the purchase goes to the site's (last touch); the e-mail report counts only mailed customers
    and gives it to the mail; the site report leaves out the customer who was only mailed."""
    t0 = 1_000_000.0
    imp = _impressions(
        [("m1", "champion", "u1", ["a"], t0), ("s1", "champion", "u1", ["a"], t0 + HOUR),
         ("m2", "control", "u2", ["b"], t0), ("s3", "control", "u3", ["c"], t0),
         ("f4", "champion", "u4", ["d"], t0), ("x5", "control", "u5", ["e"], t0)]
    )  # fmt: skip
    imp["endpoint"] = [
        "campaign/reactivation",
        "recommend",
        "campaign/reactivation",
        "bought_together",
        "feed",
        None,
    ]
    ev = _events(
        [("u1", "a", "purchase", t0 + 2 * HOUR, None, 5.0), ("u2", "b", "purchase", t0 + HOUR, None, 3.0)]
    )
    every = build_report(imp, ev, ReportConfig(salt=SALT))
    email = build_report(imp, ev, ReportConfig(salt=SALT, channel="email"))
    site = build_report(imp, ev, ReportConfig(salt=SALT, channel="site"))
    users = {name: {r["variant"]: r["users"] for r in rep["variants"]} for name, rep in
             (("all", every), ("email", email), ("site", site))}  # fmt: skip
    assert users == {
        "all": {"champion": 2, "control": 3},  # u1, u4 / u2, u3, u5 (no endpoint: counted in "all")
        "email": {"champion": 2, "control": 1},  # u1 (m1), u4 (the feed) / u2 (m2)
        "site": {"champion": 1, "control": 1},  # u1 (s1) / u3
    }
    per_all, _ = attribute(imp, ev, salt=SALT)
    assert per_all.set_index("recommendation_id").loc[["m1", "s1"], "purchases"].tolist() == [0, 1]
    em = {r["variant"]: r for r in email["variants"]}
    assert em["champion"]["purchases"] == 1 and em["control"]["purchases"] == 1  # u1's a goes to m1
    assert {r["variant"]: r["purchases"] for r in site["variants"]} == {"champion": 1, "control": 0}
    assert (
        every["channels"]
        == email["channels"]
        == {
            "email": {"champion": 2, "control": 1},
            "site": {"champion": 1, "control": 1},
            "unknown": {"control": 1},
        }
    )
    assert (every["channel"], email["channel"]) == ("all", "email")
    # a purchase quoting the mail's id belongs to the mail: the site report does not take it by window
    quoting = _events([("u1", "a", "purchase", t0 + 2 * HOUR, "m1", 5.0)])
    site_q = build_report(imp, quoting, ReportConfig(salt=SALT, channel="site"))
    assert sum(r["purchases"] for r in site_q["variants"]) == 0
    assert site_q["attribution"]["other_channels"] == 1 and site_q["attribution"]["purchases"] == 1
    assert (
        build_report(imp, quoting, ReportConfig(salt=SALT, channel="email"))["variants"][0]["purchases"] == 1
    )
    assert "other_channels" not in every["attribution"]
    with pytest.raises(ValueError, match="channel"):
        ReportConfig(channel="sms")


def test_ab_report_command_channel_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from features.workspace import Workspace
    from serving.cli import app

    ws = Workspace.at(tmp_path / "shop")
    ws.root.mkdir()
    now = pd.Timestamp.now(tz="UTC").timestamp()
    with ImpressionLog(ws.serving_dir / "impressions.jsonl", salt=SALT) as log:
        for n in range(12):  # customers 0-5 mailed by a campaign, 6-11 shown a block on the site
            variant = "champion" if n % 2 else "control"
            endpoint = "campaign/replenishment" if n < 6 else "recommend"
            log.log(f"r{n}", variant, "3", f"u{n}", ["a"], timestamp=now + n, endpoint=endpoint)
    env = {"SHOPREC_AB_SALT": SALT}
    runner = CliRunner()
    args = ["ab", "report", "--data", str(ws.root), "--shares", "champion=0.5,control=0.5"]
    res = runner.invoke(app, [*args, "--channel", "email"], env=env)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert sum(r["users"] for r in rep["variants"]) == 6 and rep["channel"] == "email"
    assert rep["channels"] == {"email": {"champion": 3, "control": 3}, "site": {"champion": 3, "control": 3}}
    assert "A/B report, email only" in res.stderr and "blocks by channel: email 6 · site 6" in res.stderr
    res = runner.invoke(app, [*args, "--channel", "sms"], env=env)
    assert res.exit_code == 2 and "channel must be one of all, site, email" in res.stderr


def test_the_table_says_an_uplift_from_a_control_rate_of_0_is_undefined() -> None:
    from serving.ab_display import report_table

    rows = [(f"c{n}", "champion", f"uc{n}", ["a"], 0.0) for n in range(4)]
    rows += [(f"k{n}", "control", f"uk{n}", ["b"], 0.0) for n in range(4)]
    events = [("uc0", "a", "purchase", 10.0, "c0", 10.0), ("uc1", "a", "purchase", 10.0, "c1", 20.0)]
    rep = build_report(_impressions(rows), _events(events), ReportConfig(salt=SALT))
    conv = next(u for u in rep["uplift"] if u["metric"] == "conversion")
    assert conv["uplift"] is None and conv["p_value"] is not None  # 2 of 4 against 0 of 4
    _, _, lines = report_table(rep)
    line = next(x for x in lines if "conversion" in x)
    assert "conversion 50.0% against 0.0%: the relative uplift is undefined" in line and "-%" not in line
