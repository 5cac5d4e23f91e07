"""A file version's content: an ordered list of (block hash, length).

Blocks of one file all have the network's block size except the last; a hole (``HOLE``) is a run of
zeros that is not stored. These helpers map byte ranges to blocks; they never touch bytes themselves.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate

from ecliptic.mesh.blocks import HOLE

Block = tuple[str, int]


def size_of(blocks: Sequence[Block]) -> int:
    return sum(length for _, length in blocks)


def starts(blocks: Sequence[Block]) -> list[int]:
    """Offset of the first byte of each block."""
    return [0, *accumulate(length for _, length in blocks)][:-1] if blocks else []


def spans(blocks: Sequence[Block], offset: int, size: int) -> Iterator[tuple[int, int, int]]:
    """(block index, offset inside the block, byte count) covering ``[offset, offset + size)``."""
    if size <= 0 or not blocks:
        return
    first = starts(blocks)
    index = max(bisect_right(first, offset) - 1, 0)
    end = offset + size
    position = offset
    while index < len(blocks) and position < end:
        block_start = first[index]
        length = blocks[index][1]
        inside = position - block_start
        if inside < length:
            count = min(length - inside, end - position)
            yield index, inside, count
            position += count
        index += 1


def holes(length: int, block_size: int) -> list[Block]:
    """Zero-filled blocks of ``length`` bytes in total (a truncate that grows a file)."""
    whole, rest = divmod(length, block_size)
    return [(HOLE, block_size)] * whole + ([(HOLE, rest)] if rest else [])


def unique_hashes(blocks: Sequence[Block]) -> list[str]:
    return list(dict.fromkeys(digest for digest, _ in blocks if digest != HOLE))
