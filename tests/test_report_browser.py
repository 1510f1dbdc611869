"""Open report.html in real headless Chromium and check that every figure rendered.

A copy of the report gets a small script that, once the page has loaded, writes
``img.complete && img.naturalWidth > 0`` for each image into the DOM; Chromium's
``--dump-dom`` prints that DOM. A page with one corrupt image is checked too, so
the check can fail. Skipped (with the reason) when Chromium is not installed;
``.ci/run`` installs it with apt.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from normfield.claims.registry import ClaimContext
from normfield.report import write_report
from normfield.claims._examples import demo_claim

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium; "
                                ".ci/run does this)")

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var res = imgs.map(function (i) { return {name: i.getAttribute('data-name') || i.alt,
                                           ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}; });
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>"""


def _render(page: Path, tmp_path: Path) -> list[dict]:
    probed = page.with_name("probed_" + page.name)
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-extensions", f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000",
           "--dump-dom", probed.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
    assert m, f"no probe output; chromium rc={out.returncode}; stderr tail: {out.stderr[-800:]}"
    return json.loads(html.unescape(m.group(1)))


def test_every_figure_renders_in_chromium(tmp_path):
    out = tmp_path / "report"
    ctx = ClaimContext(scale="smoke", out_dir=out, progress=False)
    r1 = demo_claim(ctx)
    r1.id, r1.title, r1.paper, r1.reference, r1.statement = "R-demo", "demo", "normfield", "closed form", "s"
    r2 = demo_claim(ClaimContext(scale="smoke", out_dir=out, progress=False, seed=5))
    r2.id, r2.title, r2.paper, r2.reference, r2.statement = "R-demo2", "demo 2", "normfield", "closed form", "s"
    paths = write_report([r1, r2], out, meta={"scale": "smoke", "seed": 0, "device": "cpu"})
    # the page must stand alone: move it away from its figures directory before opening it
    alone = tmp_path / "alone"
    alone.mkdir()
    page = alone / "report.html"
    shutil.copy(paths["html"], page)
    res = _render(page, tmp_path)
    assert len(res) == 2, res
    assert all(r["ok"] and r["w"] > 0 for r in res), res


def test_a_corrupt_image_is_detected(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><img data-name='broken' "
                    "src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB'/></body></html>")
    res = _render(page, tmp_path)
    assert res == [{"name": "broken", "ok": False, "w": 0}]
