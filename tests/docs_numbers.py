"""Numbers in the documentation: the ones a page states, and whether what ran agrees with them.

Used by ``tests/docs_runner.py`` (the rules are in its docstring and in docs/DESIGN.md, "Docs are
tested"). A number matches as written: within half a unit of its last written digit (a whole unit
when it is truncated, ``0.9555...``); ``≈``/``~`` before it allows :data:`APPROX_RTOL`; a declared
``rtol`` allows that much relatively; ``< X`` means below X.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

APPROX_RTOL = 0.05  # what ≈ (or ~) before a number allows
MARK = "\x1edocs-test"  # delimits the output of one checked print statement

# a number: not glued to a word before it (kappa1, Conv2d, stem.0, x3) or after it (2d, 1st)
_NUM = r"[-+−]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(rf"(?<![\w.#×^*]){_NUM}(?![\w])")


# -- numbers ----------------------------------------------------------------------------------------
@dataclass
class Number:
    value: float
    tol: float  # absolute, from the written digits
    approx: bool = False
    below: bool = False
    text: str = ""

    def allows(self, x: float, rtol: float) -> bool:
        if self.below:
            return x < self.value
        tol = max(self.tol, (APPROX_RTOL if self.approx else 0.0) * abs(self.value), rtol * abs(self.value))
        return abs(x - self.value) <= tol * (1 + 1e-12)


def _to_float(s: str) -> float:
    return float(s.replace("−", "-"))


def written(s: str, truncated: bool = False) -> Number:
    """A number as written: its value and half a unit of its last digit (a unit when truncated)."""
    m = re.fullmatch(r"[-+−]?(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?", s)
    decimals = len(m.group(2) or "") if m else 0
    exp = int(m.group(3)) if m and m.group(3) else 0
    unit = 10.0 ** (exp - decimals)
    return Number(_to_float(s), unit if truncated else unit / 2, text=s)


def numbers_in(text: str) -> list[float]:
    return [_to_float(m.group(0)) for m in _NUM_RE.finditer(text)]


# -- python blocks: comments on print lines -----------------------------------------------------
def _comments(code: str) -> dict[int, str]:
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string[1:].strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def stated_numbers(comment: str) -> list[Number] | None:
    """The numbers a comment states, or None when it is prose (words before the first ``:``)."""
    head = comment.split(":", 1)[0].strip()
    if not head or not re.match(r"^[≈~<≤]?\s*[-+−]?[\d.]", head):
        return None
    rest = _NUM_RE.sub(" ", head)
    if re.search(r"[^\s,;()\[\]≈~<≤]", rest):
        return None
    out = []
    for m in _NUM_RE.finditer(head):
        before = head[: m.start()].rstrip()
        n = written(m.group(0))
        n.approx = before.endswith(("≈", "~")) or head.startswith(("≈", "~"))  # a leading ≈: every number
        n.below = before.endswith(("<", "≤"))
        out.append(n)
    return out


def checked_comment_lines(code: str) -> list[int]:
    return [ln for ln, c in sorted(_comments(code).items()) if stated_numbers(c) is not None]


def instrument(code: str, lines: tuple) -> tuple[str, dict[int, list[Number]], list[str]]:
    """Put markers around each statement whose comment states numbers; problems for those that print nothing."""
    comments = _comments(code)
    tree = ast.parse(code)
    wanted = set(lines)
    spans: list[tuple[int, int, int]] = []  # (first, last, comment line)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or isinstance(node, (ast.If, ast.For, ast.While, ast.With,
                                                               ast.FunctionDef, ast.ClassDef, ast.Try)):
            continue
        hit = [ln for ln in range(node.lineno, (node.end_lineno or node.lineno) + 1) if ln in wanted]
        if not hit:
            continue
        is_print = isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
            isinstance(node.value.func, ast.Name) and node.value.func.id == "print"
        if not is_print:
            problems.append(f"line {hit[0]}: `# {comments[hit[0]]}` states numbers but the statement prints "
                            "nothing when run as a script: wrap it in print(...)")
            continue
        spans.append((node.lineno, node.end_lineno or node.lineno, hit[0]))
    src = code.splitlines()
    expect: dict[int, list[Number]] = {}
    for first, last, ln in sorted(spans, reverse=True):
        indent = re.match(r"\s*", src[first - 1]).group(0)
        src.insert(last, f"{indent}print({MARK + ' end'!r}, flush=True)")
        src.insert(first - 1, f"{indent}print({MARK + f' {ln}'!r}, flush=True)")
        expect[ln] = stated_numbers(comments[ln]) or []
    return "\n".join(src) + "\n", expect, problems


def printed_by_line(stdout: str) -> dict[int, str]:
    """The text printed between each statement's markers (the last time it ran)."""
    out: dict[int, str] = {}
    for m in re.finditer(re.escape(MARK) + r" (\d+)\n(.*?)" + re.escape(MARK) + " end\n", stdout, flags=re.S):
        out[int(m.group(1))] = m.group(2)
    return out


def check_printed(expect: dict[int, list[Number]], printed: dict[int, str], rtol: float, code: str) -> list[str]:
    src = code.splitlines()
    problems = []
    for ln, nums in sorted(expect.items()):
        where = f"`{src[ln - 1].strip()}`"
        if ln not in printed:
            problems.append(f"{where} did not run")
            continue
        got = numbers_in(printed[ln])
        if len(got) != len(nums):
            problems.append(f"{where} printed {len(got)} numbers ({printed[ln].strip()[:200]!r}), the comment "
                            f"states {len(nums)}")
            continue
        for n, x in zip(nums, got):
            if not n.allows(x, rtol):
                problems.append(f"{where}: printed {x:.6g}, the page says {'< ' if n.below else ''}"
                                f"{'≈ ' if n.approx else ''}{n.text}")
    return problems


# -- expected output --------------------------------------------------------------------------------
def _line_pattern(line: str) -> tuple[re.Pattern, list[Number]]:
    """An expected output line as a regex (numbers captured, ``...`` any text) and its numbers."""
    parts, nums, pos = [], [], 0
    text = line.strip()
    for m in re.finditer(rf"(?:(≈|~)\s*)?({_NUM_RE.pattern})(\.\.\.)?|\.\.\.|…", text):
        parts.append(_text_regex(text[pos:m.start()]))
        if m.group(2) is None:
            parts.append(".*?")
        else:
            n = written(m.group(2), truncated=bool(m.group(3)))
            n.approx = bool(m.group(1))
            nums.append(n)
            parts.append(f"({_NUM})")
        pos = m.end()
    parts.append(_text_regex(text[pos:]))
    return re.compile(r"\s*" + "".join(parts) + r"\s*"), nums


def _text_regex(s: str) -> str:
    """Literal text, any run of spaces standing for any run of spaces (at least one)."""
    return "".join(r"\s+" if w.isspace() else re.escape(w) for w in re.split(r"(\s+)", s) if w)


def compare_output(expected: list[str], actual: str, rtol: float, numbers: bool = True) -> list[str]:
    """Problems found matching the expected lines, in order, against the output (empty: it matches)."""
    out_lines = actual.splitlines()
    pos, problems = 0, []
    for exp in expected:
        if not exp.strip() or re.fullmatch(r"\s*(\.\.\.|…)\s*", exp):
            continue
        pat, nums = _line_pattern(exp)
        first_shape, found = None, False
        for k in range(pos, len(out_lines)):
            m = pat.fullmatch(out_lines[k])
            if not m:
                continue
            got = [_to_float(g) for g in m.groups()]
            bad = [(n, x) for n, x in zip(nums, got) if not n.allows(x, rtol)] if numbers else []
            if not bad:
                pos, found = k + 1, True
                break
            if first_shape is None:
                first_shape = (k, bad)
        if found:
            continue
        if first_shape is None:
            problems.append(f"no output line like {exp.strip()!r}")
        else:
            k, bad = first_shape
            diffs = ", ".join(f"{x:.6g} where the page says {'≈ ' if n.approx else ''}{n.text}" for n, x in bad)
            problems.append(f"line {out_lines[k].strip()!r}: {diffs}")
    return problems
