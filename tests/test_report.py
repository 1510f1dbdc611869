"""The report: self-contained HTML, Markdown, results.json, tidy data; atomic writes."""

from __future__ import annotations

import base64
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from normfield.claims.registry import ClaimResult  # noqa: E402
from normfield.report import write_report  # noqa: E402
from normfield.report.writer import atomic_write, jsonable  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(tmp_path, cid="X-fig1", verdict="PASS", fig=True, **kw) -> ClaimResult:
    figs = []
    if fig:
        p = tmp_path / "figures" / f"{cid}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        f, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        f.savefig(p, dpi=40)
        plt.close(f)
        figs.append(p)
    r = ClaimResult(
        verdict=verdict,
        measured={"slope": 0.4975, "ratio": float("nan")},
        expected={"slope": "0.5 ± 0.01"},
        settings={"width": 512, "seeds": [3, 4]},
        figures=figs,
        data={"curve": pd.DataFrame({"t": [0, 1, 2], "y": [1.0, 0.5, 0.25]})},
        notes=kw.get("notes", "At quick scale the width is 512 instead of the paper's 4096."),
        id=cid,
        title=f"title of {cid}",
        paper="Joudaki et al. 2023",
        reference="Fig. 1, eq. (10)",
        statement="The statement <with> & special characters.",
        wall_time_s=1.25,
        sweeps=[{"name": "s", "cells": 4, "cached": 1, "seeds": [3, 4], "executor": "local"}],
    )
    return r


def test_all_files_and_sections(tmp_path):
    results = [_result(tmp_path), _result(tmp_path, "K-thm3", "FAIL")]
    paths = write_report(results, tmp_path, meta={"scale": "quick", "seed": 0, "device": "cpu", "executor": "local"})
    page = paths["html"].read_text()
    # self-contained: no external resources at all
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 2 and all(base64.b64decode(b).startswith(PNG_MAGIC) for b in imgs)
    for cid in ("X-fig1", "K-thm3"):
        sec = page[page.index(f'<section id="{cid}"'):]
        sec = sec[: sec.index("</section>")]
        for needle in ("Joudaki et al. 2023", "Fig. 1, eq. (10)", "The statement &lt;with&gt; &amp; special",
                       "Settings", "width", "512", "Measured", "0.4975", "Expected", "0.5 ± 0.01", "Verdict",
                       "Notes", "quick scale"):
            assert needle in sec, (cid, needle)
    assert "<span class='FAIL'>FAIL (unexplained)</span>" in page and "1 PASS, 1 FAIL: 1 unexplained." in page
    assert "class='banner'" in page  # quick scale: the report says verdicts may differ at paper scale
    md = paths["md"].read_text()
    assert "| X-fig1 | Joudaki et al. 2023 | Fig. 1, eq. (10) | PASS | 1.2 |" in md
    assert "![X-fig1](figures/X-fig1.png)" in md and "--scale paper" in md


def test_results_json_has_versions_seeds_and_wall_times(tmp_path):
    write_report([_result(tmp_path)], tmp_path, meta={"scale": "quick", "seed": 7, "device": "cpu"})
    res = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN became a string
    env = res["environment"]
    assert {"normfield", "torch", "numpy", "python", "device"} <= set(env)
    assert res["run"]["scale"] == "quick" and res["run"]["seed"] == 7
    (c,) = res["claims"]
    assert c["seeds"] == [3, 4] and c["wall_time_s"] == 1.25 and c["measured"]["ratio"] == "nan"
    assert c["figures"] == ["figures/X-fig1.png"] and c["sweeps"][0]["cached"] == 1
    assert res["summary"] == {"claims": 1, "pass": 1, "fail": 0, "not_reproduced": 0, "unexplained": 0,
                              "line": "1 PASS, 0 FAIL", "scale": "quick"}
    assert c["failure"] == ""


def test_verdict_words_per_claim_and_in_the_summary_line(tmp_path):
    from normfield.report.writer import summary_line

    results = [_result(tmp_path, f"P{i}") for i in range(3)]
    results += [_result(tmp_path, f"N{i}", "FAIL", notes="cause measured") for i in range(2)]
    for r in results[3:]:
        r.failure = "not-reproduced"
    results.append(_result(tmp_path, "U0", "FAIL"))  # failure defaults to "unexplained"
    line = "3 PASS, 3 FAIL: 2 paper statements not reproduced (cause measured), 1 unexplained"
    assert summary_line(results) == line
    assert summary_line(results[:4]) == "3 PASS, 1 FAIL: 1 paper statement not reproduced (cause measured)"
    paths = write_report(results, tmp_path, meta={"scale": "quick"})
    res = json.loads(paths["json"].read_text())
    assert [c["failure"] for c in res["claims"]] == ["", "", "", "not-reproduced", "not-reproduced", "unexplained"]
    assert res["summary"]["not_reproduced"] == 2 and res["summary"]["unexplained"] == 1
    assert res["summary"]["line"] == line
    md = paths["md"].read_text()
    assert line + "." in md
    assert "| N0 | Joudaki et al. 2023 | Fig. 1, eq. (10) | FAIL (paper statement not reproduced) |" in md
    assert "## U0: title of U0 — **FAIL (unexplained)**" in md
    page = paths["html"].read_text()
    assert line + ".</p>" in page and "<span class='FAIL'>FAIL (paper statement not reproduced)</span>" in page


def test_tidy_data_roundtrip(tmp_path):
    r = _result(tmp_path)
    write_report([r], tmp_path, meta={"scale": "paper"})
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "data" / "X-fig1_curve.parquet"), r.data["curve"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "data" / "X-fig1_curve.csv"), r.data["curve"])
    assert "class='banner'" not in (tmp_path / "report.html").read_text()  # paper scale: no banner


def test_missing_figure_is_flagged_not_hidden(tmp_path):
    r = _result(tmp_path, fig=False)
    r.figures = [tmp_path / "figures" / "never_drawn.png"]
    write_report([r], tmp_path, meta={"scale": "quick"})
    assert "figures/never_drawn.png is missing" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["claims"][0]["missing_figures"]


def test_atomic_write_leaves_no_temporaries(tmp_path):
    atomic_write(tmp_path / "a.txt", "x" * 1000)
    atomic_write(tmp_path / "a.txt", "y")
    assert (tmp_path / "a.txt").read_text() == "y"
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]

    class Boom(Exception):
        pass

    class Bad:
        def encode(self, *a):
            raise Boom

    with pytest.raises(Exception):
        atomic_write(tmp_path / "b.txt", Bad())  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_jsonable():
    import numpy as np

    assert jsonable({"a": np.float64(1.5), "b": np.arange(2), "c": float("inf"), "d": np.bool_(True)}) == {
        "a": 1.5, "b": [0, 1], "c": "inf", "d": True}


def test_comparison_with_another_scale_says_where_verdicts_differ(tmp_path):
    from normfield.report.writer import load_comparison

    other = tmp_path / "paper"
    write_report([_result(other, "X-fig1", "FAIL"), _result(other, "K-thm3", "PASS")], other,
                 meta={"scale": "paper"})
    here = tmp_path / "quick"
    cmp = load_comparison(other)  # a directory holding results.json
    assert cmp["scale"] == "paper" and cmp["verdicts"] == {"X-fig1": "FAIL", "K-thm3": "PASS"}
    paths = write_report([_result(here, "X-fig1", "PASS"), _result(here, "K-thm3", "PASS"),
                          _result(here, "J-new", "PASS")], here, meta={"scale": "quick"}, compare=cmp)
    page = paths["html"].read_text()
    assert "verdicts differ for <b>X-fig1</b>" in page and "<th>verdict at paper</th>" in page
    assert "DIFFERS at scale paper: FAIL there, PASS here" in page
    assert "same verdict at scale paper (PASS)" in page and "not run at scale paper" in page
    res = json.loads(paths["json"].read_text())
    assert res["summary"]["verdicts_differ"] == ["X-fig1"]
    assert res["claims"][0]["compare"] == {"scale": "paper", "verdict": "FAIL"}
    assert "| X-fig1 | Joudaki et al. 2023 | Fig. 1, eq. (10) | PASS | FAIL (differs) |" in paths["md"].read_text()
