"""The report of one model's analysis: report.md, report.html, result.json and figures.

Written by ``normfield analyze ... --report DIR`` (and :func:`write_model_report`)
with the same conventions as the reproduction report
(:mod:`normfield.report.writer`): every file written atomically, figures
embedded in the HTML as base64 data URIs and linked from the Markdown,
strict JSON (non-finite numbers as strings), the environment recorded.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from normfield.report.writer import atomic_write, environment, jsonable

__all__ = ["write_model_report"]

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 1em;color:#222}"
          "img{max-width:100%;display:block;margin:.5em 0;border:1px solid #eee}"
          "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
          "th{background:#f6f8fa}")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _fisher_rows(res) -> list[dict[str, Any]]:
    rows = []
    for name, f in [("as given", res.fisher), *res.what_if.items()]:
        if f is None:
            continue
        rows.append({"variant": name, "lambda_max": f.lambda_max, "lambda_max rel. error": f.lambda_max_rel_error,
                     "lr bound 2/lambda_max": f.lr_bound, "tr F*": f.trace, "tr F* std. error": f.trace_stderr,
                     "m_lambda": f.m_lambda, "P": f.parameters, "products": f.products, "method": f.method})
    return rows


def _layer_rows(res) -> list[dict[str, Any]]:
    cols = ["layer", "type", "features", "condition_number", "effective_rank", "top_fraction", "collapsed",
            "dist_fixed_point"]
    return [{c: r[c] for c in cols} for r in res.layers.to_dict(orient="records")] if len(res.layers) else []


def _theory_rows(theory) -> list[dict[str, Any]]:
    """The measured-vs-predicted frame of :mod:`normfield.analyze.theory` as table rows."""
    if theory is None or not len(theory):
        return []
    from normfield.analyze.theory import theory_records

    cols = ("quantity", "layer", "features", "measured", "predicted", "ratio", "distance")
    return [{c: ("" if r[c] is None else r[c]) for c in cols} for r in theory_records(theory)]


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_num(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><i>(none)</i></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_num(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_model_report(res, out_dir: str | Path, *, title: str = "model") -> dict[str, Path]:
    """Write the report of one :class:`~normfield.analyze.AnalysisResult` into ``out_dir``.

    Files: ``report.md``, ``report.html`` (self-contained), ``result.json`` (``res.to_dict()`` plus the
    environment), ``spectrum.png`` (:func:`normfield.analyze.plots.plot_spectrum`, when a density or the
    full spectrum is available) and ``layers.png`` (:func:`normfield.analyze.plots.plot_layer_conditioning`,
    when layers were hooked); with ``res.theory`` (:func:`normfield.analyze.theory.attach_theory`) a
    measured-vs-predicted table and ``theory.png``
    (:func:`normfield.analyze.theory.plot_theory_conditioning`).

    Returns:
        {"md", "html", "json", and each figure's name}: the paths written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from normfield.analyze.plots import plot_layer_conditioning, plot_spectrum

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    figs: list[tuple[str, str]] = []
    f = res.fisher
    if f is not None and (f.density_nodes is not None or f.spectrum is not None):
        fig = plot_spectrum(res, path=out / "spectrum.png")
        plt.close(fig)
        figs.append(("spectrum.png", "Spectral density of F* (log axis), top eigenvalues, 2/λ_max"))
    if len(res.layers):
        fig = plot_layer_conditioning(res, path=out / "layers.png")
        plt.close(fig)
        figs.append(("layers.png", "Batch Gram conditioning per layer"))
    theory = getattr(res, "theory", None)
    theory_rows = _theory_rows(theory)
    if theory is not None and (theory.quantity == "condition_number").any():
        from normfield.analyze.theory import plot_theory_conditioning

        fig = plot_theory_conditioning(theory, path=out / "theory.png")
        plt.close(fig)
        figs.append(("theory.png", "Layer conditioning by depth: measured vs predicted (infinite width)"))
    for name, _ in figs:
        paths[name] = out / name
    payload = {"title": title, "result": res.to_dict(), "environment": environment(res.settings.get("device", "cpu"))}
    if theory_rows and "theory" not in payload["result"]:
        from normfield.analyze.theory import theory_records

        payload["result"]["theory"] = theory_records(theory)
    atomic_write(out / "result.json", json.dumps(jsonable(payload), indent=1, allow_nan=False))
    paths["json"] = out / "result.json"
    s = res.settings
    head = (f"T = {s.get('samples')} samples, C = {s.get('outputs')} outputs, {s.get('dtype')} on "
            f"{s.get('device')}, mode {s.get('mode')}, {s.get('products', 0)} Jacobian products")
    fisher_rows, layer_rows = _fisher_rows(res), _layer_rows(res)
    md = [f"# normfield analysis: {title}", "", head, "",
          "## Fisher/NTK dual F* = J Jᵀ/T (Karakida et al. 2019, eqs. (8), (10), (23))", "", _md_table(fisher_rows)]
    if f is not None:
        md += ["Top eigenvalues: " + ", ".join(_num(float(v)) for v in f.eigenvalues), ""]
    md += ["## Batch Gram per layer (Joudaki et al. 2023, eqs. (2), (10))", "", _md_table(layer_rows)]
    if theory_rows:
        md += ["## Measured vs predicted at infinite width (ratio = measured/predicted)", "", _md_table(theory_rows)]
    md += [f"![{cap}]({name})\n" for name, cap in figs]
    atomic_write(out / "report.md", "\n".join(md))
    paths["md"] = out / "report.md"
    imgs = "".join(
        f"<figure><img data-name='{html.escape(name)}' alt='{html.escape(cap)}' "
        f"src='data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}'>"
        f"<figcaption>{html.escape(cap)}</figcaption></figure>" for name, cap in figs)
    top = ("<p>Top eigenvalues: " + ", ".join(_num(float(v)) for v in f.eigenvalues) + "</p>") if f is not None else ""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>normfield analysis: {html.escape(title)}</h1>"
            f"<p>{html.escape(head)}</p><h2>Fisher/NTK dual F* = J Jᵀ/T</h2>{_html_table(fisher_rows)}{top}"
            f"<h2>Batch Gram per layer</h2>{_html_table(layer_rows)}"
            + (f"<h2>Measured vs predicted at infinite width</h2>{_html_table(theory_rows)}" if theory_rows else "")
            + f"{imgs}</body></html>")
    atomic_write(out / "report.html", page)
    paths["html"] = out / "report.html"
    return paths
