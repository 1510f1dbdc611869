"""Run the documentation's examples as a reader would, and check the numbers they state.

Used by ``tests/test_docs.py``; the rules for writing a page are in its docstring and in
docs/DESIGN.md ("Docs are tested"). In short:

* Pages: ``README.md`` and ``docs/*.md``. Blocks: fenced ```` ```python ````, ```` ```bash ```` (also
  ``sh``/``shell``), and transcripts: a ```` ```console ````, ```` ```text ```` or bare ```` ``` ```` block
  with ``$ command`` lines, each followed by the output it prints. A ```` ```text ```` block right after a
  ```` ```bash ```` block (nothing but blank lines between) is the output of that block's last command.
* A python block runs as a script in a new process. It continues the page's earlier python blocks
  (they run first, unchecked) unless its first code line is an ``import``/``from`` line, which starts
  a new script; ``continue``/``new`` override that.
* A bash block runs line by line (``\\`` continuations joined); a transcript runs each ``$`` line.
* Checked numbers: a ``# comment`` on a line of a python block whose text before the first ``:``
  is only numbers (optionally ``≈``, ``~`` or ``<`` before them, separators ``, ; ( ) [ ]``), e.g.
  ``print(res.lambda_max, res.parameters)   # 189.70, 10730: what they are``, is compared number by
  number with what that statement prints (a statement with such a comment must print). A comment
  that starts with words is prose and is not checked. Expected output is compared line by line, in
  order: text must match (runs of spaces are free), numbers within tolerance; ``...`` stands for any
  text within a line, a line of only ``...`` for any lines; ``0.9555...`` is a truncated number;
  a trailing ``# exit code N`` gives the expected exit status (default 0).
* Tolerance: a number matches as written (within half a unit of its last digit, a whole unit when
  truncated with ``...``); ``≈``/``~`` before it allows 5 %; a directive ``rtol=X`` allows X
  relatively for every number of the block (or page). ``< X`` means below X.
* Directives are HTML comments (invisible on the rendered page), each on a line of its own:
  ``<!-- docs-test: ... -->`` on the lines just above a block (for that block), or
  ``<!-- docs-test-page: ... -->`` anywhere (for every block of the page); several are separated by ``;``:
  ``skip: REASON`` (listed as skipped with the reason), ``heavy`` (runs only under ``-m heavy``:
  blocks over ~30 s), ``rtol=0.05``, ``continue``, ``new``, ``numbers=unchecked`` (compare the text
  of the output, not its numbers: timings), ``timeout=SECONDS`` (default 300).
* Automatic rules for commands (bash lines, transcript lines, and python blocks by their text):
  install lines (``pip install``, ``python3 -m venv``), ``--scale paper``, Dask clusters
  (``tcp://``, ``dask scheduler``/``dask worker``, ``--dask-local N`` or ``dask_local=N`` with N > 2),
  CIFAR-100 files and ``--device cuda`` without a GPU are skipped with the reason, and so is a shell
  line whose trailing comment says ``needs …`` (the reason). A
  ``normfield reproduce`` line without ``--scale`` runs at ``--scale smoke`` (same code, tiny sizes);
  as written it runs under ``-m heavy``.
* Where: every block (all lines of a shell block together, as one shell session) runs in a fresh
  temporary directory that mirrors the repository's top-level
  folders (``examples``, ``benchmarks``, ``docs``, ``src``, ``tests``) by symbolic links, with
  ``HOME`` pointing there too, so ``examples/vit.py:make_model`` and ``from examples.vit import
  make_model`` resolve as from the repository root while whatever a block writes lands in the
  temporary directory. ``normfield`` commands run in this process through ``normfield.cli.main`` (the
  console script's entry point: it saves the 3-4 s of CPU each new process spends importing torch);
  any other command runs in bash. Everything runs with one BLAS/torch thread (tests run one at a
  time; on a busy machine a second spinning thread costs several times the CPU, and the stated
  numbers have fewer digits than the thread count changes).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from docs_numbers import (  # noqa: F401 - compare_output and stated_numbers: the checker's API too
    check_printed,
    checked_comment_lines,
    compare_output,
    instrument,
    printed_by_line,
    stated_numbers,
)

ROOT = Path(__file__).resolve().parents[1]
MIRRORED = ("examples", "benchmarks", "docs", "src", "tests")
DEFAULT_TIMEOUT_S = 300
_DIRECTIVE_RE = re.compile(r"<!--\s*docs-test(-page)?:\s*(.*?)\s*-->")
_FENCE_RE = re.compile(r"^ {0,3}```\s*([\w+-]*)\s*$")


def pages() -> list[Path]:
    """README.md and every docs/*.md, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- parsing ----------------------------------------------------------------------------------------
@dataclass
class Block:
    """One fenced block of a page: its language, text, first line (1-based) and directives."""

    page: str
    index: int  # among the page's fenced blocks, from 1
    lang: str
    text: str
    line: int
    directives: dict = field(default_factory=dict)
    follows: int | None = None  # index of the block directly above (only blank lines between)


def parse_directives(text: str) -> dict:
    """``"heavy; rtol=0.05; skip: needs a GPU"`` -> ``{"heavy": True, "rtol": "0.05", "skip": "needs a GPU"}``."""
    out: dict = {}
    for part in (p.strip() for p in text.split(";")):
        m = re.match(r"([\w-]+)\s*(?:[:=]\s*(.*))?$", part)
        if m:
            out[m.group(1)] = m.group(2).strip() if m.group(2) is not None else True
    return out


def parse_page(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the directives that apply to each."""
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    page_dirs: dict = {}
    pending: dict = {}
    blocks: list[Block] = []
    i, last_end, since_last = 0, -10, False
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE_RE.fullmatch(line.strip())  # on a line of its own (not quoted in prose)
        if m:
            (page_dirs if m.group(1) else pending).update(parse_directives(m.group(2)))
        fence = _FENCE_RE.match(line)
        if not fence:
            if line.strip() and not _DIRECTIVE_RE.fullmatch(line.strip()):
                since_last = True
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not re.match(r"^ {0,3}```\s*$", lines[j]):
            j += 1
        follows = blocks[-1].index if blocks and not since_last else None
        blocks.append(Block(rel, len(blocks) + 1, fence.group(1).lower(), "\n".join(lines[i + 1:j]), i + 2,
                            {**page_dirs, **pending}, follows))
        pending, since_last, i = {}, False, j + 1
    for b in blocks:  # a page directive written below a block still applies to it
        b.directives = {**page_dirs, **b.directives}
    return blocks


# -- what to run ------------------------------------------------------------------------------------
@dataclass
class Case:
    """One runnable check: a python script, or one shell command with its expected output."""

    id: str
    page: str
    block: int
    kind: str  # "python" or "command"
    code: str  # the script (python) or the command line
    checked_lines: tuple = ()  # python: 1-based lines of `code` whose comments are checked
    expected: list | None = None  # command: expected output lines (None: not compared)
    exit_code: int = 0
    rtol: float = 0.0
    numbers: bool = True
    heavy: bool = False
    skip: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    line: int = 0  # line of the page where the block (or the command) starts


def _skip_reason(text: str) -> str | None:
    """Why a command (or a python block, by its text) cannot run in CI, or None."""
    rules = [
        (r"\bpip install\b|python3? -m venv", "installs packages (the CI set-up step itself)"),
        (r"--scale paper|scale=\"paper\"", "--scale paper: the papers' sizes, hours on 2 CPU cores"),
        (r"tcp://|tls://|\bdask (scheduler|worker)\b", "needs a running Dask cluster"),
        (r"cifar", "needs the CIFAR-100 files (not shipped)"),
    ]
    for pattern, reason in rules:
        if re.search(pattern, text, flags=re.I):
            return reason
    m = re.search(r"(?:--dask-local[ =]|dask_local=)(\d+)", text)
    if m and int(m.group(1)) > 2:
        return f"starts {m.group(1)} Dask worker processes (CI has 2 cores)"
    if re.search(r"--device cuda|device=\"cuda", text):
        try:
            import torch

            if not torch.cuda.is_available():
                return "needs a CUDA GPU"
        except ImportError:  # pragma: no cover
            return "needs a CUDA GPU"
    return None


def _first_code_line(text: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            return s
    return ""


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) of a shell text with ``\\`` continuations joined; comments and blanks dropped."""
    out, buf, start = [], "", 0
    for k, raw in enumerate(text.splitlines()):
        if not buf:
            start = k
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        if buf.strip() and not buf.strip().startswith("#"):
            out.append((start, buf.strip()))
        buf = ""
    return out


def strip_comment(line: str) -> tuple[str, str]:
    """``cmd  # comment`` -> (``cmd``, ``comment``); a ``#`` inside quotes or a word is not a comment."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip(), line[k + 1:].strip()
    return line.rstrip(), ""


def _exit_code(line: str) -> tuple[str, int | None]:
    m = re.search(r"#\s*exit (?:code|status) (\d+)\s*$", line)
    return (line[: m.start()].rstrip(), int(m.group(1))) if m else (line, None)


def _base(block: Block, kind: str, code: str, ident: str, line: int) -> Case:
    d = block.directives
    return Case(id=ident, page=block.page, block=block.index, kind=kind, code=code, line=line,
                rtol=float(d.get("rtol", 0.0)), numbers=d.get("numbers") != "unchecked",
                heavy=bool(d.get("heavy")), skip=d.get("skip") if isinstance(d.get("skip"), str) else
                ("skipped by the page" if d.get("skip") else None),
                timeout=float(d.get("timeout", DEFAULT_TIMEOUT_S)))


def _smoke(cmd: str) -> str | None:
    """The command with ``--scale smoke`` added to each ``normfield reproduce`` that runs claims, or None."""
    parts = re.split(r"(\s*(?:;|&&)\s*)", cmd)
    changed = False
    for k in range(0, len(parts), 2):
        p = parts[k]
        if re.match(r"normfield reproduce\b", p) and not re.search(r"--scale|--list|--help|-h\b", p):
            parts[k], changed = p + " --scale smoke", True
    return "".join(parts) if changed else None


def _command_cases(block: Block, cmds: list[tuple[int, str, list | None, int]]) -> list[Case]:
    out = []
    multi = len(cmds) > 1
    for k, (offset, line, expected, code) in enumerate(cmds, 1):
        cmd, comment = strip_comment(line)
        ident = f"{block.page}:{block.index}" + (f".{k}" if multi else "")
        case = _base(block, "command", cmd, ident, block.line + offset)
        case.expected, case.exit_code = expected, code
        needs = re.search(r"\bneeds\b.*", comment)
        case.skip = case.skip or _skip_reason(cmd) or (needs.group(0) if needs else None)
        smoke = None if case.skip or case.heavy else _smoke(cmd)
        if smoke is not None:  # the same code path at tiny sizes; output not compared (other numbers)
            light = _base(block, "command", smoke, ident + "-smoke", case.line)
            light.exit_code = case.exit_code
            out.append(light)
            case.heavy = True
        out.append(case)
    return out


def cases_of_page(path: Path) -> list[Case]:
    """Every check of one page, in page order."""
    blocks = parse_page(path)
    out: list[Case] = []
    script: list[str] = []  # the page's python so far (blocks that ran or were skipped are kept apart)
    by_index = {b.index: b for b in blocks}
    for b in blocks:
        d = b.directives
        if b.lang == "python":
            fresh = _first_code_line(b.text).startswith(("import ", "from "))
            fresh = (fresh or bool(d.get("new"))) and not d.get("continue")
            if fresh:
                script = []
            prefix = "\n".join(script)
            offset = prefix.count("\n") + 1 if script else 0
            code = (prefix + "\n" + b.text) if script else b.text
            case = _base(b, "python", code, f"{b.page}:{b.index}", b.line)
            case.skip = case.skip or _skip_reason("\n".join(strip_comment(x)[0] for x in b.text.splitlines()))
            case.checked_lines = tuple(offset + n for n in checked_comment_lines(b.text))
            out.append(case)
            if not case.skip:
                script.append(b.text)
        elif b.lang in ("bash", "sh", "shell"):
            cmds = []
            for o, c in _logical_lines(b.text):
                c, code = _exit_code(c)
                cmds.append((o, c, None, code or 0))
            nxt = next((x for x in blocks if x.follows == b.index and x.lang == "text"
                        and not re.search(r"^\s*\$ ", x.text, re.M)), None)
            if nxt is not None and cmds:
                o, c, _, code = cmds[-1]
                cmds[-1] = (o, c, nxt.text.splitlines(), code)
            out += _command_cases(b, cmds)
        elif b.lang in ("console", "text", "") and re.search(r"^\s*\$ ", b.text, re.M):
            if b.follows and by_index[b.follows].lang in ("bash", "sh", "shell") and b.lang == "text" \
                    and not re.search(r"^\s*\$ ", b.text, re.M):
                continue
            out += _command_cases(b, _transcript(b.text))
    return out


def _transcript(text: str) -> list[tuple[int, str, list, int]]:
    """``$ cmd`` lines (continuations joined) with the output lines below each."""
    lines = text.splitlines()
    cmds: list = []
    k = 0
    while k < len(lines):
        m = re.match(r"^\s*\$ (.*)$", lines[k])
        if not m:
            if cmds:
                cmds[-1][2].append(lines[k])
            k += 1
            continue
        start, cmd = k, m.group(1)
        while cmd.rstrip().endswith("\\") and k + 1 < len(lines):
            k += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[k].strip()
        cmd, code = _exit_code(cmd.strip())
        cmds.append([start, cmd, [], code])
        k += 1
    out = []
    for start, cmd, expected, code in cmds:
        if code is None:  # `# exit code N` may also end the output's last line
            for j in range(len(expected) - 1, -1, -1):
                if expected[j].strip():
                    expected[j], code = _exit_code(expected[j])
                    break
        out.append((start, cmd, expected, code or 0))
    return out


def all_cases() -> list[Case]:
    return [c for p in pages() for c in cases_of_page(p)]


# -- running ------------------------------------------------------------------------------------------
def make_workdir(tmp: Path) -> Path:
    """A directory that looks like the repository root to a reader's commands, but is not it."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in MIRRORED:
        if (ROOT / name).exists():
            (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp


def _env(workdir: Path) -> dict:
    # one BLAS/OpenMP thread: tests run one at a time, and on a busy machine a second spinning thread
    # costs several times the CPU; the stated numbers have fewer digits than a thread count changes
    env = dict(os.environ, HOME=str(workdir), MPLBACKEND="Agg", PYTHONHASHSEED="0", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


def run_python(case: Case, workdir: Path) -> list[str]:
    """Run the case's script; problems (empty: ran and printed what the page says)."""
    try:
        code, expect, problems = instrument(case.code, case.checked_lines)
    except SyntaxError as e:
        return [f"does not parse: {e}"]
    script = workdir / "docs_example.py"
    script.write_text(code, encoding="utf-8")
    try:
        r = subprocess.run([sys.executable, script.name], cwd=workdir, env=_env(workdir), capture_output=True,
                           text=True, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        return [f"ran past {case.timeout:.0f} s (mark the block heavy, or make it smaller)"]
    if r.returncode != 0:
        return [f"exit code {r.returncode}:\n{r.stderr[-3000:]}"]
    printed = printed_by_line(r.stdout)
    return problems + check_printed(expect, printed, case.rtol, case.code)


def _split_chain(cmd: str) -> list[str] | None:
    """``a ; b && c`` -> ``[a, b, c]`` when every part is a plain ``normfield`` command, else None."""
    if re.search(r"[|<>`$()]", cmd.replace("2>&1", "")) or "||" in cmd:
        return None
    parts = [p.strip() for p in re.split(r"\s*(?:;|&&)\s*", cmd) if p.strip()]
    return parts if parts and all(p.startswith("normfield ") or p == "normfield" for p in parts) else None


def run_command(case: Case, workdir: Path) -> tuple[int, str]:
    """Run one command line; (exit code of its last part, stdout + stderr)."""
    chain = _split_chain(case.code)
    if chain is None:
        try:
            r = subprocess.run(["bash", "-c", case.code], cwd=workdir, env=_env(workdir), capture_output=True,
                               text=True, timeout=case.timeout)
        except subprocess.TimeoutExpired:
            return 124, f"ran past {case.timeout:.0f} s"
        return r.returncode, r.stdout + r.stderr
    import torch

    from normfield.cli import main

    old_cwd, old_home, old_threads = os.getcwd(), os.environ.get("HOME"), torch.get_num_threads()
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        torch.set_num_threads(1)  # as in _env
        os.chdir(workdir)
        os.environ["HOME"] = str(workdir)
        for part in chain:
            argv = [os.path.expanduser(a) for a in shlex.split(part)[1:]]
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as e:  # argparse: --help, usage errors
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            if code != 0 and "&&" in case.code:
                break
    finally:
        torch.set_num_threads(old_threads)
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
    return code, out.getvalue() + err.getvalue()


def check_command(case: Case, workdir: Path) -> list[str]:
    code, text = run_command(case, workdir)
    if code != case.exit_code:
        return [f"exit code {code}, the page expects {case.exit_code}:\n{text[-3000:]}"]
    if case.expected is None:
        return []
    return compare_output(case.expected, text, case.rtol, case.numbers)


def run_case(case: Case, workdir: Path) -> list[str]:
    return run_python(case, workdir) if case.kind == "python" else check_command(case, workdir)
