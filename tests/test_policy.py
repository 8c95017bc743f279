"""The learned re-buy rule: staples come back after their window, durables never, unknown never."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.policy import RebuyPolicy

DAY = 86_400
REBUY = pd.DataFrame(
    {
        "category": ["pets/food", "tech/laptops"],
        "n_buyers": [100, 80],
        "n_repeat_buyers": [60, 1],
        "rebuy_rate": [0.6, 0.0125],
        "median_interval_days": [20.0, 400.0],
        "rebuyable": [True, False],
    }
)
LAST = pd.DataFrame(
    {
        "user_idx": [0, 0, 0, 1],
        "item_idx": [10, 11, 12, 10],
        "category": ["pets/food", "tech/laptops", "garden/unknown", "pets/food"],
        "last_ts": [0, 0, 0, 25 * DAY],
        "n_purchases": [3, 1, 1, 1],
    }
)


def test_by_default_staples_come_back_after_the_floor_durables_and_unknown_never():
    p = RebuyPolicy.from_frame(REBUY)  # window 0, floor 2 h: measured on Instacart (training/policy.py)
    assert p.window_fraction == 0.0 and p.floor_hours == 2.0
    M = p.exclusions(np.array([0, 1]), LAST, now=25 * DAY, n_items=20).toarray()
    assert M[0, [10, 11, 12]].tolist() == [0, 1, 1]
    assert M[1, 10] == 1  # bought this very second: not in the next answer, even a staple
    assert M.sum() == 3
    later = p.exclusions(np.array([1]), LAST, now=25 * DAY + 2 * 3600, n_items=20).toarray()
    assert later[0, 10] == 0  # two hours later the staple may come back


def test_window_passes_for_staples_never_for_durables_or_unknown():
    p = RebuyPolicy.from_frame(REBUY, window_fraction=0.5)  # window = 0.5 * 20 = 10 days (> floor)
    assert p.rebuyable == {"pets/food": 20.0}
    early = p.exclusions(np.array([0, 1]), LAST, now=5 * DAY, n_items=20).toarray()
    assert early[0, [10, 11, 12]].tolist() == [1, 1, 1]
    assert early[1, 10] == 1  # a purchase after "now" (negative wait) is still inside the window
    late = p.exclusions(np.array([0, 1]), LAST, now=30 * DAY, n_items=20).toarray()
    assert late[0, 10] == 0 and late[0, 11] == 1 and late[0, 12] == 1
    assert late[1, 10] == 1  # user 1 bought 5 days before "now": still inside the window
    assert late.sum() == 3


def test_per_row_now_unknown_users_and_repeated_rows():
    p = RebuyPolicy.from_frame(REBUY, window_fraction=1.0)  # window = 20 days
    M = p.exclusions(np.array([0, -1, 0]), LAST, now=np.array([21 * DAY, 0, 19 * DAY]), n_items=20).toarray()
    assert M[0, 10] == 0 and M[2, 10] == 1  # same user, two "now"s
    assert M[1].sum() == 0  # unknown user: nothing to exclude


def test_empty_frame_means_nothing_comes_back_and_bad_frame_is_an_error():
    p = RebuyPolicy.from_frame(pd.DataFrame())
    M = p.exclusions(np.array([0]), LAST, now=10_000 * DAY, n_items=20).toarray()
    assert M[0, [10, 11, 12]].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="lacks column"):
        RebuyPolicy.from_frame(pd.DataFrame({"category": ["x"]}))
