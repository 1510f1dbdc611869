"""The sweep runner.

A sweep is ``fn`` applied to a list of independent *cells* (plain dicts of
settings, each with its ``seed``). ``fn`` must be a module-level function
(picklable, for process pools and Dask) returning a list of row dicts or a
DataFrame. The runner concatenates the rows into one tidy DataFrame, adding
the cell's settings as columns.

NOTE (skeleton): this is the in-process executor; the results cache, the
process pool and the Dask executor plug in behind the same signature.
"""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

__all__ = ["run_sweep"]


def _rows(cell: dict, out: Any) -> pd.DataFrame:
    df = out if isinstance(out, pd.DataFrame) else pd.DataFrame(list(out))
    for k, v in cell.items():
        if k not in df.columns and not isinstance(v, (list, tuple, dict)):
            df[k] = v
    return df


def run_sweep(
    fn: Callable[[dict], Any],
    cells: list[dict],
    *,
    name: str,
    progress: bool = True,
    device: str = "cpu",
    **options: Any,
) -> pd.DataFrame:
    """Run ``fn(cell)`` for every cell and return one tidy DataFrame.

    Args:
        fn: module-level function ``cell -> rows``.
        cells: independent settings dicts (JSON-serialisable values).
        name: the sweep's name (cache namespace, progress-bar label).
        progress: show a progress bar.
        device: ``"cpu"`` or ``"cuda"``; passed to each cell as ``cell["device"]``
            unless the cell sets it.
    """
    from tqdm.auto import tqdm

    frames = []
    for cell in tqdm(cells, desc=name, disable=not progress, leave=False):
        c = dict(cell)
        c.setdefault("device", device)
        frames.append(_rows(c, fn(c)))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
