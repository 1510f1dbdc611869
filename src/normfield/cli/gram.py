"""``normfield gram``: simulate finite-width Gram chains and compare with mean field.

JSON (``--json``) keys:

* ``layers``: recorded layer indices 0..L;
* ``distance_to_fixed_point``: ``{"mean", "q05", "q95"}`` lists aligned with
  ``layers`` of ‖G_l − G*‖_F over the seeds, or ``null`` when ``--norm`` is
  not ``bn`` (without batch norm there is no G*);
* ``distance_to_mean_field``: the same for ‖G_l − 𝒢_l‖_F, 𝒢 the mean-field
  trajectory (Joudaki et al. eq. 3) from each seed's own G_0 (``null`` with
  ``--no-mean-field``);
* ``condition_number``: the same for κ(G_l);
* ``fixed_point``: ``FixedPoint.to_dict()`` (b*, c*, eigenvalues, κ(G*)), or
  ``null`` when ``--norm`` is not ``bn``;
* ``settings``: the arguments used.
"""

from __future__ import annotations

import argparse
from typing import Any

from normfield.cli._common import add_device_flags, add_json_flag, format_table
from normfield.cli.fixed_point import add_activation_args, resolve_activation

#: defaults of the mean-field step without an exact route (= normfield.gram.bn_map.MAX_SAMPLES, TOL;
#: tests/test_cli_gram.py checks they agree, the CLI does not import the numerical modules to register)
_MF_SAMPLES = 4_194_304
_MF_TOL = 1e-3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gram", help="simulate finite-width Gram chains (Joudaki et al. 2023) and compare with mean field",
        description="Simulate h_{l+1} = W_l σ(φ(h_l)) for K seeds and report, per layer, the distance of the "
                    "Gram matrix G_l to the BN fixed point G* (eq. 10) and to the mean-field trajectory "
                    "(eq. 3): mean and 5%/95% quantiles over seeds.")
    add_activation_args(p)
    p.add_argument("--width", type=int, required=True, help="width d >= 1")
    p.add_argument("--batch", type=int, required=True, help="batch size n (>= 2 under bn)")
    p.add_argument("--depth", type=int, required=True, help="number of layers L >= 0")
    p.add_argument("--seeds", type=int, default=10, help="number of independent chains K (default 10)")
    p.add_argument("--norm", default="bn", choices=["bn", "none", "ln"], help="normalization (default bn)")
    p.add_argument("--engine", default="fast", choices=["fast", "explicit"],
                   help="fast (exact in law, O(d n²)/layer, default) or explicit (materialises W, O(d² n))")
    p.add_argument("--inputs", default="gaussian", choices=["gaussian", "degenerate"],
                   help="input batch: i.i.d. Gaussian (default) or one dominant direction")
    p.add_argument("--eps", type=float, default=0.0, help="epsilon added to the variance inside the norm (default 0)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--no-mean-field", action="store_true", help="skip the mean-field trajectory")
    p.add_argument("--mf-samples", type=int, default=_MF_SAMPLES,
                   help="cap on the quasi-Monte Carlo points per mean-field step where no exact route exists "
                        f"(BN with a non-homogeneous activation; default {_MF_SAMPLES}). Such a step integrates "
                        "a polynomial fit of the activation exactly and the remainder by quasi-Monte Carlo, "
                        "doubling the points until its stated Frobenius error is at most --mf-tol")
    p.add_argument("--mf-tol", type=float, default=_MF_TOL,
                   help=f"stated Frobenius error of such a mean-field step (default {_MF_TOL:g})")
    add_device_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.core.validation import check_float, check_int
    from normfield.experiments.gram import chain_report

    check_int("--seeds", args.seeds, minimum=1)
    check_int("--mf-samples", args.mf_samples, minimum=100)
    check_float("--mf-tol", args.mf_tol, minimum=0.0)
    act = resolve_activation(args)
    rep = chain_report(act, args.width, args.batch, args.depth, seeds=args.seeds, norm=args.norm,
                       engine=args.engine, inputs=args.inputs, eps=args.eps, dtype=args.dtype, device=args.device,
                       seed=args.seed, mean_field=not args.no_mean_field,
                       mean_field_options={"max_samples": args.mf_samples, "tol": args.mf_tol, "seed": args.seed})
    fp = rep.pop("fixed_point")
    payload = {
        **rep,
        "fixed_point": fp.to_dict() if fp is not None else None,
        "settings": {k: getattr(args, k) for k in ("activation", "width", "batch", "depth", "seeds", "norm",
                                                   "engine", "inputs", "eps", "dtype", "device", "seed",
                                                   "mf_samples", "mf_tol", "slope")},
    }
    return payload, render


def render(p: dict) -> str:
    rows = []
    dfp, dmf, kap = p["distance_to_fixed_point"], p["distance_to_mean_field"], p["condition_number"]
    for i, layer in enumerate(p["layers"]):
        r: dict[str, Any] = {"layer": layer}
        if dfp is not None:
            r.update({"|G-G*| mean": dfp["mean"][i], "q05": dfp["q05"][i], "q95": dfp["q95"][i]})
        if dmf is not None:
            r.update({"|G-MF| mean": dmf["mean"][i], "q05 ": dmf["q05"][i], "q95 ": dmf["q95"][i]})
        r["kappa(G) mean"] = kap["mean"][i]
        rows.append(r)
    s = p["settings"]
    head = (f"Gram chain: {s['activation']}, norm={s['norm']}, d={s['width']}, n={s['batch']}, depth={s['depth']}, "
            f"{s['seeds']} seeds, engine={s['engine']} ({s['dtype']}, {s['device']})")
    fp = p["fixed_point"]
    if fp is not None:
        head += (f"\nG* (eq. 10): b* = {fp['diagonal']:.6g}, c* = {fp['c_star']:.6g}, "
                 f"κ(G*) = {fp['condition_number']:.6g}")
    else:
        head += "\nno batch norm: no fixed point G* (distance to G* not defined)"
    return head + "\n\n" + format_table(rows) + "\n(mean and 5%/95% quantiles over seeds)"
