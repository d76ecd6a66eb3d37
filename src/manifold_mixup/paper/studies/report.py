"""What the studies share in their outputs: CSV tables written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import write_atomic

__all__ = ["write_csv"]


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV, through a temporary file and a rename."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(Path(path), buf.getvalue())
