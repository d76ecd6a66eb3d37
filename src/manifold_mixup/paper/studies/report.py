"""What the studies share: checking a setting (one clear line naming it, before anything is
written) and writing CSV tables atomically."""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Sequence
from pathlib import Path

from ..files import COUNT_MAX, write_atomic

__all__ = ["write_csv", "check_int", "check_real", "check_range", "check_choices", "check_unique", "ALPHA_MAX"]

#: Largest alpha the Beta(alpha, alpha) samplers draw correctly (numpy's gives lambda = 0 at 1e308).
ALPHA_MAX = 1e6


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV, through a temporary file and a rename."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(Path(path), buf.getvalue())


def _short(value: object) -> str:
    """``repr(value)`` cut to 60 characters (a 400-digit number makes no 400-character message)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """``value`` must be an int (not a bool) in [low, high]; ``high`` defaults to ``COUNT_MAX``
    (2**31 - 1: any larger count is a typo, and would overflow later, deep in the work)."""
    high = COUNT_MAX if high is None else high
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}]; got {_short(value)}")


def check_real(name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """``value`` must be a finite real number in [low, high] (or (low, high] with ``low_open``)."""
    try:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and (
            value > low if low_open else value >= low) and value <= high
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = "" if high == math.inf else f" and <= {high:g}"
        raise ValueError(f"{name} must be a finite number {lo}{hi}; got {_short(value)}")


def check_range(name: str, value: Sequence, *, positive: bool = False) -> None:
    """A pair (low, high) of finite numbers with low < high (and low > 0 when ``positive``)."""
    try:
        lo, hi = value
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok or not lo < hi or (positive and not lo > 0):
        need = "0 < low < high" if positive else "low < high"
        raise ValueError(f"{name} must be two finite numbers LOW HIGH with {need}; got {value!r}")


def check_choices(name: str, value: object, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")


def check_unique(name: str, values: Sequence) -> None:
    """No value may appear twice in a list setting (it would run the same work twice)."""
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    if dup:
        raise ValueError(f"{name} lists {dup} more than once; give each value once")
