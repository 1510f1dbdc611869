"""One seeding scheme for every sweep.

A sweep cell carries an integer ``seed``; everything random inside the cell is
drawn from generators seeded with it. Two helpers make those integers:

* :func:`derive_seed` hashes any tuple of integers (base seed, role, width,
  replicate, ...) through NumPy's ``SeedSequence`` into a 63-bit seed. Distinct
  tuples give statistically independent streams; use it for new experiments.
* :func:`block_seed` is the positional scheme ``stride·base + block_size·block
  + index`` that the published quick- and paper-scale numbers were computed
  with. It keeps those numbers, and refuses an ``index`` that would run into
  the next block (two cells sharing a seed), which a bare formula would not.
"""

from __future__ import annotations

import numpy as np

from normfield.errors import NormfieldError

__all__ = ["derive_seed", "block_seed"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers: ``SeedSequence(parts).generate_state(2)[0] >> 1``."""
    if not parts:
        raise NormfieldError("derive_seed needs at least one integer", argument="parts")
    try:
        ints = [int(p) for p in parts]
    except (TypeError, ValueError) as e:
        raise NormfieldError(f"derive_seed takes integers, got {parts!r}", argument="parts") from e
    if any(p < 0 for p in ints):
        raise NormfieldError(f"derive_seed takes non-negative integers, got {ints}", argument="parts")
    return int(np.random.SeedSequence(ints).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def block_seed(base: int, block: int, index: int, *, block_size: int = 1000, stride: int | None = None) -> int:
    """``stride·base + block_size·block + index``, with ``0 ≤ index < block_size``.

    Args:
        base: the run's base seed (``--seed``).
        block: which group of cells (one per claim part), ``≥ 0``.
        index: the cell's position in its block.
        block_size: cells a block can hold before it would overlap the next one.
        stride: distance between base seeds (default ``100·block_size``, room for 100 blocks).

    Raises:
        NormfieldError: when ``index`` is outside ``[0, block_size)`` or ``block``
            outside ``[0, stride/block_size)`` (two cells would share a seed).
    """
    stride = 100 * block_size if stride is None else int(stride)
    if not 0 <= int(index) < block_size:
        raise NormfieldError(f"cell index {index} does not fit a seed block of {block_size} cells: "
                             "two cells would share a seed; use a larger block_size or derive_seed",
                             argument="index")
    if not 0 <= int(block) * block_size < stride:
        raise NormfieldError(f"seed block {block} (of {block_size} cells) runs past the stride {stride} "
                             "between base seeds; use a larger stride or derive_seed", argument="block")
    return int(stride) * int(base) + block_size * int(block) + int(index)
