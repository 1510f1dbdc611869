"""analyze subpackage."""

__all__: list[str] = []
