"""What a result records about how it was made: machine, library versions, command line, input
checksums, and the content of ``fit.json``."""

from __future__ import annotations

import datetime
import math
import os
import platform
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # type hints only: this module loads neither torch nor nibabel
    from .estimators.data import ValidVoxels
    from .io import DWIImage
    from .protocol import Protocol

__all__ = ["environment", "command_line", "python_call", "jsonable", "input_checksums", "fit_record"]


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
    """A ``varmap.function(...)`` call, as Python source, for a fit started from Python.

    Positional arguments and paths are written as strings; ``None`` keywords are left out.
    """
    parts = [repr(str(a)) for a in args]
    parts += [f"{k}={str(v)!r}" if isinstance(v, PathLike) else f"{k}={v!r}" for k, v in kwargs.items() if v is not None]
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


def input_checksums(files: dict[str, str | PathLike]) -> dict[str, dict[str, str]]:
    """Absolute path and SHA-256 checksum of every input file, by role (``dwi``, ``bvals``...)."""
    from .io import sha256sum

    return {name: {"path": str(Path(path).absolute()), "sha256": sha256sum(path)} for name, path in files.items()}


def fit_record(
    *,
    kind: str,
    command: str,
    config: dict,
    image: "DWIImage",
    protocol: "Protocol",
    voxels: "ValidVoxels",
    mask_computed: bool,
    units: dict[str, str],
    history: dict,
    timings: dict[str, float],
) -> dict:
    """The content of ``fit.json``: how a set of maps was made, from what, and on what.

    Parameters
    ----------
    kind : {"fit", "apply"}
        ``varmap fit`` (trained here) or ``varmap apply`` (a checkpoint applied).
    command : str
        The command line or Python call that started the run.
    config : dict
        Model, method, seed, device, options, resolved estimator settings and noise level; recorded
        with the torch threads of :func:`environment` added.
    image : DWIImage
        The input image (shape, voxel size, affine).
    protocol : Protocol
    voxels : ValidVoxels
        Which mask voxels were fitted, and why the others were not.
    mask_computed : bool
        The mask was computed (not given).
    units : dict of str
        Unit of every map.
    history : dict of list
        Training and validation losses per epoch.
    timings : dict of float
        Seconds per stage; the same dict object is kept, so later stages can add to it.

    Returns
    -------
    dict
        Keys ``varmap_version``, ``kind``, ``command``, ``created``, ``config``, ``seed``, ``inputs``
        (filled by :func:`input_checksums` when files are written), ``image``, ``protocol``,
        ``voxels``, ``mask_computed``, ``units``, ``outputs`` (filled when files are written),
        ``timings``, ``history`` and ``environment``.
    """
    from . import __version__

    machine = environment()
    return {
        "varmap_version": __version__,
        "kind": kind,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {**config, "torch_threads": machine["torch_threads"]},
        "seed": config.get("seed"),
        "inputs": {},
        "image": {
            "shape": list(image.shape),
            "voxel_size_mm": list(image.zooms),
            "affine": np.asarray(image.affine).round(8).tolist(),
        },
        "protocol": {
            "n_measurements": protocol.n_measurements,
            "n_b0": protocol.n_b0,
            "shells_s_per_mm2": (protocol.dw_shell_bvals * 1000).round(1).tolist(),
        },
        "voxels": {
            "in_mask": int(voxels.valid.size),
            "fitted": int(voxels.valid.sum()),
            "excluded": voxels.n_excluded,
            "excluded_nonfinite": voxels.n_nonfinite,
            "excluded_nonpositive_b0": voxels.n_nonpositive_b0,
        },
        "mask_computed": mask_computed,
        "units": units,
        "outputs": {},
        "timings": timings,
        "history": jsonable(history),
        "environment": machine,
    }
