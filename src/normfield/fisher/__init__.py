"""fisher subpackage."""

__all__: list[str] = []
