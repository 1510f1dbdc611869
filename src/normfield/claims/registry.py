"""Claim registry.

A claim is a function ``f(ctx: ClaimContext) -> ClaimResult`` decorated with
:func:`claim`. It computes tidy data (through ``ctx.sweep`` so that results are
cached and can run on Dask), draws a figure with ``ctx.figure_path``, and
returns a verdict that compares measured numbers with what the paper states.
Claim ids are stable (``J-fig3``, ``K-thm3.4`` ...); scripts call them by id.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from normfield.core.validation import check_int
from normfield.errors import NormfieldError

__all__ = ["ClaimSpec", "ClaimResult", "ClaimContext", "claim", "alias", "aliases", "expand_ids", "all_claims",
           "get_claim", "run_claims"]

SCALES = ("smoke", "quick", "paper")  # smoke: tiny sizes that exercise the code; its verdicts mean nothing
FAILURE_KINDS = ("not-reproduced", "unexplained")  # see ClaimResult.failure


@dataclass(frozen=True)
class ClaimSpec:
    """Static description of a claim.

    Attributes:
        id: stable identifier, e.g. ``"J-fig3"``.
        title: one line.
        paper: ``"Joudaki et al. 2023"`` or ``"Karakida et al. 2019"`` (or ``"normfield"``).
        reference: equation / figure / theorem number in the paper.
        statement: the claim as the paper states it, in words.
        func: ``f(ctx) -> ClaimResult``.
        order: sort key within the report.
    """

    id: str
    title: str
    paper: str
    reference: str
    statement: str
    func: Callable[["ClaimContext"], "ClaimResult"]
    order: float = 0.0


@dataclass
class ClaimResult:
    """Outcome of one claim check.

    Attributes:
        verdict: ``"PASS"`` or ``"FAIL"``.
        measured: the numbers computed (JSON-serialisable).
        expected: what the paper states / the acceptance criterion.
        settings: the settings used (sizes, seeds, activation, ...).
        figures: PNG paths written by the claim.
        data: tidy DataFrames by name (saved to Parquet/CSV by the report).
        notes: free text, e.g. the investigated cause of a FAIL, or how the
            quick scale differs from the paper's.
        failure: for a FAIL, what kind: ``"not-reproduced"`` (a paper statement
            that the data contradict, its cause measured and given in ``notes``)
            or ``"unexplained"`` (a crash, a refused check, or a failure nobody
            has explained yet, the default); empty for a PASS.
    """

    verdict: str
    measured: dict[str, Any]
    expected: dict[str, Any] | str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    data: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: str = ""
    failure: str = ""
    # filled in by run_claims
    id: str = ""
    title: str = ""
    paper: str = ""
    reference: str = ""
    statement: str = ""
    wall_time_s: float = 0.0
    sweeps: list[dict[str, Any]] = field(default_factory=list)  # runner bookkeeping: cells, cached, seeds...

    def __post_init__(self) -> None:
        if self.verdict not in ("PASS", "FAIL"):
            raise ValueError(f"verdict must be PASS or FAIL, got {self.verdict!r}")
        if self.verdict == "PASS":
            if self.failure:
                raise ValueError(f"a PASS has no failure kind, got {self.failure!r}")
        elif not self.failure:
            self.failure = "unexplained"
        if self.failure not in ("", *FAILURE_KINDS):
            raise ValueError(f"failure must be one of {FAILURE_KINDS}, got {self.failure!r}")


@dataclass
class ClaimContext:
    """What a claim function gets.

    Attributes:
        scale: ``"quick"`` (every claim of both papers in minutes on 2 CPU
            cores), ``"paper"`` (the papers' own sizes), or ``"smoke"`` (tiny
            sizes that exercise the code path in the test suite; verdicts at
            this scale mean nothing).
        out_dir: report directory; figures go under ``out_dir / "figures"``.
        device: ``"cpu"`` or ``"cuda"``.
        seed: base seed; claims derive per-cell seeds from it.
        sweep_options: keyword options forwarded to :func:`normfield.runner.run_sweep`
            (cache_dir, fresh, scheduler, dask_local, workers, threads, timeout).
        progress: show the sweeps' progress bars.
        sweep_log: bookkeeping of the sweeps run by the current claim (cells, cached,
            computed, executor, seeds, wall time); :func:`run_claims` copies it into
            ``ClaimResult.sweeps`` and the report shows it.
    """

    scale: str = "quick"
    out_dir: Path = Path("normfield-report")
    device: str = "cpu"
    seed: int = 0
    sweep_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    sweep_log: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def figure_path(self, name: str) -> Path:
        d = Path(self.out_dir) / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{name}.png"

    def sweep(self, fn: Callable[[dict], Any], cells: Iterable[dict], *, name: str) -> pd.DataFrame:
        """Run ``fn`` over ``cells`` with the runner (cached, local or Dask)."""
        from normfield.runner import run_sweep

        opts = dict(self.sweep_options)
        opts.setdefault("progress", self.progress)
        opts.setdefault("device", self.device)
        df = run_sweep(fn, list(cells), name=name, **opts)
        self.sweep_log.append(dict(df.attrs.get("sweep", {"name": name})))
        return df

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    def pick(self, *, smoke: Any, quick: Any, paper: Any) -> Any:
        """Choose a setting by scale: ``ctx.pick(smoke=50, quick=1000, paper=10000)``."""
        if self.scale not in SCALES:
            raise NormfieldError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}", argument="--scale")
        return {"smoke": smoke, "quick": quick, "paper": paper}[self.scale]


_CLAIMS: dict[str, ClaimSpec] = {}
_ALIASES: dict[str, tuple[str, ...]] = {}
_DISCOVERED = False


def claim(
    id: str, *, title: str, paper: str, reference: str, statement: str, order: float = 0.0
) -> Callable[[Callable[[ClaimContext], ClaimResult]], Callable[[ClaimContext], ClaimResult]]:
    """Decorator registering a claim function under a stable ``id``."""

    def deco(func: Callable[[ClaimContext], ClaimResult]) -> Callable[[ClaimContext], ClaimResult]:
        if id in _CLAIMS and _CLAIMS[id].func.__qualname__ != func.__qualname__:
            raise RuntimeError(f"claim id {id!r} registered twice")
        _CLAIMS[id] = ClaimSpec(id, title, paper, reference, statement, func, order)
        return func

    return deco


def alias(name: str, ids: Iterable[str]) -> None:
    """Register ``name`` as an alias that runs the claims ``ids`` (e.g. a claim split in two)."""
    ids = tuple(ids)
    if not ids:
        raise RuntimeError(f"alias {name!r} names no claims")
    if name in _ALIASES and _ALIASES[name] != ids:
        raise RuntimeError(f"alias {name!r} registered twice")
    _ALIASES[name] = ids


def aliases() -> dict[str, tuple[str, ...]]:
    """Every registered alias: name -> the claim ids it runs."""
    _discover()
    return dict(_ALIASES)


def expand_ids(ids: Iterable[str]) -> list[str]:
    """Claim ids with each alias replaced by the claims it names, first occurrence kept."""
    _discover()
    out: list[str] = []
    for i in ids:
        for j in _ALIASES.get(i, (i,)):
            if j not in out:
                out.append(j)
    return out


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import normfield.claims as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in ("registry",) or mod.name.startswith("_"):
            continue
        importlib.import_module(f"normfield.claims.{mod.name}")  # a broken claim module raises: a bug to see
    _DISCOVERED = True


def all_claims() -> list[ClaimSpec]:
    """Every registered claim, in report order."""
    _discover()
    return sorted(_CLAIMS.values(), key=lambda c: (c.order, c.id))


def get_claim(claim_id: str) -> ClaimSpec:
    """The claim registered under ``claim_id``; error lists the known ids."""
    _discover()
    if claim_id not in _CLAIMS:
        known = [c.id for c in all_claims()] + [f"{a} (= {' + '.join(v)})" for a, v in sorted(_ALIASES.items())]
        raise NormfieldError(
            f"CLAIM_ID: unknown claim id {claim_id!r}; known (normfield reproduce --list): {', '.join(known)}",
            argument="CLAIM_ID",
        )
    return _CLAIMS[claim_id]


def import_errors() -> dict[str, str]:
    """Claim modules that failed to import: always empty, since a claim module that fails to import
    raises its error from :func:`all_claims` / :func:`get_claim` (kept for callers of this function)."""
    _discover()
    return {}


_RUN_LEVEL_ARGS = ("--scheduler", "--dask-local", "--workers", "--cache-dir", "--device", "--threads", "executor",
                   "timeout", "--scale", "CLAIM_ID")


def _run_level(e: NormfieldError) -> bool:
    arg = e.argument or ""
    return any(arg.startswith(a) for a in _RUN_LEVEL_ARGS)


def run_claims(
    ids: Iterable[str] | None, ctx: ClaimContext, *, on_result: Callable[[ClaimResult], None] | None = None,
    side_by_side: int | None = None,
) -> list[ClaimResult]:
    """Run the claims ``ids`` (all when None) and return their results, in the order of ``ids``.

    A claim that raises is reported as FAIL with the error in ``notes``:
    the report never hides a crash. A :class:`NormfieldError` about the run's
    own configuration (scheduler, workers, cache directory, device, scale) is
    raised instead, since every later claim would meet it too.

    When the sweeps run on at least three other processes (a local pool or Dask), several
    claims are in flight at once (:func:`normfield.runner.sidebyside.run_side_by_side`): each
    claim's own code still runs alone, while the cells of all of them share the pool,
    so the numbers are those of a run one claim after the other. ``side_by_side``
    sets how many claims may be in flight (default
    :func:`~normfield.runner.sidebyside.side_by_side_width`; 1: one after the other).
    ``on_result`` is called as each claim finishes; ``wall_time_s`` is then the
    claim's elapsed time, waits for the shared pool included.
    """
    from normfield.runner.sidebyside import run_side_by_side, side_by_side_width

    specs = all_claims() if not ids else [get_claim(i) for i in expand_ids(ids)]
    width = (side_by_side_width(ctx.sweep_options, ctx.device, len(specs)) if side_by_side is None
             else check_int("side_by_side", side_by_side, minimum=1))

    def task(spec: ClaimSpec) -> Callable[[], ClaimResult]:
        # each claim gets its own sweep log; the rest of the context is shared and read-only
        return lambda: _run_one(spec, dataclasses.replace(ctx, sweep_log=[]) if width > 1 else ctx)

    done = None if on_result is None else (lambda i, r: on_result(r))
    return run_side_by_side([task(s) for s in specs], width, on_done=done)


def _run_one(spec: ClaimSpec, ctx: ClaimContext) -> ClaimResult:
    t0 = time.perf_counter()
    ctx.sweep_log.clear()
    try:
        res = spec.func(ctx)
    except NormfieldError as e:
        if _run_level(e):  # the run's own configuration (executor, cache, device): stop the run
            raise
        res = ClaimResult(  # the check refused its own settings (e.g. over the memory cap at this scale)
            verdict="FAIL",
            measured={},
            expected=spec.statement,
            notes=f"the check was refused: {e} (argument {e.argument!r}); see the claim's settings "
            f"at scale {ctx.scale!r}",
        )
    except Exception as e:  # noqa: BLE001 - reported as FAIL with its traceback
        res = ClaimResult(
            verdict="FAIL",
            measured={},
            expected=spec.statement,
            notes=f"the check crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}",
        )
    res.id, res.title, res.paper = spec.id, spec.title, spec.paper
    res.reference, res.statement = spec.reference, spec.statement
    res.wall_time_s = time.perf_counter() - t0
    res.sweeps = list(ctx.sweep_log)
    return res
