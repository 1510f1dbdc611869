"""``normfield fisher``: the FIM's λ_max and m_λ of random MLPs, measured and predicted
(Karakida et al. 2019)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from normfield.cli._common import add_device_flags, add_json_flag, format_table, parse_float_list
from normfield.errors import NormfieldError

THEORY_KEYS = ("lambda_max", "lambda_max_lower", "lambda_max_upper", "m_lambda")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fisher", help="largest and mean eigenvalue of the Fisher information of random MLPs",
        description="Build the exact reversed FIM F* (CT×CT) of random MLPs (Karakida et al. 2019) "
        "for --seeds independent networks and input batches, and print λ_max and m_λ next to the "
        "theorem that applies to --norm (Thm 2.2, Thm 3.3, eq. 19, Thm 3.4, Thm 4.1).",
        epilog="example: normfield fisher --activation relu --sw2 2 --sb2 0 --depth 3 --width 500 "
        "--samples 500 --norm last-mean --seeds 3")
    p.add_argument("--activation", required=True, help="activation name (relu, tanh, leaky_relu:0.2, ...)")
    p.add_argument("--sw2", required=True, type=float, help="weight variance σ_w² (> 0)")
    p.add_argument("--sb2", required=True, type=float, help="bias variance σ_b² (>= 0)")
    p.add_argument("--depth", required=True, type=int, help="number of weight layers L (>= 1)")
    p.add_argument("--width", required=True, type=int, help="hidden width M (>= 1)")
    p.add_argument("--samples", required=True, type=int, help="number of Gaussian inputs T")
    p.add_argument("--outputs", type=int, default=1, help="number of outputs C (default 1)")
    p.add_argument("--norm", default="none", choices=["none", "last-mean", "last-bn", "middle-bn", "layer"],
                   help="normalization placement (default none)")
    p.add_argument("--alphas", default=None, help="width ratios α_0,...,α_{L-1} (default all 1)")
    p.add_argument("--seeds", type=int, default=1, help="independent networks (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--route", default="auto", choices=["auto", "fast", "general", "matrix-free"],
                   help="dual engine (default auto: fast where it applies, else general; matrix-free: "
                   "Lanczos on J(Jᵀv)/T without storing the CT×CT dual)")
    add_device_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def _summary(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n − 1 in the denominator) and the values of one quantity over seeds.

    With one seed the spread is unknown, not zero: ``std`` is ``None`` (``null`` in ``--json``,
    ``n/a`` in the table).
    """
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "values": values}


def _std_cell(std: float | None) -> float | str:
    return "n/a" if std is None else std


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.core.validation import check_device, check_int
    from normfield.experiments.fisher import fisher_spectrum, theory_over_seeds
    from normfield.fisher.networks import MLPConfig

    alphas = parse_float_list("--alphas", args.alphas)
    seeds = check_int("--seeds", args.seeds, minimum=1)
    seed = check_int("--seed", args.seed, minimum=0)
    device = check_device("--device", args.device)
    try:
        cfg = MLPConfig(args.activation, args.sw2, args.sb2, args.depth, args.width,
                        tuple(alphas) if alphas else None, args.outputs, args.samples, args.norm)
        cfg.placement.check_spectrum(cfg)
    except NormfieldError as e:
        arg = f"--{e.argument}" if e.argument else "argument"
        raise NormfieldError(f"{arg}: {e}", argument=arg) from None
    df = fisher_spectrum(cfg, seeds=seeds, seed=seed, dtype=args.dtype, device=device, route=args.route,
                         progress=(seeds > 1 and not args.json))
    theory: dict[str, Any] = {}
    note = ""
    try:
        theory = theory_over_seeds(cfg, df).to_dict()
    except NormfieldError as e:
        note = str(e)
    payload = {
        "lambda_max": _summary([float(v) for v in df["lambda_max"]]),
        "m_lambda": _summary([float(v) for v in df["m_lambda"]]),
        "parameters": int(cfg.parameters),
        "theory": theory,
        "config": cfg.to_dict(),
        "route": str(df["route"].iloc[0]),
        "seeds": list(range(seed, seed + seeds)),
    }
    if note:
        payload["theory_note"] = note

    def render(p: dict) -> str:
        rows = []
        for key in THEORY_KEYS:
            meas = p[key] if key in ("lambda_max", "m_lambda") else None
            if meas is None and key not in p["theory"]:
                continue
            row = {"quantity": key}
            meas = meas if meas is not None else p["lambda_max"]
            row["measured mean"] = meas["mean"]
            row["std"] = _std_cell(meas["std"])
            row["theory"] = p["theory"].get(key, "")
            rows.append(row)
        c = p["config"]
        head = (f"{c['activation']} σ_w²={c['sw2']} σ_b²={c['sb2']} L={c['depth']} M={c['width']} "
                f"T={c['samples']} C={c['outputs']} norm={c['norm']}  P={p['parameters']}  "
                f"seeds={len(p['seeds'])}  route={p['route']}")
        tail = ""
        th = p["theory"]
        if th:
            consts = ", ".join(f"{k}={th[k]:.6g}" for k in ("kappa1", "kappa2", "alpha") if k in th)
            tail = f"\n{th.get('reference', '')}: {consts}\nregime: {th.get('regime', '')}"
        elif p.get("theory_note"):
            tail = f"\nno theory applies: {p['theory_note']}"
        return head + "\n" + format_table(rows, ["quantity", "measured mean", "std", "theory"]) + tail

    return payload, render
