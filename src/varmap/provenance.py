"""What a result records about how it was made: machine, library versions, command line, JSON values."""

from __future__ import annotations

import math
import os
import platform
from os import PathLike
from typing import Any

import numpy as np

__all__ = ["environment", "command_line", "python_call", "jsonable"]


def environment() -> dict:
    """The machine and libraries a fit or benchmark ran on.

    Returns
    -------
    dict
        ``platform``, ``processor``, ``cpu_count``, ``python``, ``numpy``, ``torch``, ``dipy``,
        ``torch_threads`` and ``cuda`` (the GPU's name, or ``None``).
    """
    import dipy
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "dipy": dipy.__version__,
        "torch_threads": int(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_line(argv: list[str] | tuple[str, ...]) -> str:
    """The shell command ``varmap ARGV...`` as a user would type it."""
    import shlex

    return shlex.join(["varmap", *argv])


def python_call(function: str, *args: Any, **kwargs: Any) -> str:
    """A readable ``varmap.function(...)`` call for a fit started from Python (``None`` keywords left out)."""
    parts = [repr(str(a)) for a in args]
    parts += [f"{k}={str(v) if isinstance(v, PathLike) else v!r}" for k, v in kwargs.items() if v is not None]
    return f"varmap.{function}({', '.join(parts)})"


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays to Python, non-finite floats to ``None``, paths to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
