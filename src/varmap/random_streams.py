"""Named random streams: one generator per purpose, derived from the user's seed by the purpose's name.

A fit draws random numbers for several unrelated purposes (network initialisation, the held-out split,
mini-batch order, reparametrisation noise, importance samples, ...).  Each purpose gets its own stream,
so that adding draws to one purpose leaves every other stream, and so every other result, unchanged,
and no purpose shares a seed with another by accident (as ``seed + 1`` for one and ``seed + 1`` of a
neighbouring seed for another would).  Nothing here touches torch's or numpy's global generators.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["stream_seed", "numpy_stream", "torch_stream"]


def _sequence(seed: int, name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit integer seed for the stream ``name`` of ``seed`` (the same on every machine)."""
    return int(_sequence(seed, name).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_stream(seed: int, name: str) -> np.random.Generator:
    """A ``numpy.random.Generator`` for the stream ``name`` of ``seed``."""
    return np.random.default_rng(_sequence(seed, name))


def torch_stream(seed: int, name: str, device: "torch.device | str" = "cpu") -> "torch.Generator":
    """A ``torch.Generator`` on ``device`` for the stream ``name`` of ``seed``."""
    import torch

    return torch.Generator(device=device).manual_seed(stream_seed(seed, name))
