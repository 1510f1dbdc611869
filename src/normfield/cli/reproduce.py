"""``normfield reproduce``: run the registered paper claims and write the report.

Every flag is validated before any claim runs or anything is written: conflicting
executor flags, an unreachable ``--scheduler``, an unwritable ``--out`` or
``--cache-dir`` and unknown claim ids all exit with code 2 and one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from normfield.cli._common import add_json_flag, format_table
from normfield.errors import NormfieldError


def _int_at_least(flag: str, minimum: int, kind: str):
    """An argparse ``type``: an integer >= ``minimum``; ``kind`` says what is expected when ``text``
    is not an integer (e.g. ``"a positive integer"``)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {kind}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {v}")
        return v

    return parse


def _positive_int(flag: str):
    return _int_at_least(flag, 1, "a positive integer")


def _nonneg_int(flag: str):
    return _int_at_least(flag, 0, "an integer >= 0")


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number of seconds, got {text!r}") from None
        if not (v > 0 and v < float("inf")):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text!r}")
        return v

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce the papers' claims and write a report",
        description="Run the registered paper claims (all by default) and write report.md, a\n"
        "self-contained report.html, results.json, figures and tidy data (Parquet/CSV) into --out.\n"
        "Finished sweep cells are cached (default OUT/.cache): re-running an interrupted run\n"
        "computes only what is missing.",
        epilog="examples:\n"
        "  normfield reproduce                               every claim, quick scale\n"
        "  normfield reproduce J-fig3 K-thm3.4 --out rep     two claims into ./rep\n"
        "  normfield reproduce --scale paper --dask-local 8  papers' sizes on 8 local Dask workers\n"
        "  normfield reproduce --scheduler tcp://HOST:8786   on a running Dask cluster\n"
        "  normfield reproduce --out quick --compare paper   show where paper-scale verdicts differ",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("claims", nargs="*", metavar="CLAIM_ID", help="claim ids (default: all)")
    p.add_argument("--scale", default="quick", choices=["quick", "paper", "smoke"],
                   help="quick (every claim in minutes on 2 CPU cores, default), paper (the papers' sizes) or "
                   "smoke (tiny sizes that exercise the code in seconds; its verdicts mean nothing)")
    p.add_argument("--out", default="normfield-report", help="output directory (default ./normfield-report)")
    p.add_argument("--list", action="store_true", help="list the claim ids and exit")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="base seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("execution (default: a local process pool sized to the usable CPUs, used when a "
                             "sweep's work repays its start-up)")
    g.add_argument("--workers", type=_positive_int("--workers"), default=None,
                   help="run sweep cells in a local pool of N processes (1: every cell in this process)")
    g.add_argument("--dask-local", type=_positive_int("--dask-local"), default=None, metavar="N",
                   help="start a Dask LocalCluster of N worker processes")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run sweep cells on an existing Dask scheduler")
    g.add_argument("--scheduler-timeout", type=_positive_float("--scheduler-timeout"), default=5.0,
                   metavar="S", help="seconds to wait for --scheduler before giving up (default 5)")
    g.add_argument("--threads", type=_nonneg_int("--threads"), default=1,
                   help="torch/BLAS threads per cell (default 1: bit-identical numbers on every "
                   "executor; 0 = leave torch's default, faster in-process)")
    c = p.add_argument_group("results cache")
    c.add_argument("--cache-dir", default=None, help="results cache directory (default OUT/.cache)")
    c.add_argument("--fresh", action="store_true", help="ignore cached cells and recompute them")
    c.add_argument("--no-cache", action="store_true", help="do not read or write the results cache")
    p.add_argument("--compare", default=None, metavar="RESULTS_JSON",
                   help="results.json (or report directory) of an earlier run, e.g. at the other scale: "
                   "the report shows both verdicts and says where they differ")
    add_json_flag(p)
    p.set_defaults(func=run)


def _writable_dir(path: Path, flag: str) -> None:
    """Refuse a directory that cannot be created or written (creates it)."""
    if path.exists() and not path.is_dir():
        raise NormfieldError(f"{flag} {str(path)!r} exists and is not a directory", argument=flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NormfieldError(f"{flag} {str(path)!r} cannot be created: {e.strerror}", argument=flag) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise NormfieldError(f"{flag} {str(path)!r} is not writable", argument=flag)


def _check_creatable(path: Path, flag: str) -> None:
    """Refuse, without creating anything, a directory that could not be created/written."""
    if path.exists():
        if not path.is_dir():
            raise NormfieldError(f"{flag} {str(path)!r} exists and is not a directory", argument=flag)
        if not os.access(path, os.W_OK | os.X_OK):
            raise NormfieldError(f"{flag} {str(path)!r} is not writable", argument=flag)
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise NormfieldError(f"{flag} {str(path)!r} cannot be created ({str(parent)!r} is not a writable "
                             "directory)", argument=flag)


def _check_conflicts(args: argparse.Namespace) -> None:
    pairs = [
        ("scheduler", "--scheduler", "dask_local", "--dask-local"),
        ("scheduler", "--scheduler", "workers", "--workers"),
        ("dask_local", "--dask-local", "workers", "--workers"),
        ("no_cache", "--no-cache", "cache_dir", "--cache-dir"),
        ("no_cache", "--no-cache", "fresh", "--fresh"),
    ]
    for a, fa, b, fb in pairs:
        va, vb = getattr(args, a), getattr(args, b)
        if va not in (None, False) and vb not in (None, False):
            raise NormfieldError(f"{fa} and {fb} conflict: give one of them", argument=f"{fa}/{fb}")


def _render_list(p: dict) -> str:
    text = format_table(p["claims"], ["id", "paper", "reference", "title"])
    if p["aliases"]:
        rows = [{"alias": a, "runs": " + ".join(v)} for a, v in p["aliases"].items()]
        text += "\n\naliases (an alias id runs the claims it names):\n" + format_table(rows, ["alias", "runs"])
    return text


def _workers(executor: str, args: argparse.Namespace) -> int | None:
    """The number of worker processes the run may use (None: in this process or a remote scheduler)."""
    if executor == "process":
        return args.workers
    if executor == "auto":
        from normfield.runner.cpus import available_cpus

        return available_cpus()
    return args.dask_local


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.claims.registry import ClaimContext, ClaimResult, aliases, all_claims, expand_ids, get_claim
    from normfield.runner.sweep import open_executors, prepare_executor, shutdown_executors

    if args.list:
        specs = all_claims()
        payload = {"claims": [{"id": s.id, "title": s.title, "paper": s.paper, "reference": s.reference}
                              for s in specs],
                   "aliases": {a: list(v) for a, v in sorted(aliases().items())}}
        return payload, _render_list
    ids = expand_ids(args.claims)
    for i in ids:  # validate all ids before any work
        get_claim(i)
    _check_conflicts(args)
    from normfield.report.writer import load_comparison

    compare = load_comparison(args.compare) if args.compare else None
    out = Path(args.out).expanduser()
    _check_creatable(out, "--out")
    cache_dir = None if args.no_cache else (Path(args.cache_dir).expanduser() if args.cache_dir
                                            else out / ".cache")
    if cache_dir is not None:
        from normfield.runner.cache import ResultCache

        _check_creatable(cache_dir, "--cache-dir")
        with ResultCache(cache_dir) as store:
            store.check()  # a corrupt store is refused now, not after the first claim ran
    if args.scheduler is not None:
        from normfield.runner.sweep import _parse_scheduler

        _parse_scheduler(args.scheduler)  # format first: no connection attempt on a malformed address
    opened_before = open_executors()
    executor = prepare_executor(scheduler=args.scheduler, dask_local=args.dask_local, workers=args.workers,
                                threads=args.threads, timeout=args.scheduler_timeout, device=args.device)
    _writable_dir(out, "--out")
    sweep_options: dict[str, Any] = {
        "cache_dir": cache_dir,
        "fresh": args.fresh,
        "scheduler": args.scheduler,
        "dask_local": args.dask_local,
        "workers": args.workers,
        "threads": args.threads,
        "timeout": args.scheduler_timeout,
    }
    ctx = ClaimContext(scale=args.scale, out_dir=out, device=args.device, seed=args.seed,
                       progress=not args.no_progress, sweep_options=sweep_options)
    from normfield.claims.registry import run_claims
    from normfield.report import write_report
    from normfield.report.writer import failure_kind, summary_line

    n_claims = len(ids) if ids else len(all_claims())
    done: list[ClaimResult] = []
    t0 = time.perf_counter()

    def make_meta(partial: bool) -> dict[str, Any]:
        return {
            "scale": args.scale,
            "seed": args.seed,
            "device": args.device,
            "claims": ids or "all",
            "executor": executor,
            "workers": _workers(executor, args),
            "scheduler": args.scheduler,
            "threads": args.threads,
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
            "fresh": args.fresh,
            "compare": compare["path"] if compare else None,
            "partial": partial,
            "wall_time_s": time.perf_counter() - t0,
        }

    def on_result(r: ClaimResult) -> None:
        done.append(r)
        if not args.no_progress:  # one line per finished claim, on stderr
            print(f"[{len(done)}/{n_claims}] {r.id}: {r.verdict} ({r.wall_time_s:.1f} s)", file=sys.stderr,
                  flush=True)
        if len(done) < n_claims:  # a partial report after every claim: an interrupted run still has one
            write_report(done, out, meta=make_meta(partial=True), compare=compare)

    try:
        results = run_claims(ids or None, ctx, on_result=on_result)
    finally:
        shutdown_executors(keep=opened_before)  # close the pools/clusters this command opened
    meta = make_meta(partial=False)
    paths = write_report(results, out, meta=meta, compare=compare)
    payload = {
        "claims": [
            {"id": r.id, "title": r.title, "verdict": r.verdict, "failure": failure_kind(r), "measured": r.measured,
             "expected": r.expected, "wall_time_s": r.wall_time_s,
             "cells": sum(s.get("cells", 0) for s in r.sweeps),
             "cached": sum(s.get("cached", 0) for s in r.sweeps)}
            for r in results
        ],
        "summary": summary_line(results),
        "scale": args.scale,
        "out": str(out),
        "report": str(paths["html"]),
        "wall_time_s": meta["wall_time_s"],
    }

    def render(p: dict) -> str:
        rows = [{"id": c["id"], "verdict": c["verdict"] + (f" ({c['failure']})" if c["failure"] else ""),
                 "s": round(c["wall_time_s"], 1), "cells": f"{c['cells']} ({c['cached']} cached)",
                 "title": c["title"]}
                for c in p["claims"]]
        return (format_table(rows) + f"\n\n{p['summary']} at scale {p['scale']} in "
                f"{p['wall_time_s']:.1f} s; report written to {p['report']}")

    return payload, render
