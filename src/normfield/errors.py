"""The one error type of normfield.

Every refusal of bad input raises :class:`NormfieldError`, a subclass of
``ValueError`` whose message names the offending argument and the accepted
range.  The CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations

__all__ = ["NormfieldError"]


class NormfieldError(ValueError):
    """Bad input or a regime the theory does not cover.

    Args:
        message: what is wrong, naming the argument and the accepted values.
        argument: the name of the offending argument (optional, for tooling).
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument
