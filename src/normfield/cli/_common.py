"""Shared CLI pieces: common flags, JSON/table output, argument parsing."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable, Iterable, Sequence

from normfield.errors import NormfieldError

__all__ = ["add_json_flag", "add_device_flags", "emit", "format_table", "parse_float_list", "fmt"]


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def add_device_flags(p: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    if dtype:
        p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                       help="simulation dtype (default float64)")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.6g}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A plain aligned text table."""
    rows = list(rows)
    if not rows:
        return "(empty)"
    cols = list(columns) if columns is not None else list(rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    body = "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    return f"{line}\n{sep}\n{body}"


def emit(args: argparse.Namespace, payload: dict[str, Any], render: Callable[[dict], str]) -> None:
    """Print ``payload`` as JSON (``--json``) or through ``render``."""
    from normfield.jsonable import jsonable

    if getattr(args, "json", False):
        print(json.dumps(jsonable(payload)))
    else:
        print(render(payload))


def parse_float_list(name: str, text: str | None) -> list[float] | None:
    """Parse ``"1,2.5,3"``; error names the option."""
    if text is None:
        return None
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise NormfieldError(f"{name} must be a comma-separated list of numbers, got {text!r}",
                             argument=name) from None
    if not vals:
        raise NormfieldError(f"{name} must not be empty", argument=name)
    return vals
