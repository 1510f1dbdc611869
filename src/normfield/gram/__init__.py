"""gram subpackage."""

__all__: list[str] = []
