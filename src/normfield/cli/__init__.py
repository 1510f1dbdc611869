"""The ``normfield`` command line.

Argument parsing and printing only. Each subcommand lives in its own module
of this package and exposes ``register(subparsers)``; :func:`main` discovers
them. A subcommand's handler returns a JSON-serialisable dict and a function
that renders it as a human table; ``--json`` prints the dict instead.
Bad input (:class:`normfield.NormfieldError`) becomes a one-line message on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import Sequence

from normfield.errors import NormfieldError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"normfield: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from normfield._version import __version__

    parser = _Parser(prog="normfield", description="Normalization in random neural networks: "
                     "mean-field theory, finite-width simulation, and the papers' experiments.")
    parser.add_argument("--version", action="version", version=f"normfield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    import normfield.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"normfield.cli.{mod.name}")  # a broken command module raises
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``normfield`` command."""
    from normfield.cli._common import emit

    from normfield.runner.executors import default_executor, open_executors, shutdown_executors

    parser = build_parser()
    args = parser.parse_args(argv)
    opened_before = open_executors()
    try:
        with default_executor("auto", flags=True):  # the usable CPUs unless told otherwise; errors name flags
            payload, render = args.func(args)
    except NormfieldError as e:
        print(f"normfield: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normfield: interrupted (finished cells are cached; re-run to resume)", file=sys.stderr)
        return 130
    finally:
        shutdown_executors(keep=opened_before)  # the pools and clusters this command opened
    try:
        emit(args, payload, render)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `normfield ... --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
