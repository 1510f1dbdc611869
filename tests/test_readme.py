"""The README's two set-up commands stay true: CI runs exactly the test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_test_command() -> str:
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    assert len(lines) == 1, "CI must run exactly one set-up+test command line"
    return lines[0].strip()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _ci_test_command() in readme


def test_readme_main_job_command_runs_reproduce() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -q -e . && normfield reproduce" in readme


def test_readme_python_blocks_run(capsys) -> None:
    """Every ```python block of the README runs, in order, in one namespace (the quickstart stays true)."""
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has Python examples"
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    # the analyze example prints λ_max, m_λ and P, then the last-mean λ_max (Karakida Thm 3.3: lower)
    first, second = out.splitlines()[:2]
    lam, _, P = (float(v) for v in first.split())
    assert P == 10730 and float(second) < lam
