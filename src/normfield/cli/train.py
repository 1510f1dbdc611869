"""``normfield train``: the training experiments.

* ``normfield train lr-grid`` — final loss over (width, learning rate) of teacher–student
  gradient descent, with the sharpness limit 2/λ_max (Karakida et al. 2019, §3.4, Fig. 2).
* ``normfield train bn-mlp`` — an MLP trained with and without BN, logging loss, class
  entropy and the penultimate Gram spectrum (Joudaki et al. 2023, §6.2, Figs. 6–8).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normfield.cli._common import add_json_flag, format_table, parse_float_list
from normfield.errors import NormfieldError


def _int_list(name: str, text: str) -> list[int]:
    vals = parse_float_list(name, text) or []
    out = []
    for v in vals:
        if not float(v).is_integer():
            raise NormfieldError(f"{name} must be a comma-separated list of integers, got {text!r}", argument=name)
        out.append(int(v))
    return out


def _writable_dir(flag: str, path: str) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NormfieldError(f"{flag} {path!r} cannot be created: {e.strerror}", argument=flag) from None
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training experiments: learning-rate grid, BN-MLP training",
                       description="Training experiments of the two papers (see `normfield train COMMAND -h`).")
    tsub = p.add_subparsers(dest="train_command", metavar="COMMAND", parser_class=type(p))
    tsub.required = True

    g = tsub.add_parser("lr-grid", help="teacher-student GD loss over (width, learning rate); Karakida Fig. 2",
                        description="Full-batch gradient descent of a student MLP on a teacher's labels for "
                        "every (width M, learning rate η); all learning rates of one width train together. "
                        "Prints, per normalization and width, the empirical 2/λ_max at initialization, the "
                        "theoretical line and the largest η that did not explode (min loss over seeds).")
    g.add_argument("--widths", default="32,64,128", help="comma-separated widths M (default 32,64,128)")
    g.add_argument("--lrs", default=None, help="comma-separated learning rates (default: --lr-min..--lr-max)")
    g.add_argument("--lr-min", type=float, default=1e-4, help="smallest η of the log grid (default 1e-4)")
    g.add_argument("--lr-max", type=float, default=10.0, help="largest η of the log grid (default 10)")
    g.add_argument("--per-decade", type=int, default=3, help="learning rates per decade (default 3)")
    g.add_argument("--norms", default="none,last-mean", help="none and/or last-mean (default both)")
    g.add_argument("--seeds", type=int, default=1, help="number of trials (seeds 0..N-1; default 1)")
    g.add_argument("--steps", type=int, default=1000, help="GD steps (default 1000, the paper's)")
    g.add_argument("--samples", type=int, default=1000, help="T, training inputs (default 1000, the paper's)")
    g.add_argument("--depth", type=int, default=3, help="L, weight layers (default 3)")
    g.add_argument("--sw2", type=float, default=4.0, help="σ_w² (default 4)")
    g.add_argument("--sb2", type=float, default=1.0, help="σ_b² (default 1)")
    g.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    g.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="default float64")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--figure", default=None, help="write the heat map (PNG) here")
    g.add_argument("--cache-dir", default=None, help="results cache: re-running computes only missing cells")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_json_flag(g)
    g.set_defaults(func=run_lr_grid)

    b = tsub.add_parser("bn-mlp", help="train an MLP with and without BN; Joudaki Figs. 6-8",
                        description="Train a depth-10 ReLU MLP with BatchNorm between each hidden linear layer "
                        "and its activation, and the same without, by SGD; log the training loss, the "
                        "predicted-class entropy and the penultimate Gram spectrum. CIFAR-100 from --data-dir "
                        "(python-format files train/test/meta; nothing is downloaded), else the embedded "
                        "scikit-learn digits. Checkpoints every epoch under --out; re-running resumes.")
    b.add_argument("--data-dir", default=None, help="directory of the CIFAR-100 python-format files")
    b.add_argument("--epochs", type=int, default=None, help="epochs (default 50 with --data-dir, else 15)")
    b.add_argument("--width", type=int, default=None, help="hidden width (default 1000 with --data-dir, else 256)")
    b.add_argument("--depth", type=int, default=10, help="linear layers (default 10)")
    b.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (default 1e-3)")
    b.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default 128)")
    b.add_argument("--gram-every", type=int, default=5, help="Gram spectrum every N epochs (default 5)")
    b.add_argument("--gram-batch", type=int, default=128, help="n, rows of the measured Gram (default 128)")
    b.add_argument("--eval-samples", type=int, default=10000,
                   help="training samples used for loss/entropy (default 10000)")
    b.add_argument("--variants", default="both", choices=["both", "bn", "no-bn"], help="default both")
    b.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    b.add_argument("--out", default="normfield-train", help="checkpoints and figures (default ./normfield-train)")
    b.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_json_flag(b)
    b.set_defaults(func=run_bn_mlp)


# -- lr-grid ----------------------------------------------------------------------------------


def run_lr_grid(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.core.validation import check_device, check_int
    from normfield.experiments.train import run_lr_grid as run_grid
    from normfield.train.lr_grid import LR_GRID_NORMS, LRGridSettings, log_lrs, summarize_lr_grid

    device = check_device("--device", args.device)
    widths = _int_list("--widths", args.widths)
    lrs = parse_float_list("--lrs", args.lrs) if args.lrs else log_lrs(args.lr_min, args.lr_max, args.per_decade)
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    for n in norms:
        if n not in LR_GRID_NORMS:
            raise NormfieldError(f"--norms must list none and/or last-mean, got {n!r}", argument="--norms")
    seeds = list(range(check_int("--seeds", args.seeds, minimum=1, maximum=1000)))
    opts: dict[str, Any] = {}
    if args.cache_dir:
        opts["cache_dir"] = str(_writable_dir("--cache-dir", args.cache_dir))
    fig_path = None
    if args.figure:
        fig_path = Path(args.figure)
        _writable_dir("--figure", str(fig_path.parent if str(fig_path.parent) else "."))
    settings = LRGridSettings(widths=tuple(widths), lrs=tuple(lrs), norms=tuple(norms), replicates=tuple(seeds),
                              steps=args.steps, samples=args.samples, depth=args.depth, sw2=args.sw2, sb2=args.sb2,
                              activation=args.activation, dtype=args.dtype)
    df = run_grid(settings, seed=0, progress=not args.no_progress, device=device, **opts)
    summ = summarize_lr_grid(df)
    if fig_path is not None:
        from normfield.train.plots import plot_lr_grid

        plot_lr_grid(df, fig_path)
    payload = {
        "settings": {"widths": widths, "lrs": lrs, "norms": norms, "seeds": seeds, "steps": args.steps,
                     "samples": args.samples, "depth": args.depth, "sw2": args.sw2, "sb2": args.sb2,
                     "activation": args.activation, "dtype": args.dtype, "device": device},
        "summary": summ.to_dict("records"),
        "runs": df[["norm", "width", "seed", "lr", "final_loss", "exploded", "steps_run", "lambda_max",
                    "eta_emp", "eta_theory", "outcome", "collapse_detector", "initial_loss", "constant_loss",
                    "output_var_ratio", "dead_unit_fraction", "lambda_max_end", "eta_lambda_end", "loss_rose",
                    "monotone"]].to_dict("records"),
        "figure": None if fig_path is None else str(fig_path),
    }

    def render(p: dict) -> str:
        rows = [{"norm": r["norm"], "M": r["width"], "2/λmax (init)": r["eta_emp"],
                 "theory line": r["eta_theory"], "largest stable η": r["largest_stable_lr"],
                 "smallest exploded η": r["smallest_exploded_lr"], "largest converged η": r["largest_converged_lr"],
                 "÷ 2/λmax": r["converged_up_to_factor"]} for r in p["summary"]]
        text = format_table(rows)
        n = {o: sum(r["outcome"] == o for r in p["runs"]) for o in ("converged", "collapsed", "exploded",
                                                                     "unconverged")}
        text += (f"\n\n{len(p['runs'])} runs: {n['converged']} converged, {n['collapsed']} collapsed, "
                 f"{n['exploded']} exploded (final loss > 1e3 or not finite), {n['unconverged']} unconverged")
        if p["figure"]:
            text += f"; heat map: {p['figure']}"
        return text

    return payload, render


# -- bn-mlp -----------------------------------------------------------------------------------


def run_bn_mlp(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from normfield.core.validation import check_device
    from normfield.experiments.train import bn_verdict_inputs, train_bn_variants
    from normfield.train.bn_mlp import BNMLPConfig
    from normfield.train.plots import plot_entropy, plot_gram_spectra, plot_loss

    device = check_device("--device", args.device)
    cifar = args.data_dir is not None
    epochs = args.epochs if args.epochs is not None else (50 if cifar else 15)
    width = args.width if args.width is not None else (1000 if cifar else 256)
    cfg = BNMLPConfig(depth=args.depth, width=width, lr=args.lr, batch_size=args.batch_size, epochs=epochs,
                      seed=args.seed, gram_every=args.gram_every, gram_batch=args.gram_batch, eval_samples=args.eval_samples,
                      dtype=args.dtype).validated()
    out = _writable_dir("--out", args.out)
    variants = {"both": (True, False), "bn": (True,), "no-bn": (False,)}[args.variants]
    run = train_bn_variants(cfg, data_dir=args.data_dir, variants=variants, checkpoint_root=out,
                            resume=not args.fresh, device=device, progress=not args.no_progress)
    m, e = run.metrics, run.eigenvalues
    figs = {"gram_spectra": str(plot_gram_spectra(e, out / "figures" / "bn_mlp_gram_spectra.png")),
            "entropy": str(plot_entropy(m, out / "figures" / "bn_mlp_entropy.png", num_classes=run.num_classes)),
            "loss": str(plot_loss(m, out / "figures" / "bn_mlp_loss.png"))}
    payload = {"settings": {**cfg.to_dict(), "dataset": run.dataset, "samples": run.samples, "device": device,
                            "variants": ["BN" if v else "noBN" for v in variants]},
               "resumed_from": run.resumed_from, "metrics": m.to_dict("records"),
               "verdict_inputs": bn_verdict_inputs(run, cfg), "figures": figs}

    def render(p: dict) -> str:
        cols = ["batchnorm", "epoch", "train_loss", "loss", "entropy", "log_eig_std"]
        text = format_table([{c: r[c] for c in cols} for r in p["metrics"]], cols)
        vi = p["verdict_inputs"]
        text += "\n\n" + "\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in vi.items())
        text += "\nfigures: " + ", ".join(p["figures"].values())
        return text

    return payload, render
