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
