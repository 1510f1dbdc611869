"""Accuracy-targeted defaults, budgets, product counts, the last-mean projection, figures and the model report.

Accuracy claims are checked against the dense F* of the same model (exact to round-off):
the Lanczos defaults (1e-8 relative in float64, 1e-4 in float32), the stochastic trace's
standard error (target 1 % of the trace; the estimate within 4 standard errors, seeded).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import normfield as nf
from normfield.analyze.cost import DEFAULT_TRACE_RTOL, Budget, parse_budget
from normfield.analyze.plots import plot_layer_conditioning, plot_spectrum
from normfield.errors import NormfieldError
from normfield.report.model import write_model_report

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0, width=24, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, c)).to(DT)


def _x(T=40, seed=1):
    return torch.randn(T, 6, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.fixture(scope="module")
def dense():
    return nf.analyze(_model(), _x(), method="dense", k=5, layers="none", what_if="last-mean", what_if_k=5)


def test_default_tolerance_float64_and_float32(dense):
    lz = nf.analyze(_model(), _x(), method="lanczos", k=5, layers="none", trace="exact")
    assert lz.settings["tol"] == 1e-8
    assert lz.fisher.converged and lz.fisher.lambda_max_rel_error <= 1e-8
    err = np.abs(lz.eigenvalues - dense.eigenvalues) / dense.lambda_max
    assert np.all(err <= 1e-8)
    f32 = nf.analyze(_model(), _x(), method="lanczos", k=5, layers="none", dtype="float32", trace="exact")
    assert f32.settings["tol"] == 1e-4
    # float32 products carry ~1e-7 relative round-off, far below the 1e-4 target
    assert abs(f32.lambda_max - dense.lambda_max) <= 1e-4 * dense.lambda_max
    assert f32.fisher.trace == pytest.approx(dense.fisher.trace, rel=1e-5)


def test_stochastic_trace_reaches_its_standard_error(dense):
    x = _x(T=400)
    exact = nf.analyze(_model(), x, method="lanczos", k=1, layers="none", trace="exact").fisher.trace
    h = nf.analyze(_model(), x, method="lanczos", k=2, layers="none", trace="hutchinson", seed=3)
    f = h.fisher
    assert "hutchinson" in f.method and f.trace_stderr > 0
    assert f.trace_stderr <= DEFAULT_TRACE_RTOL * f.trace * (1 + 1e-12)
    assert abs(f.trace - exact) <= 4 * f.trace_stderr
    fixed = nf.analyze(_model(), _x(), method="lanczos", k=2, layers="none", trace="hutchinson", probes=3, seed=3)
    assert "3 probes" in fixed.fisher.method
    # when the estimator would need more probes than T·C, the exact trace is cheaper and is used
    capped = nf.analyze(_model(), _x(), method="lanczos", k=2, layers="none", trace="hutchinson", seed=3)
    assert capped.fisher.trace == pytest.approx(dense.fisher.trace, rel=1e-10) or "hutchinson" in capped.fisher.method


def test_auto_trace_is_exact_when_cheaper():
    small = nf.analyze(_model(), _x(T=6), method="lanczos", k=2, layers="none")
    assert "exact trace" in small.fisher.method and small.fisher.trace_stderr == 0


def test_last_mean_reuses_the_products(dense):
    lz = nf.analyze(_model(), _x(), method="lanczos", k=3, layers="none", what_if="last-mean", trace="exact")
    w, wd = lz.what_if["last-mean"], dense.what_if["last-mean"]
    assert w.lambda_max == pytest.approx(wd.lambda_max, rel=1e-8)
    assert len(w.eigenvalues) == 1  # the variant's λ_max by default (what_if_k=1)
    w3 = nf.analyze(_model(), _x(), method="lanczos", k=3, layers="none", what_if="last-mean", trace="exact",
                    what_if_k=3).what_if["last-mean"]
    assert np.allclose(w3.eigenvalues, wd.eigenvalues[:3], rtol=1e-8, atol=0)
    assert w3.products > w.products
    # tr(Π F* Π) = tr F* − Σ_k ‖Jᵀu_k‖²/T: the exact trace of F* plus C = 4 VJPs
    assert w.trace == pytest.approx(wd.trace, rel=1e-10)
    lanczos_steps = w.products - 4
    assert 0 < lanczos_steps < lz.fisher.products
    # dense: the projected dual costs no product at all
    assert dense.what_if["last-mean"].products == 0
    # the centred model route (an explicit mean subtraction in the model) gives the same spectrum
    centred = nn.Sequential(_model(), _Center())
    c = nf.analyze(centred, _x(), method="dense", k=3, layers="none")
    assert np.allclose(c.eigenvalues, wd.eigenvalues[:3], rtol=1e-10, atol=0)


class _Center(nn.Module):
    def forward(self, y):
        return y - y.mean(0, keepdim=True)


def test_budget_stops_early_and_says_how_accurate():
    res = nf.analyze(_model(), _x(), method="lanczos", k=5, layers="none", tol=1e-12, budget=12)
    f = res.fisher
    assert not f.converged and f.stopped == "budget"
    assert f.products <= 12 + 2 + 2  # the step in progress, then the two probes a standard error needs
    assert f.lambda_max_rel_error > 0 and np.isfinite(f.trace_stderr)
    d = res.to_dict()
    assert d["fisher"]["converged"] is False and d["settings"]["budget"] == {"products": 12, "seconds": None}
    t = nf.analyze(_model(), _x(), method="lanczos", k=1, layers="none", tol=1e-12, budget="0.000001s")
    assert not t.fisher.converged
    assert parse_budget("30s").seconds == 30 and parse_budget("200").products == 200
    assert parse_budget({"products": 10}).products == 10 and isinstance(parse_budget(Budget(5)), Budget)
    for bad in ["fast", 1, True, "-3s", {"minutes": 2}, 2.5]:
        with pytest.raises(NormfieldError, match="budget"):
            parse_budget(bad)


def test_products_in_result_json_and_progress(capsys):
    res = nf.analyze(_model(), _x(), method="lanczos", k=2, layers="none", what_if="last-mean", progress=True)
    err = capsys.readouterr().err
    assert "product" in err
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    total = d["fisher"]["products"] + d["what_if"]["last-mean"]["products"]
    assert d["settings"]["products"] == total > 0
    for key in ("lambda_max_rel_error", "eigenvalue_rel_errors", "trace_rel_stderr", "converged", "route"):
        assert key in d["fisher"]
    assert d["fisher"]["route"] == "forward"  # too small a model to repay a trace
    with pytest.raises(NormfieldError, match="jvp"):
        nf.analyze(_model(), _x(), jvp="backward")
    with pytest.raises(NormfieldError, match="tol"):
        nf.analyze(_model(), _x(), tol=2.0)


def test_figures(tmp_path, dense):
    import matplotlib.pyplot as plt

    fig = plot_spectrum(dense, path=tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert any(abs(line.get_xdata()[0] - dense.lambda_max) < 1e-9 * dense.lambda_max for line in ax.lines)
    plt.close(fig)
    fig = plot_spectrum(dense, variant="last-mean")
    plt.close(fig)
    lz = nf.analyze(_model(), _x(), method="lanczos", k=2, density=True)
    plt.close(plot_spectrum(lz, path=tmp_path / "d.png"))
    plt.close(plot_layer_conditioning(lz, path=tmp_path / "l.png"))
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("s.png", "d.png", "l.png"))
    with pytest.raises(NormfieldError, match="density=True"):
        plot_spectrum(nf.analyze(_model(), _x(), method="lanczos", k=1, layers="none"))
    with pytest.raises(NormfieldError, match="variant"):
        plot_spectrum(dense, variant="last-bn")
    with pytest.raises(NormfieldError, match="no layer"):
        plot_layer_conditioning(dense)


def _report(tmp_path):
    res = nf.analyze(_model(), _x(), method="dense", k=3, what_if="last-mean")
    return res, write_model_report(res, tmp_path / "rep", title="mlp")


def test_model_report_files(tmp_path):
    res, paths = _report(tmp_path)
    assert {"md", "html", "json", "spectrum.png", "layers.png"} <= set(paths)
    d = json.loads(paths["json"].read_text())
    assert d["result"]["lambda_max"] == pytest.approx(res.lambda_max) and "environment" in d
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "last-mean" in page
    assert "![" in paths["md"].read_text()


CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


_PROBE = """<script>
window.addEventListener('load', function () {
  var res = Array.prototype.slice.call(document.images).map(function (i) {
    return {name: i.getAttribute('data-name'), ok: i.complete && i.naturalWidth > 0}; });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed")
def test_model_report_renders_in_chromium(tmp_path):
    """Every figure of report.html decodes in headless Chromium; a corrupted copy is caught."""
    import html as _html
    import re

    _, paths = _report(tmp_path)

    def render(page: Path) -> list[dict]:
        probed = page.with_name("probed_" + page.name)
        probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000", "--dump-dom",
               probed.as_uri()]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        m = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
        assert m, f"no probe output; rc={out.returncode}; {out.stderr[-500:]}"
        return json.loads(_html.unescape(m.group(1)))

    res = render(paths["html"])
    assert sorted(r["name"] for r in res) == ["layers.png", "spectrum.png"] and all(r["ok"] for r in res)
    bad = paths["html"].with_name("bad.html")
    bad.write_text(paths["html"].read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert not all(r["ok"] for r in render(bad))
