"""The results cache: every finished sweep cell stored once, atomically.

Store: one SQLite database file, ``<cache_dir>/results.sqlite``, with one table
``cells(key PRIMARY KEY, sweep, fn, settings, version, format, payload, created)``.
The payload is the cell's tidy rows serialised in the Arrow IPC stream format
when the columns are numbers, bools or strings (exact; a stable columnar format,
readable by any later pandas/pyarrow; ~0.5 ms per cell each way against ~1.2/2.4
ms for Parquet), else as a pickle (mixed-type or exotic columns).

Why SQLite rather than Parquet files plus an index file:

* **Atomicity for free.** Each cell is one ``INSERT`` in its own transaction,
  committed to SQLite's write-ahead log, so a ``SIGKILL`` at any instant leaves
  either the whole row or nothing (a power loss may also drop the last few
  commits, which are then recomputed; it cannot corrupt the store). A Parquet-files store
  needs ``tmp + os.replace`` for every file *and* a second atomic update of the
  index, and a kill between the two leaves them inconsistent.
* **The index is the table.** The primary key is the lookup; there is no separate
  index to rebuild, and listing/clearing a sweep is one query.
* **Standard library, one file at rest.** Nothing to install; once closed, the
  cache is one file (``results.sqlite``; the ``-wal``/``-shm`` side files exist
  only while a sweep runs, or after a kill until the next open replays them).
* **Fast commits.** A WAL commit costs ~0.02 ms; one Parquet file per cell with
  fsync'd renames costs milliseconds and litters the directory.
* Cells are small (a few rows each), so SQLite's per-row blob storage costs
  nothing next to the computation; the sweep's *result* table is still written
  as Parquet/CSV by the report.

Only the process that drives the sweep (the client, never a Dask worker or pool
process) writes to the store, so there is a single writer; a busy timeout
covers two sweeps sharing one cache directory. WAL needs a local file system:
put ``--cache-dir`` on a local disk, not NFS.

Keys: ``sha256`` of the canonical JSON of ``(fn's module + qualname, sha256 of
fn's source, the cell's settings incl. seed and device, normfield version)``.
The source hash means editing a cell function invalidates its cached cells;
functions it calls are not hashed, so pass ``fresh=True`` (``--fresh``) after
editing them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from normfield.errors import NormfieldError

__all__ = ["ResultCache", "cell_key", "fn_identity", "canonical_json"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key      TEXT PRIMARY KEY,
    sweep    TEXT NOT NULL,
    fn       TEXT NOT NULL,
    settings TEXT NOT NULL,
    version  TEXT NOT NULL,
    format   TEXT NOT NULL,
    payload  BLOB NOT NULL,
    created  REAL NOT NULL
)
"""
DB_NAME = "results.sqlite"


def _numpy_scalar(x: Any) -> Any:
    """NumPy scalars as plain numbers (np.int64(3) and 3 are the same setting)."""
    import numpy as np

    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def canonical_json(obj: Any, *, argument: str = "cells") -> str:
    """Canonical JSON (sorted keys, no spaces) of JSON-able settings.

    Raises:
        NormfieldError: naming ``argument`` when a value is not JSON-serialisable
            or is a non-finite float (NaN settings would never hit the cache).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_numpy_scalar)
    except (TypeError, ValueError) as e:
        raise NormfieldError(
            f"{argument}: every cell must be a dict of JSON-serialisable, finite settings "
            f"(numbers, strings, lists); {e}",
            argument=argument,
        ) from None


def fn_identity(fn: Callable[..., Any]) -> dict[str, str]:
    """Module, qualified name and a hash of the source of a cell function."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(type(fn))
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = ""
    return {"fn": f"{module}.{qualname}", "source": hashlib.sha256(src.encode()).hexdigest()[:16]}


def cell_key(fn_id: dict[str, str], cell: dict[str, Any], version: str) -> str:
    """The cache key of one cell: a hex sha256."""
    blob = canonical_json({"fn": fn_id["fn"], "source": fn_id["source"], "cell": cell, "version": version})
    return hashlib.sha256(blob.encode()).hexdigest()


def _arrow_safe(df: pd.DataFrame) -> bool:
    """Columns that round-trip through Arrow exactly: numbers, bools, strings."""
    if not all(isinstance(c, str) for c in df.columns) or df.columns.has_duplicates:
        return False
    for col, dt in df.dtypes.items():
        if dt.kind in "biuf":
            continue
        if isinstance(dt, pd.StringDtype) and all(isinstance(v, str) for v in df[col]):
            continue  # pandas' string dtype holding only strings (no missing values): exact in Arrow
        return False
    return True


def _dumps(df: pd.DataFrame) -> tuple[str, bytes]:
    """Arrow IPC where it is exact (numbers, bools, strings), else a pickle."""
    df = df.reset_index(drop=True)
    if _arrow_safe(df):
        import pyarrow as pa

        table = pa.Table.from_pandas(df, preserve_index=False)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return "arrow", sink.getvalue().to_pybytes()
    return "pickle", pickle.dumps(df, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(fmt: str, payload: bytes) -> pd.DataFrame:
    if fmt == "arrow":
        import pyarrow as pa

        return pa.ipc.open_stream(payload).read_all().to_pandas()
    if fmt == "parquet":  # written by earlier development versions
        import io

        return pd.read_parquet(io.BytesIO(payload))
    if fmt == "pickle":
        return pickle.loads(payload)  # noqa: S301 - the user's own local cache
    raise ValueError(f"unknown cache payload format {fmt!r}")


class ResultCache:
    """A results store in ``cache_dir`` (see the module docstring).

    The database file is created lazily, on the first :meth:`put`, so that a
    sweep refused on bad input writes nothing.

    Args:
        cache_dir: directory of the store.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir).expanduser()
        self.path = self.dir / DB_NAME
        self._conn: sqlite3.Connection | None = None
        self.unreadable = 0  # entries found but not decodable (treated as missing)
        if self.dir.exists() and not self.dir.is_dir():
            raise NormfieldError(f"--cache-dir {str(self.dir)!r} exists and is not a directory",
                                 argument="--cache-dir")

    # -- connection ---------------------------------------------------------
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            if not create:
                return None
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NormfieldError(f"--cache-dir {str(self.dir)!r} cannot be created: {e.strerror}",
                                     argument="--cache-dir") from None
        try:
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            # Write-ahead log: a commit is appended to results.sqlite-wal before it returns, so it
            # survives a kill of this process; an interrupted transaction is never visible. With
            # synchronous=NORMAL a power loss may drop the last commits (they are recomputed) but
            # never corrupts the store. ~0.02 ms per commit against ~20 ms for an fsync'd journal.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise NormfieldError(
                f"--cache-dir {str(self.dir)!r}: {DB_NAME} is not a readable normfield cache ({e}); "
                "delete it or pass another --cache-dir",
                argument="--cache-dir",
            ) from None
        self._conn = conn
        return conn

    def check(self) -> None:
        """Refuse, before any work, a store that exists but cannot be read (writes nothing)."""
        conn = self._connect(create=False)
        if conn is None:
            return
        try:
            conn.execute("SELECT key, format FROM cells LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            self.close()
            raise NormfieldError(f"--cache-dir {str(self.dir)!r}: cannot read the cache ({e}); "
                                 "delete it or pass another --cache-dir", argument="--cache-dir") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- access -------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, pd.DataFrame]:
        """Cached tables for those of ``keys`` that are present."""
        conn = self._connect(create=False)
        keys = list(keys)
        out: dict[str, pd.DataFrame] = {}
        if conn is None or not keys:
            return out
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, format, payload FROM cells WHERE key IN ({','.join('?' * len(chunk))})"
                for key, fmt, payload in conn.execute(q, chunk):
                    try:
                        out[key] = _loads(fmt, payload)
                    except Exception:  # noqa: BLE001 - an entry this version cannot read is a miss:
                        self.unreadable += 1  # it is recomputed and overwritten, never trusted
        except sqlite3.DatabaseError as e:
            raise NormfieldError(f"--cache-dir {str(self.dir)!r}: cannot read the cache ({e}); "
                                 "delete it or pass another --cache-dir", argument="--cache-dir") from None
        return out

    def put(self, key: str, *, sweep: str, fn: str, cell: dict[str, Any], version: str, df: pd.DataFrame) -> None:
        """Store one finished cell in one transaction (all or nothing)."""
        conn = self._connect(create=True)
        assert conn is not None
        fmt, payload = _dumps(df)
        try:
            with conn:  # BEGIN ... COMMIT, or ROLLBACK on error
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?)",
                    (key, sweep, fn, canonical_json(cell), version, fmt, sqlite3.Binary(payload), time.time()),
                )
        except sqlite3.OperationalError as e:
            raise NormfieldError(f"--cache-dir {str(self.dir)!r}: cannot write the cache ({e})",
                                 argument="--cache-dir") from None

    def summary(self) -> pd.DataFrame:
        """One row per sweep: number of cells and bytes stored."""
        conn = self._connect(create=False)
        if conn is None:
            return pd.DataFrame(columns=["sweep", "fn", "version", "cells", "bytes"])
        rows = conn.execute(
            "SELECT sweep, fn, version, COUNT(*), SUM(LENGTH(payload)) FROM cells GROUP BY sweep, fn, version "
            "ORDER BY sweep"
        ).fetchall()
        return pd.DataFrame(rows, columns=["sweep", "fn", "version", "cells", "bytes"])

    def __len__(self) -> int:
        conn = self._connect(create=False)
        if conn is None:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0])

    def clear(self, sweep: str | None = None) -> int:
        """Delete every cell (or those of one sweep); returns how many."""
        conn = self._connect(create=False)
        if conn is None:
            return 0
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if sweep is None:
                cur = conn.execute("DELETE FROM cells")
            else:
                cur = conn.execute("DELETE FROM cells WHERE sweep = ?", (sweep,))
        return int(cur.rowcount)
