"""The statistics of the A/B report (serving.ab_report), each from scipy.stats: the Wilson interval
of a proportion, the relative uplift of one proportion over another (risk ratio with Katz's log
interval, Pearson's chi-square p-value), Welch's difference of means, and the sample-ratio check
(chi-square goodness of fit against the configured shares)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (scipy.stats.binomtest); None when n is 0."""
    from scipy import stats

    if n <= 0:
        return None, None
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def proportion_uplift(
    hits: int, n: int, control_hits: int, control_n: int, confidence: float = 0.95
) -> dict[str, float | None]:
    """Relative uplift of hits/n over control_hits/control_n: the risk ratio minus one with its
    Katz log interval (scipy.stats.contingency.relative_risk) and the p-value of Pearson's
    chi-square test without continuity correction (scipy.stats.chi2_contingency)."""
    from scipy import stats
    from scipy.stats.contingency import relative_risk

    out: dict[str, float | None] = {"uplift": None, "uplift_low": None, "uplift_high": None, "p_value": None}
    if n <= 0 or control_n <= 0:
        return out
    table = np.array([[hits, n - hits], [control_hits, control_n - control_hits]])
    if table.sum(axis=0).min() == 0:  # nobody (or everybody) converted in both groups: no evidence
        out["p_value"] = 1.0
    else:
        out["p_value"] = float(stats.chi2_contingency(table, correction=False).pvalue)
    if control_hits > 0:
        rr = relative_risk(int(hits), int(n), int(control_hits), int(control_n))
        out["uplift"] = float(rr.relative_risk) - 1.0
        if hits > 0:
            ci = rr.confidence_interval(confidence_level=confidence)
            out["uplift_low"], out["uplift_high"] = float(ci.low) - 1.0, float(ci.high) - 1.0
    return out


def mean_difference(values: np.ndarray, control: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Difference of means with Welch's interval and p-value (scipy.stats.ttest_ind)."""
    from scipy import stats

    out: dict[str, Any] = {
        "difference": None,
        "difference_low": None,
        "difference_high": None,
        "p_value": None,
    }
    if len(values) < 2 or len(control) < 2:
        return out
    out["difference"] = float(np.mean(values) - np.mean(control))
    if np.var(values) == 0 and np.var(control) == 0:
        out["p_value"] = 1.0 if out["difference"] == 0 else 0.0
        out["difference_low"] = out["difference_high"] = out["difference"]
        return out
    t = stats.ttest_ind(values, control, equal_var=False)
    ci = t.confidence_interval(confidence_level=confidence)
    out.update(p_value=float(t.pvalue), difference_low=float(ci.low), difference_high=float(ci.high))
    return out


def sample_ratio(
    users: Mapping[str, int], shares: Mapping[str, float], alpha: float = 0.001
) -> dict[str, Any]:
    """Chi-square goodness of fit of customers per variant against the configured shares
    (scipy.stats.chisquare). A variant with customers but no configured share is a mismatch too."""
    from scipy import stats

    total = int(sum(users.values()))
    unexpected = sorted(v for v, n in users.items() if n > 0 and shares.get(v, 0) <= 0)
    configured = [v for v, s in shares.items() if s > 0]
    out: dict[str, Any] = {
        "expected": ", ".join(f"{v}={shares[v]:g}" for v in configured),
        "observed": ", ".join(f"{v}={int(users.get(v, 0))}" for v in sorted(set(configured) | set(users))),
        "chi2": None,
        "p_value": None,
        "flagged": bool(unexpected),
        "note": f"customers in variants without a configured share: {', '.join(unexpected)}"
        if unexpected
        else "",
    }
    if total == 0 or len(configured) < 2:
        out["note"] = out["note"] or "fewer than two variants configured: nothing to compare"
        return out
    obs = np.array([users.get(v, 0) for v in configured], dtype=float)
    exp = np.array([shares[v] for v in configured], dtype=float)
    exp = exp / exp.sum() * obs.sum()
    res = stats.chisquare(obs, exp)
    out["chi2"], out["p_value"] = float(res.statistic), float(res.pvalue)
    out["flagged"] = bool(unexpected) or bool(res.pvalue < alpha)
    if res.pvalue < alpha:
        out["note"] = (out["note"] + "; " if out["note"] else "") + (
            f"the split differs from the configured shares (p < {alpha:g}): assignment or logging is "
            "broken, do not trust the uplift"
        )
    return out
