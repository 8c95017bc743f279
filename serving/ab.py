"""A/B testing and attribution: variant assignment, recommendation ids, the impression log, a report.

- `assign(user_id, shares, salt)`: deterministic by hash, so a customer sees the same variant on
  every replica and every day (until the salt changes, which starts a new experiment).
  Variants are e.g. champion / challenger / control (= popular); shares are validated.
- `new_recommendation_id()`: the id every response carries; clicks and purchases that quote it
  are attributed to that block.
- `ImpressionLog`: JSON lines (recommendation_id, variant, model_version, hashed user id, items,
  timestamp). The raw customer id never reaches the file (GDPR): only a salted hash.
- The report of an experiment (attribution, intervals, uplift, sample-ratio check) is
  serving.ab_report, behind `shoprec ab report`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

# The variants a customer can be assigned: the registry's champion and challenger, and the control
# group, which gets the non-personal popular block for the same context.
VARIANTS: tuple[str, ...] = ("champion", "challenger", "control")
CONTROL = "control"
DEFAULT_SHARES: dict[str, float] = {"champion": 0.8, "challenger": 0.1, "control": 0.1}
DEFAULT_SALT = "shoprec-ab-1"


def validate_shares(shares: dict[str, float]) -> dict[str, float]:
    """Check variant shares: non-empty names, finite shares >= 0 that sum to 1 (±1e-6).
    Returns them as floats; raises ValueError saying what is wrong."""
    if not shares:
        raise ValueError("A/B shares are empty: give at least one variant, e.g. {'champion': 1.0}")
    out: dict[str, float] = {}
    for name, share in shares.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"A/B variant names must be non-empty strings, got {name!r}")
        try:
            value = float(share)
        except (TypeError, ValueError):
            raise ValueError(f"A/B share of {name!r} must be a number, got {share!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"A/B share of {name!r} must be a finite number >= 0, got {share!r}")
        out[name] = value
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"A/B shares must sum to 1, got {total:g} ({out})")
    return out


def parse_shares(text: str) -> dict[str, float]:
    """`champion=0.8,challenger=0.1,control=0.1` (SHOPREC_AB_SHARES) -> {variant: share}, normalised
    to sum 1, variants with share 0 left out. The one parser of shares: the service, the e-mail
    feed and the report read the same string. Unknown variants, negative or non-numeric shares and
    an all-zero split are errors naming the setting."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in VARIANTS:
            raise ValueError(f"SHOPREC_AB_SHARES: expected name=share with name in {VARIANTS}, got {part!r}")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(
                f"SHOPREC_AB_SHARES: share {value.strip()!r} of {name} is not a number"
            ) from None
        if not math.isfinite(share) or share < 0:
            raise ValueError(f"SHOPREC_AB_SHARES: share of {name} must be >= 0, got {share}")
        shares[name] = share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"SHOPREC_AB_SHARES: shares must sum to more than 0, got {text!r}")
    return {name: share / total for name, share in shares.items() if share > 0}


def _unit(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from the salted hash of the user id (SHA-256: stable across
    processes and Python versions, unlike hash())."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(user_id: str, shares: dict[str, float], salt: str = DEFAULT_SALT) -> str:
    """The variant of `user_id`: the hash's position in the cumulative shares, in the order given.
    Deterministic for (user_id, shares, salt); validates `shares`."""
    shares = validate_shares(shares)
    u = _unit(str(user_id), salt)
    acc = 0.0
    last = None
    for name, share in shares.items():
        if share <= 0:
            continue
        acc += share
        last = name
        if u < acc:
            return name
    return last  # rounding: u just below 1.0 with shares summing to 1 - 1e-7


def hash_user(user_id: str, salt: str = DEFAULT_SALT) -> str:
    """The pseudonymous user id written to logs: salted SHA-256, 16 hex characters."""
    return hashlib.sha256(f"{salt}\x00user\x00{user_id}".encode()).hexdigest()[:16]


def new_recommendation_id() -> str:
    """A unique id for one answered block (random UUID4, 32 hex characters)."""
    return uuid.uuid4().hex


class ImpressionLog:
    """Appends one JSON line per answered block to `path` (thread-safe). Fields: recommendation_id,
    variant, model_version, user (salted hash, never the raw id), items (ids in shown order), ts
    (epoch s), and optionally endpoint.

    Lines are buffered and written out at least every `flush_seconds` (and on `flush()`/`close()`),
    by the next answer or, when none comes, by a background timer, so a quiet service's last
    answers still reach the log for the report: a write per request cost a system call on every
    answer. A crash loses at most the last
    `flush_seconds` of impressions; `flush_seconds=0` writes every line at once. Each write is
    whole lines in one `write(2)` on a file opened for appending, so several worker processes can
    share one log without tearing each other's lines."""

    def __init__(self, path: str | Path, *, salt: str = DEFAULT_SALT, flush_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.salt = salt
        self.flush_seconds = float(flush_seconds)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending: list[str] = []
        self._flushed_at = time.monotonic()
        self._closed = threading.Event()
        if self.flush_seconds > 0:
            threading.Thread(target=self._flush_when_quiet, name="shoprec-impressions", daemon=True).start()

    def _flush_when_quiet(self) -> None:
        while not self._closed.wait(self.flush_seconds):
            with self._lock:
                if self._pending and time.monotonic() - self._flushed_at >= self.flush_seconds:
                    self._write_pending()

    def log(
        self,
        recommendation_id: str,
        variant: str,
        model_version: str,
        user_id: str | None,
        items: list[str],
        *,
        timestamp: float | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Write one impression; returns the record written."""
        record: dict[str, Any] = {
            "recommendation_id": recommendation_id,
            "variant": variant,
            "model_version": model_version,
            "user": hash_user(user_id, self.salt) if user_id is not None else None,
            "items": list(items),
            "ts": time.time() if timestamp is None else float(timestamp),
        }
        if endpoint is not None:
            record["endpoint"] = endpoint
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fd is None:
                raise ValueError(f"impression log {self.path} is closed")
            self._pending.append(line)
            if time.monotonic() - self._flushed_at >= self.flush_seconds:
                self._write_pending()
        return record

    def _write_pending(self) -> None:  # holding self._lock
        self._flushed_at = time.monotonic()
        if not self._pending or self._fd is None:
            return
        data = "".join(self._pending).encode("utf-8")
        self._pending.clear()
        while data:
            data = data[os.write(self._fd, data) :]

    def flush(self) -> None:
        """Write out every buffered line now."""
        with self._lock:
            self._write_pending()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._write_pending()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> ImpressionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forget_impressions(path: str | Path, user_id: str, salt: str = DEFAULT_SALT) -> int:
    """Blank the impression-log lines of one customer (their salted hash) in place: each becomes
    spaces of the same length, which readers skip, so a service appending at the same time loses
    nothing and no line moves. Returns how many lines were blanked."""
    path = Path(path)
    if not path.exists():
        return 0
    needle = f'"user":"{hash_user(user_id, salt)}"'.encode()
    data = path.read_bytes()
    spans, pos = [], 0
    for line in data.splitlines(keepends=True):
        if needle in line and line.endswith(b"\n"):
            spans.append((pos, len(line) - 1))
        pos += len(line)
    if spans:
        with open(path, "r+b") as f:
            for start, length in spans:
                f.seek(start)
                f.write(b" " * length)
            f.flush()
            os.fsync(f.fileno())
    return len(spans)


def read_impressions(path: str | Path) -> pd.DataFrame:
    """The impression log as a frame (one row per block); empty frame when the file is absent."""
    path = Path(path)
    cols = ["recommendation_id", "variant", "model_version", "user", "items", "ts"]
    if not path.exists():
        return pd.DataFrame({c: [] for c in cols})
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return pd.DataFrame(rows, columns=[*cols, *sorted({k for r in rows for k in r} - set(cols))])
