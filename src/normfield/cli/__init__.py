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
        try:
            module = importlib.import_module(f"normfield.cli.{mod.name}")
            if hasattr(module, "register"):
                module.register(sub)
        except Exception as e:  # noqa: BLE001 - one broken command must not take the others down
            _register_broken(sub, mod.name, e)
    return parser


class _BrokenCommand(Exception):
    """A subcommand whose module failed to import (a bug, not bad input: exit 1)."""


def _register_broken(sub: argparse._SubParsersAction, name: str, err: Exception) -> None:
    msg = f"{type(err).__name__}: {err}"
    try:
        p = sub.add_parser(name.replace("_", "-"), help=f"(unavailable: {msg[:60]})", add_help=False)
    except Exception:  # noqa: BLE001 - e.g. the module registered half its parser before failing
        return
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> None:
        raise _BrokenCommand(f"command {name!r} is unavailable: its module failed to import ({msg})")

    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``normfield`` command."""
    from normfield.cli._common import emit

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        payload, render = args.func(args)
    except NormfieldError as e:
        print(f"normfield: error: {e}", file=sys.stderr)
        return 2
    except _BrokenCommand as e:
        print(f"normfield: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("normfield: interrupted (finished cells are cached; re-run to resume)", file=sys.stderr)
        return 130
    try:
        emit(args, payload, render)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `normfield ... --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
