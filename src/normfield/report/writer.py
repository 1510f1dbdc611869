"""Write the report of a ``normfield reproduce`` run."""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["write_report", "jsonable", "environment"]


def jsonable(x: Any) -> Any:
    """Convert numpy/pandas/paths to plain JSON; non-finite floats become strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions and machine, for results.json."""
    import torch

    from normfield._version import __version__

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    return {
        "normfield": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": dev,
        "cpu_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def write_report(results: Sequence[Any], out_dir: Path, *, meta: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, report.html, results.json and data/*.parquet|csv.

    Args:
        results: :class:`normfield.claims.ClaimResult` objects.
        out_dir: target directory (created).
        meta: run settings (scale, seed, device, ...), merged into results.json.

    Returns:
        Paths written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    env = environment(meta.get("device", "cpu"))
    claims_json = []
    md = [f"# normfield reproduction report\n", f"Scale: **{meta.get('scale')}** · "
          f"normfield {env['normfield']} · torch {env['torch']} · device {env['device']}\n"]
    n_pass = sum(r.verdict == "PASS" for r in results)
    md.append(f"{n_pass}/{len(results)} claims PASS.\n")
    md.append("| claim | paper | reference | verdict | wall time (s) |\n|---|---|---|---|---|")
    for r in results:
        md.append(f"| {r.id} | {r.paper} | {r.reference} | {r.verdict} | {r.wall_time_s:.1f} |")
    md.append("")
    body = []
    for r in results:
        data_files = []
        for name, df in r.data.items():
            data_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{r.id}_{name}".replace("/", "_")
            df.to_csv(data_dir / f"{stem}.csv", index=False)
            try:
                df.to_parquet(data_dir / f"{stem}.parquet", index=False)
                data_files.append(f"data/{stem}.parquet")
            except Exception:  # noqa: BLE001 - mixed-type columns: CSV still written
                pass
            data_files.append(f"data/{stem}.csv")
        figs = [Path(f) for f in r.figures]
        rel_figs = []
        for f in figs:
            try:
                rel_figs.append(str(f.resolve().relative_to(out.resolve())))
            except ValueError:
                rel_figs.append(str(f))
        claims_json.append(
            jsonable(
                {
                    "id": r.id,
                    "title": r.title,
                    "paper": r.paper,
                    "reference": r.reference,
                    "statement": r.statement,
                    "verdict": r.verdict,
                    "measured": r.measured,
                    "expected": r.expected,
                    "settings": r.settings,
                    "notes": r.notes,
                    "figures": rel_figs,
                    "data": data_files,
                    "wall_time_s": r.wall_time_s,
                }
            )
        )
        md.append(f"## {r.id}: {r.title} — **{r.verdict}**\n")
        md.append(f"*{r.paper}, {r.reference}.* {r.statement}\n")
        md.append(f"- settings: {_fmt(r.settings)}")
        md.append(f"- measured: {_fmt(r.measured)}")
        md.append(f"- expected: {_fmt(r.expected)}")
        md.append(f"- wall time: {r.wall_time_s:.1f} s")
        if r.notes:
            md.append(f"- notes: {r.notes}")
        for f in rel_figs:
            md.append(f"\n![{r.id}]({f})")
        md.append("")
        imgs = []
        for f in figs:
            if Path(f).exists():
                b64 = base64.b64encode(Path(f).read_bytes()).decode("ascii")
                imgs.append(
                    f'<img class="figure" alt="{html.escape(r.id)}" src="data:image/png;base64,{b64}"/>'
                )
        color = "#1a7f37" if r.verdict == "PASS" else "#cf222e"
        body.append(
            f'<section id="{html.escape(r.id)}"><h2>{html.escape(r.id)}: {html.escape(r.title)} '
            f'<span style="color:{color}">{r.verdict}</span></h2>'
            f"<p><em>{html.escape(r.paper)}, {html.escape(r.reference)}.</em> {html.escape(r.statement)}</p>"
            f"<ul><li><b>settings</b>: {html.escape(_fmt(r.settings))}</li>"
            f"<li><b>measured</b>: {html.escape(_fmt(r.measured))}</li>"
            f"<li><b>expected</b>: {html.escape(_fmt(r.expected))}</li>"
            f"<li><b>wall time</b>: {r.wall_time_s:.1f} s</li>"
            + (f"<li><b>notes</b>: <pre>{html.escape(r.notes)}</pre></li>" if r.notes else "")
            + "</ul>"
            + "".join(imgs)
            + "</section>"
        )
    results_json = {
        "environment": env,
        "run": jsonable(meta),
        "claims": claims_json,
    }
    paths = {
        "json": out / "results.json",
        "md": out / "report.md",
        "html": out / "report.html",
    }
    paths["json"].write_text(json.dumps(results_json, indent=2))
    paths["md"].write_text("\n".join(md) + "\n")
    rows = "".join(
        f"<tr><td><a href='#{html.escape(r.id)}'>{html.escape(r.id)}</a></td><td>{html.escape(r.paper)}</td>"
        f"<td>{html.escape(r.reference)}</td><td>{r.verdict}</td><td>{r.wall_time_s:.1f}</td></tr>"
        for r in results
    )
    paths["html"].write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>normfield report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img.figure{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>normfield reproduction report</h1><p>Scale: <b>{html.escape(str(meta.get('scale')))}</b>; "
        f"normfield {env['normfield']}, torch {env['torch']}, device {html.escape(env['device'])}; "
        f"{n_pass}/{len(results)} claims PASS.</p>"
        f"<table><tr><th>claim</th><th>paper</th><th>reference</th><th>verdict</th><th>s</th></tr>{rows}</table>"
        + "".join(body)
        + "</body></html>"
    )
    return paths
