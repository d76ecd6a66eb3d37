"""The package's one vocabulary of setting checks, and the constants they and the CLI share.

Every check raises ``ValueError`` with one line that names the setting, the value it got (cut
to 60 characters) and what is allowed, and returns the value in its plain Python type. The
library, the paper's kit and the command line all check through these functions and build
their choices from these constants, so a limit is written once.

This module does not import torch (``as_generator`` does, when called): the command line
imports it to build ``--help`` without loading torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ALPHA_MAX", "COUNT_MAX", "SEED_MAX", "STUDY_SEED_MAX", "OPTIMIZERS", "SGD_MOMENTUM", "CONFIDENCES", "SCHEDULES",
    "check_int", "check_real", "check_range", "check_choice", "check_unique", "check_sizes", "check_methods",
    "check_seed", "as_generator", "plain", "plain_fields",
]

#: Largest alpha accepted anywhere: Beta(alpha, alpha) is 1/2 to within 1e-6 there, and both
#: samplers the package uses (numpy's and torch's) still draw it correctly (numpy returns
#: lambda = 0 near 1e308).
ALPHA_MAX = 1e12
#: Largest count (epochs, samples, widths, ...): any larger one is a typo, and would overflow
#: later, deep in the work.
COUNT_MAX = 2**31 - 1
#: Largest seed of a torch generator or a numpy stream (both take 64-bit seeds).
SEED_MAX = 2**64 - 1
#: Largest seed of a study: its seed also reaches scikit-learn's ``random_state`` (data subsets),
#: which takes no more.
STUDY_SEED_MAX = 2**32 - 1
#: What ``optimizer`` may name, in every trainer of the package.
OPTIMIZERS = ("adam", "sgd")
#: The momentum of ``optimizer="sgd"`` (no dampening, no Nesterov), in every trainer.
SGD_MOMENTUM = 0.9
#: ConfMix's confidence: a fresh forward of the clean batch, or the last epoch's cached one.
CONFIDENCES = ("fresh", "cached")
#: The alpha schedules that depend on the epoch only (``policies.schedule`` builds them).
SCHEDULES = ("constant", "ramp-up", "ramp-down")


def _short(value: object) -> str:
    """``repr(value)`` cut to 60 characters (a 400-digit number makes no 400-character message)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # (numpy's bool_ is no Integral)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` must be an integer (not a bool) in [low, high]; ``high`` defaults to ``COUNT_MAX``."""
    high = COUNT_MAX if high is None else high
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}]; got {_short(value)}")
    return int(value)


def check_real(name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` must be a finite real number in [low, high] (ends open with ``low_open``/``high_open``);
    a one-element tensor or array holding one counts as that number (torch takes a tensor lr)."""
    shown = value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()
    try:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if low_open else value >= low)
              and (value < high if high_open else value <= high))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = "" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be a finite number {lo}{hi}; got {_short(shown)}")
    return float(value)


def check_range(name: str, value: object, *, positive: bool = False, allow_equal: bool = False) -> tuple[float, float]:
    """A pair (low, high) of finite numbers with low < high (low <= high with ``allow_equal``; and
    low > 0 when ``positive``)."""
    try:
        lo, hi = value  # type: ignore[misc]
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not (lo <= hi if allow_equal else lo < hi) or (positive and not lo > 0):
        need = ("0 < low" if positive else "low") + (" <= high" if allow_equal else " < high")
        raise ValueError(f"{name} must be two finite numbers LOW HIGH with {need}; got {_short(value)}")
    return float(lo), float(hi)


def check_choice(name: str, value: object, allowed: Sequence) -> Any:
    """``value`` must be one of ``allowed``."""
    try:
        ok = bool(value in allowed)
    except (TypeError, ValueError):  # an unhashable value against a set; an array's ambiguous truth
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {_short(value)}")
    return value


def check_unique(name: str, values: Iterable) -> None:
    """No value may appear twice in a list setting (it would run the same work twice)."""
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    if dup:
        raise ValueError(f"{name} lists {dup} more than once; give each value once")


def check_sizes(name: str, values: object, low: int = 1, high: int | None = None) -> tuple[int, ...]:
    """One or more integers in [low, high] (``COUNT_MAX`` by default), e.g. hidden widths."""
    high = COUNT_MAX if high is None else high
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        items = None
    if not items or isinstance(values, (str, bytes)) or any(not _is_int(v) or not low <= v <= high for v in items):
        raise ValueError(f"{name} must be one or more integers in [{low}, {high}]; got {_short(values)}")
    return tuple(int(v) for v in items)


def check_methods(values: Sequence[str], valid: Sequence[str], baseline: str, *,
                  name: str = "methods") -> tuple[str, ...]:
    """A study's methods: known ones, each once, the ``baseline`` that every method is compared
    with among them."""
    bad = [m for m in values if m not in valid]
    if bad or isinstance(values, str):
        raise ValueError(f"unknown {name} {_short(bad or values)}; valid {name}: {list(valid)}")
    if baseline not in values:
        raise ValueError(f"{name} must include {baseline!r}, the baseline every method is compared with")
    check_unique(name, values)
    return tuple(values)


def plain(value: object) -> object:
    """``value`` with numpy scalars as Python numbers and lists as tuples, recursively: what a
    frozen config stores, so that it hashes and its settings serialise to JSON. Python values
    are returned as they are."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def plain_fields(config: object) -> None:
    """Store every field of a frozen dataclass ``config`` as :func:`plain` gives it (call first in
    ``__post_init__``, before the checks)."""
    import dataclasses

    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        object.__setattr__(config, f.name, plain(getattr(config, f.name)))


def check_seed(name: str, value: object, high: int = SEED_MAX) -> int:
    """An integer seed in [0, ``high``] (``SEED_MAX`` by default)."""
    return check_int(name, value, 0, high)


def as_generator(seed_or_generator: object, name: str = "seed"):
    """A CPU ``torch.Generator``: the one given, or a new one seeded with the int (checked by
    ``check_seed``). The one way the package turns a seed into a torch generator."""
    import torch

    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if not _is_int(seed_or_generator):
        raise TypeError(f"{name} must be a torch.Generator or an int seed in [0, {SEED_MAX}]; "
                        f"got {type(seed_or_generator).__name__}")
    return torch.Generator().manual_seed(check_seed(name, seed_or_generator))
