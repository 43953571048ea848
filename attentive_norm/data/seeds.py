"""Seeds derived from several integers (run seed, epoch, sample, step, rank), well mixed.

PyTorch's CPU generator keeps only the low 32 bits of a seed, so seeds are hashed (splitmix64)
into 32 bits rather than built by shifting the parts into the high bits.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 32-bit seed that changes with every part."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (part & _MASK64))
    return h & 0xFFFFFFFF
