"""Write the report of a ``normfield reproduce`` run.

Files written into ``out_dir`` (each atomically: a temporary file then
``os.replace``, so an interrupted run never leaves a half-written report):

* ``report.html`` — one self-contained page: figures embedded as base64 data
  URIs, no external CSS/JS; a summary table and one section per claim
  (statement with paper and equation/figure number, settings, measured numbers,
  expected, verdict, notes, runner bookkeeping).
* ``report.md`` — the same in Markdown, figures linked relatively.
* ``results.json`` — machine-readable: versions (normfield, torch, numpy,
  python), device, the run's settings (scale, base seed, executor), and per
  claim the verdict, numbers, seeds used and wall time.
* ``data/<claim>_<name>.parquet`` and ``.csv`` — each claim's tidy tables.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from normfield.jsonable import jsonable  # re-exported: the report writers use it

__all__ = ["write_report", "load_comparison", "jsonable", "environment", "atomic_write"]

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions and machine, for results.json."""
    import pandas as pd
    import torch

    from normfield._version import __version__

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    env = {
        "normfield": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": dev,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:  # metadata only: importing distributed would cost a second
        from importlib.metadata import PackageNotFoundError, version

        env["distributed"] = version("distributed")
    except PackageNotFoundError:  # pragma: no cover - optional extra
        pass
    return env


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a report is as readable as any file
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if len(v) > 12:
            return "[" + ", ".join(_fmt(x) for x in v[:6]) + f", … ({len(v)} values)]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _seeds(r: Any, base: Any) -> list[int]:
    seeds: set[int] = set()
    for s in getattr(r, "sweeps", []) or []:
        seeds.update(int(x) for x in s.get("seeds", []))
    for k, v in (r.settings or {}).items():
        if "seed" in str(k).lower():
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                seeds.add(int(v))
            elif isinstance(v, (list, tuple)):
                seeds.update(int(x) for x in v if isinstance(x, (int, np.integer)))
    if not seeds and isinstance(base, int):
        seeds.add(base)
    return sorted(seeds)


def _html_kv(d: Any) -> str:
    if not isinstance(d, dict):
        return f"<p>{html.escape(_fmt(d))}</p>"
    if not d:
        return "<p><i>(none)</i></p>"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table class='kv'>{rows}</table>"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 1em;color:#222}"
    "img.figure{max-width:100%;display:block;margin:.5em 0;border:1px solid #eee}"
    "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;"
    "vertical-align:top}table.kv th{background:#f6f8fa;font-weight:600}"
    ".PASS{color:#1a7f37;font-weight:700}.FAIL{color:#cf222e;font-weight:700}"
    ".banner{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em}"
    "section{border-top:2px solid #ddd;margin-top:1.5em}pre{white-space:pre-wrap}"
)


def load_comparison(path: str | Path) -> dict[str, Any]:
    """Read another run's results.json for side-by-side verdicts (e.g. quick vs paper scale).

    Returns:
        ``{"path", "scale", "verdicts": {claim id: verdict}, "measured": {claim id: dict}}``.

    Raises:
        NormfieldError: naming ``--compare`` when the file is missing or not a results.json.
    """
    from normfield.errors import NormfieldError

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text())
        claims = data["claims"]
        scale = str(data["run"]["scale"])
        verdicts = {str(c["id"]): str(c["verdict"]) for c in claims}
    except FileNotFoundError:
        raise NormfieldError(f"--compare {str(p)!r} does not exist; give a results.json (or its directory) "
                             "of an earlier normfield reproduce run", argument="--compare") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NormfieldError(f"--compare {str(p)!r} is not a normfield results.json ({type(e).__name__})",
                             argument="--compare") from None
    return {"path": str(p), "scale": scale, "verdicts": verdicts,
            "measured": {str(c["id"]): c.get("measured", {}) for c in claims}}


def failure_kind(r: Any) -> str:
    """A result's failure kind: ``""`` for a PASS, else ``"not-reproduced"`` or ``"unexplained"`` (default)."""
    if r.verdict == "PASS":
        return ""
    return getattr(r, "failure", "") or "unexplained"


def verdict_words(r: Any) -> str:
    """``PASS``, ``FAIL (paper statement not reproduced)`` or ``FAIL (unexplained)``."""
    kind = failure_kind(r)
    if not kind:
        return r.verdict
    return "FAIL (paper statement not reproduced)" if kind == "not-reproduced" else "FAIL (unexplained)"


def summary_line(results: Sequence[Any]) -> str:
    """``17 PASS, 4 FAIL: 3 paper statements not reproduced (cause measured), 1 unexplained``."""
    kinds = [failure_kind(r) for r in results]
    n_pass, n_fail = kinds.count(""), len(kinds) - kinds.count("")
    line = f"{n_pass} PASS, {n_fail} FAIL"
    if n_fail:
        nr, un = kinds.count("not-reproduced"), kinds.count("unexplained")
        parts = []
        if nr:
            parts.append(f"{nr} paper statement{'s' if nr != 1 else ''} not reproduced (cause measured)")
        if un:
            parts.append(f"{un} unexplained")
        line += ": " + ", ".join(parts)
    return line


def write_report(results: Sequence[Any], out_dir: Path, *, meta: dict[str, Any],
                 compare: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write report.html, report.md, results.json and data/*.parquet|csv.

    Args:
        results: :class:`normfield.claims.ClaimResult` objects (verdict, measured,
            expected, settings, figures, data, notes, id/title/paper/reference/
            statement, wall_time_s, sweeps).
        out_dir: target directory (created).
        meta: the run's settings (scale, seed, device, executor, ...); stored
            under ``"run"`` in results.json.
        compare: another run's verdicts (:func:`load_comparison`): each claim then
            shows its verdict at that run's scale, and the report says where the
            two verdicts differ.

    Returns:
        Paths written, by kind: ``json``, ``md``, ``html`` and ``data`` (a list).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    env = environment(str(meta.get("device", "cpu")))
    scale = str(meta.get("scale", "?"))
    n_pass = sum(r.verdict == "PASS" for r in results)
    claims_json = []
    data_written: list[Path] = []
    md_sections: list[str] = []
    html_sections: list[str] = []
    for r in results:
        # -- tidy data --------------------------------------------------------
        data_files = []
        for name, df in (r.data or {}).items():
            stem = _safe(f"{r.id}_{name}")
            data_dir.mkdir(parents=True, exist_ok=True)
            csv = data_dir / f"{stem}.csv"
            atomic_write(csv, df.to_csv(index=False))
            data_written.append(csv)
            try:
                import io

                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                pq = data_dir / f"{stem}.parquet"
                atomic_write(pq, buf.getvalue())
                data_written.append(pq)
                data_files.append(f"data/{pq.name}")
            except Exception:  # noqa: BLE001 - mixed-type columns: the CSV still holds the table
                pass
            data_files.append(f"data/{csv.name}")
        # -- figures ----------------------------------------------------------
        figs, rel_figs, missing = [], [], []
        for f in r.figures or []:
            f = Path(f)
            try:
                rel = str(f.resolve().relative_to(out.resolve()))
            except ValueError:
                rel = str(f)
            if f.is_file() and f.stat().st_size > 0:
                figs.append(f)
                rel_figs.append(rel)
            else:
                missing.append(rel)
        seeds = _seeds(r, meta.get("seed"))
        other = (compare or {}).get("verdicts", {}).get(r.id)
        cmp_line = ""
        if compare is not None:
            if other is None:
                cmp_line = f"not run at scale {compare['scale']}"
            elif other == r.verdict:
                cmp_line = f"same verdict at scale {compare['scale']} ({other})"
            else:
                cmp_line = f"DIFFERS at scale {compare['scale']}: {other} there, {r.verdict} here"
        sweeps = [jsonable(s) for s in (getattr(r, "sweeps", None) or [])]
        claims_json.append(
            jsonable(
                {
                    "id": r.id,
                    "title": r.title,
                    "paper": r.paper,
                    "reference": r.reference,
                    "statement": r.statement,
                    "verdict": r.verdict,
                    "failure": failure_kind(r),
                    "measured": r.measured,
                    "expected": r.expected,
                    "settings": r.settings,
                    "seeds": seeds,
                    "notes": r.notes,
                    "figures": rel_figs,
                    "missing_figures": missing,
                    "data": data_files,
                    "wall_time_s": r.wall_time_s,
                    "sweeps": sweeps,
                    "compare": ({"scale": compare["scale"], "verdict": other} if compare is not None else None),
                }
            )
        )
        cells = sum(s.get("cells", 0) for s in sweeps)
        cached = sum(s.get("cached", 0) for s in sweeps)
        runner_line = (f"{cells} sweep cells ({cached} from cache), seeds {_fmt(seeds)}" if sweeps
                       else f"seeds {_fmt(seeds)}")
        # -- markdown -----------------------------------------------------------
        md = [f"## {r.id}: {r.title} — **{verdict_words(r)}**\n", f"*{r.paper}, {r.reference}.* {r.statement}\n",
              f"- settings: {_fmt(r.settings)}", f"- measured: {_fmt(r.measured)}",
              f"- expected: {_fmt(r.expected)}", f"- wall time: {r.wall_time_s:.1f} s; {runner_line}"]
        if cmp_line:
            md.append(f"- other scale: {cmp_line}")
        if r.notes:
            md.append("- notes: " + r.notes.strip().replace("\n", "\n  "))
        md += [f"\n![{r.id}]({f})" for f in rel_figs]
        md += [f"\n*(figure {f} missing)*" for f in missing]
        md_sections.append("\n".join(md) + "\n")
        # -- html ---------------------------------------------------------------
        imgs = []
        for f in figs:
            mime = _MIME.get(f.suffix.lower(), "application/octet-stream")
            b64 = base64.b64encode(f.read_bytes()).decode("ascii")
            imgs.append(f'<figure><img class="figure" alt="{html.escape(r.id)}: {html.escape(f.name)}" '
                        f'data-name="{html.escape(f.name)}" src="data:{mime};base64,{b64}"/>'
                        f"<figcaption>{html.escape(f.name)}</figcaption></figure>")
        imgs += [f"<p class='FAIL'>figure {html.escape(m)} is missing</p>" for m in missing]
        html_sections.append(
            f'<section id="{html.escape(r.id)}"><h2>{html.escape(r.id)}: {html.escape(r.title)} — '
            f'<span class="{r.verdict}">{html.escape(verdict_words(r))}</span></h2>'
            f"<p><b>{html.escape(r.paper)}, {html.escape(r.reference)}.</b> {html.escape(r.statement)}</p>"
            f"<h3>Settings</h3>{_html_kv(r.settings)}"
            f"<h3>Measured</h3>{_html_kv(r.measured)}"
            f"<h3>Expected</h3>{_html_kv(r.expected)}"
            f"<p>Verdict: <span class='{r.verdict}'>{html.escape(verdict_words(r))}</span>; "
            f"wall time {r.wall_time_s:.1f} s; "
            f"{html.escape(runner_line)}</p>"
            + (f"<p class='{'banner' if 'DIFFERS' in cmp_line else 'cmp'}'>{html.escape(cmp_line)}</p>"
               if cmp_line else "")
            + (f"<h3>Notes</h3><pre>{html.escape(r.notes)}</pre>" if r.notes else "")
            + "".join(imgs)
            + "</section>"
        )

    partial_note = ""
    if meta.get("partial"):
        partial_note = (f"Partial report: {len(results)} claim(s) finished so far; the run is still going or was "
                        "interrupted (re-run the same command: cached cells are reused).")
    differ = []
    if compare is not None:
        differ = [r.id for r in results if compare["verdicts"].get(r.id) not in (None, r.verdict)]
    scale_note = ""
    if compare is not None:
        scale_note = (
            f"Compared with the run at scale <b>{html.escape(str(compare['scale']))}</b> "
            f"({html.escape(compare['path'])}): "
            + (f"verdicts differ for <b>{html.escape(', '.join(differ))}</b>; see those claims' notes."
               if differ else "every claim run at both scales has the same verdict.")
        )
    elif scale != "paper":
        scale_note = (
            f"These verdicts were computed at scale <b>{html.escape(scale)}</b> (reduced sizes and fewer "
            "seeds than the papers). Each claim's notes say where its verdict may differ at the papers' "
            "sizes; run <code>normfield reproduce --scale paper</code> for those."
        )
    # -- results.json ------------------------------------------------------------
    results_json = {
        "environment": env,
        "run": jsonable(meta),
        "summary": {"claims": len(results), "pass": n_pass, "fail": len(results) - n_pass,
                    "not_reproduced": sum(failure_kind(r) == "not-reproduced" for r in results),
                    "unexplained": sum(failure_kind(r) == "unexplained" for r in results),
                    "line": summary_line(results), "scale": scale,
                    **({"compared_with": compare["path"], "compared_scale": compare["scale"],
                        "verdicts_differ": differ} if compare is not None else {})},
        "claims": claims_json,
    }
    paths: dict[str, Any] = {"json": out / "results.json", "md": out / "report.md", "html": out / "report.html",
                             "data": data_written}
    atomic_write(paths["json"], json.dumps(results_json, indent=2, allow_nan=False))
    # -- report.md -----------------------------------------------------------------
    head = [
        "# normfield reproduction report\n",
        f"Scale: **{scale}** · seed {meta.get('seed')} · normfield {env['normfield']} · torch {env['torch']} · "
        f"numpy {env['numpy']} · device {env['device']} · executor {meta.get('executor', 'local')}\n",
        f"{summary_line(results)}.\n",
    ]
    if partial_note:
        head.append(f"> **{partial_note}**\n")
    if scale_note:
        head.append("> " + html.unescape(re.sub(r"</?(b|code)>", lambda m: "`" if "code" in m.group(0) else "**",
                                                scale_note)) + "\n")
    if compare is None:
        head.append("| claim | paper | reference | verdict | wall time (s) |\n|---|---|---|---|---|")
        head += [f"| {r.id} | {r.paper} | {r.reference} | {verdict_words(r)} | {r.wall_time_s:.1f} |"
                 for r in results]
    else:
        head.append(f"| claim | paper | reference | verdict | verdict at {compare['scale']} | wall time (s) |"
                    "\n|---|---|---|---|---|---|")
        head += [f"| {r.id} | {r.paper} | {r.reference} | {verdict_words(r)} | "
                 f"{compare['verdicts'].get(r.id, '—')}{' (differs)' if r.id in differ else ''} | "
                 f"{r.wall_time_s:.1f} |" for r in results]
    atomic_write(paths["md"], "\n".join(head) + "\n\n" + "\n".join(md_sections))
    # -- report.html -----------------------------------------------------------------
    cmp_head = f"<th>verdict at {html.escape(str(compare['scale']))}</th>" if compare is not None else ""

    def cmp_cell(r: Any) -> str:
        if compare is None:
            return ""
        v = compare["verdicts"].get(r.id, "—")
        return f"<td class='{v}'>{v}{' (differs)' if r.id in differ else ''}</td>"

    rows = "".join(
        f"<tr><td><a href='#{html.escape(r.id)}'>{html.escape(r.id)}</a></td><td>{html.escape(r.paper)}</td>"
        f"<td>{html.escape(r.reference)}</td><td class='{r.verdict}'>{html.escape(verdict_words(r))}</td>{cmp_cell(r)}"
        f"<td>{r.wall_time_s:.1f}</td></tr>"
        for r in results
    )
    env_rows = _html_kv({k: env[k] for k in ("normfield", "torch", "numpy", "python", "device", "platform", "date")})
    run_rows = _html_kv({k: v for k, v in meta.items() if v is not None})
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>normfield report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>normfield reproduction report</h1><p>Scale <b>{html.escape(scale)}</b>: "
        f"{html.escape(summary_line(results))}.</p>"
        + (f"<p class='banner'>{html.escape(partial_note)}</p>" if partial_note else "")
        + (f"<p class='banner'>{scale_note}</p>" if scale_note else "")
        + "<table><tr><th>claim</th><th>paper</th><th>reference</th><th>verdict</th>" + cmp_head
        + "<th>wall time (s)</th></tr>"
        f"{rows}</table><details><summary>environment and run settings</summary>{env_rows}{run_rows}</details>"
        + "".join(html_sections)
        + "</body></html>"
    )
    atomic_write(paths["html"], page)
    return paths
