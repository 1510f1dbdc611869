"""The documentation is tested: every example of README.md and docs/*.md runs as a reader would run it,
and prints what its page says.

One test per python block and per shell command, named ``page:block`` (``page:block.line`` for the
lines of a shell block), collected afresh from the pages on every run, so a new page or section is
picked up by itself. The rules (docs/DESIGN.md, "Docs are tested"; details in
``tests/docs_runner.py``):

* A ```` ```python ```` block runs as a script in a new process; it continues the page's earlier python
  blocks unless its first code line is ``import``/``from``. A ```` ```bash ```` block runs line by line;
  a ```` ```console ````/```` ```text ````/```` ``` ```` block with ``$ command`` lines is a transcript: each
  command runs and its output is compared with the lines below it. A ```` ```text ```` block right after a
  bash block is the output of that block's last command. The lines of one block share a working
  directory (a temporary copy of the repository root made of links), so they run as one shell session.
* Numbers: ``print(x)   # 189.70, 0.486`` (numbers before the first ``:``) is compared with what that
  statement prints; expected output number by number. As written = within half a unit of the last
  digit; ``≈ 8.3`` = 5 %; ``< 1e-8`` = below; ``0.9555...`` = truncated.
* Markers for a block's author, an HTML comment on the line(s) just above the block
  (``docs-test-page:`` instead of ``docs-test:`` for the whole page):

  - ``<!-- docs-test: skip: REASON -->`` — cannot run in CI (listed as skipped, with the reason);
  - ``<!-- docs-test: heavy -->`` — runs longer than ~30 s: only under ``python -m pytest -m heavy``;
  - ``<!-- docs-test: rtol=0.02 -->`` — tolerance for every number of the block;
  - ``<!-- docs-test: numbers=unchecked -->`` — compare the output's text only (timings);
  - ``<!-- docs-test: continue -->`` / ``<!-- docs-test: new -->`` — python block joins / does not
    join the page's earlier python blocks;
  - a shell command whose trailing comment says ``needs …`` is skipped with that reason.

  Skipped without a marker: installs (``pip install``, ``python3 -m venv``), ``--scale paper``,
  Dask clusters (``tcp://``, ``dask scheduler``/``worker``), ``--dask-local N``/``dask_local=N`` with
  N > 2, CIFAR-100 files, ``--device cuda`` without a GPU. A ``normfield reproduce`` command without
  ``--scale`` runs at ``--scale smoke`` by default (``...-smoke`` ids) and as written under ``-m heavy``.
"""

from __future__ import annotations

import pytest

from docs_runner import all_cases, cases_of_page, compare_output, make_workdir, run_case, stated_numbers

CASES = all_cases()


def _param(case):
    marks = [pytest.mark.heavy] if case.heavy else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """One working directory per (page, block): the lines of a shell block run as one session."""
    made: dict = {}

    def get(case):
        key = (case.page, case.block)
        if key not in made:
            made[key] = make_workdir(tmp_path_factory.mktemp(f"{case.page}-{case.block}".replace("/", "_")))
        return made[key]

    return get


def test_the_pages_have_examples():
    pages = {c.page for c in CASES}
    assert "README.md" in pages and len(pages) >= 5, pages
    assert any(c.kind == "python" for c in CASES) and any(c.kind == "command" for c in CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_doc_example(case, workdirs):
    if case.skip:
        pytest.skip(f"{case.page} line {case.line}: {case.skip}")
    problems = run_case(case, workdirs(case))
    where = f"{case.page}, block {case.block} (line {case.line})"
    assert not problems, f"{where}:\n" + "\n".join(f"  - {p}" for p in problems)


# -- the checker itself: it must fail when a stated number drifts ----------------------------------------

PAGE = '''# A page

<!-- docs-test: rtol=0.01 -->
```python
import math
print(math.pi, 10)          # 3.14, 10: within 1 %, and as written
print(math.e)               # {e}: Euler's number
```

```python
print(round(math.e, 1))     # 2.7: this block continues the one above (no import line)
```

<!-- docs-test: skip: not here -->
```bash
normfield reproduce --help
```

```text
$ python -c "print('x = 1.00049', 2)"
x = 1.0 ≈ 2
```

```bash
python -c "print('pi', 3.14159)"
```

```text
pi 3.1416
```
'''


def test_stated_numbers_are_numbers_before_the_first_colon():
    assert [n.value for n in stated_numbers("170.90, 0.498, 10730: what they are")] == [170.90, 0.498, 10730]
    assert stated_numbers("Thm 2.2: lambda_max ≈ 345") is None  # prose
    (n,) = stated_numbers("< 1e-8: converges")
    assert n.below and n.allows(2e-9, 0) and not n.allows(2e-8, 0)
    (n,) = stated_numbers("≈ 8.3")
    assert n.allows(8.3 * 1.049, 0) and not n.allows(8.3 * 1.051, 0)  # ≈: 5 %
    (n,) = stated_numbers("0.498")
    assert n.allows(0.4984, 0) and not n.allows(0.4986, 0)  # as written: half a unit of the last digit


def test_expected_output_numbers_text_and_elisions():
    out = "head\n  variant  lambda_max\n as given     6.88347\nmiddle\nlast 0.95553, 12\n"
    assert compare_output(["variant  lambda_max", "as given 6.88347", "...", "last 0.9555..., 12"], out, 0) == []
    (p,) = compare_output(["as given 6.88447"], out, 0)  # one digit off
    assert "6.88347 where the page says 6.88447" in p
    assert compare_output(["as given 6.88447"], out, 1e-3) == []  # within a declared rtol
    (p,) = compare_output(["as given  rel_err  6.88347"], out, 0)  # a column the output does not have
    assert p.startswith("no output line like")


def test_a_page_with_a_drifted_number_fails_and_the_same_page_passes(tmp_path):
    def run(e):
        page = tmp_path / f"page{e}.md"
        page.write_text(PAGE.replace("{e}", e))
        cases = cases_of_page(page)
        assert [c.kind for c in cases] == ["python", "python", "command", "command", "command"]
        assert cases[4].expected == ["pi 3.1416"]  # the text block under a bash block is its output
        assert cases[2].skip == "not here" and cases[0].rtol == 0.01 and cases[1].rtol == 0
        assert "import math" in cases[1].code  # continued the first block
        work = make_workdir(tmp_path / f"work{e}")
        return [run_case(c, work) for c in cases if not c.skip]

    assert run("2.718") == [[], [], [], []]
    first, second, third, fourth = run("2.818")  # 3.7 % off: past the block's 1 %
    assert len(first) == 1 and "printed 2.71828, the page says 2.818" in first[0]
    assert second == [] and third == [] and fourth == []
