"""``normfield reproduce``: run the registered paper claims and write the report."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from normfield.cli._common import add_json_flag, format_table
from normfield.errors import NormfieldError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce the papers' claims and write a report",
                       description="Run the registered paper claims (all by default) and write "
                       "report.md, report.html, results.json, figures and tidy data into --out.")
    p.add_argument("claims", nargs="*", metavar="CLAIM_ID", help="claim ids (default: all)")
    p.add_argument("--scale", default="quick", choices=["quick", "paper"],
                   help="quick (minutes on 2 CPU cores, default) or paper (the papers' sizes)")
    p.add_argument("--out", default="normfield-report", help="output directory (default ./normfield-report)")
    p.add_argument("--list", action="store_true", help="list the claim ids and exit")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_json_flag(p)
    p.set_defaults(func=run)


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NormfieldError(f"--out {str(out)!r} cannot be created: {e.strerror}", argument="--out") from None
    if not os.access(out, os.W_OK):
        raise NormfieldError(f"--out {str(out)!r} is not writable", argument="--out")


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.claims.registry import ClaimContext, ClaimResult, all_claims, get_claim, import_errors

    if args.list:
        specs = all_claims()
        payload = {"claims": [{"id": s.id, "title": s.title, "paper": s.paper, "reference": s.reference}
                              for s in specs]}
        return payload, lambda p: format_table(p["claims"], ["id", "paper", "reference", "title"])
    ids = list(args.claims)
    for i in ids:  # validate all ids before any work
        get_claim(i)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise NormfieldError("--device cuda asked for, but no CUDA device is available; use --device cpu",
                                 argument="--device")
    elif args.device != "cpu":
        raise NormfieldError(f"--device must be cpu or cuda, got {args.device!r}", argument="--device")
    out = Path(args.out)
    _writable(out)
    ctx = ClaimContext(scale=args.scale, out_dir=out, device=args.device, seed=args.seed,
                       progress=not args.no_progress)
    from normfield.claims.registry import run_claims
    from normfield.report import write_report

    t0 = time.perf_counter()
    results = run_claims(ids or None, ctx)
    if not ids:
        for mod, tb in import_errors().items():
            results.append(ClaimResult(verdict="FAIL", measured={}, expected="the claim module imports",
                                       notes=tb, id=f"import:{mod}", title=f"claims module {mod} failed to import"))
    meta = {"scale": args.scale, "seed": args.seed, "device": args.device, "claims": ids or "all",
            "wall_time_s": time.perf_counter() - t0}
    write_report(results, out, meta=meta)
    payload = {
        "claims": [
            {"id": r.id, "title": r.title, "verdict": r.verdict, "measured": r.measured,
             "expected": r.expected, "wall_time_s": r.wall_time_s}
            for r in results
        ],
        "out": str(out),
    }

    def render(p: dict) -> str:
        rows = [{"id": c["id"], "verdict": c["verdict"], "s": round(c["wall_time_s"], 1), "title": c["title"]}
                for c in p["claims"]]
        n = sum(c["verdict"] == "PASS" for c in p["claims"])
        return format_table(rows) + f"\n\n{n}/{len(rows)} PASS; report written to {p['out']}/report.html"

    return payload, render
