"""train subpackage."""

__all__: list[str] = []
