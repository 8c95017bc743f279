"""Consent, the one rule (CONTRACT.md "Privacy"): where a customers table exists, a missing consent
is no consent; a shop without a customers table has not asked anyone, so nobody has refused.

Every place that decides whether a customer may be personalised (the feature build's
`profiles.consent_personalisation`, the serving state, customers updated through `POST /customers`)
and whether they may be mailed (`consent_email`, the campaign feeds) asks these functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONSENT_COLUMNS: tuple[str, ...] = ("consent_personalisation", "consent_email")


def consent_given(value: Any, *, has_customers_table: bool) -> bool:
    """True only for an explicit yes when the shop keeps a customers table; without one, True."""
    if not has_customers_table:
        return True
    if value is None or value is np.nan:
        return False
    try:
        import pandas as pd

        if pd.isna(value):
            return False
    except (TypeError, ValueError):
        pass
    return bool(value)


def consent_sql(column: str, *, has_customers_table: bool) -> str:
    """The same rule as a SQL expression over a (left-joined, possibly NULL) boolean column."""
    return f"coalesce({column}, FALSE)" if has_customers_table else "TRUE"
