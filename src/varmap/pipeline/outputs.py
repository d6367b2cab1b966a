"""The output folder of a run: maps, ``model.pt``, ``overview.png`` and, last, ``fit.json``.

Every file is written by :mod:`varmap.io` (the figure by :mod:`varmap.plots`) into the temporary
folder of :func:`varmap.io.atomic_output_dir`, which is moved into place only when all are written.
"""

from __future__ import annotations

import time
from os import PathLike
from pathlib import Path

from .. import io
from ..provenance import input_checksums
from .result import ImageFitResult

__all__ = ["write_outputs", "CHECKPOINT_NAME", "SIDECAR_NAME", "FIGURE_NAME"]

#: File names of the fixed outputs.
CHECKPOINT_NAME = "model.pt"
SIDECAR_NAME = "fit.json"
FIGURE_NAME = "overview.png"

#: Maps left out of the overview figure (the clusters get a row of their own).
_NOT_IN_FIGURE = ("mask", "cluster_probs", "clusters")


def write_outputs(
    result: ImageFitResult,
    output_dir: str | PathLike,
    *,
    input_files: dict[str, Path],
    checkpoint: dict | None,
    figure_title: str | None,
    zooms: tuple[float, float, float],
    force: bool,
    started: float,
) -> None:
    """Write every output of ``result`` atomically; ``result`` gets its ``files`` and ``output_dir``.

    Parameters
    ----------
    result : ImageFitResult
        Its ``metadata`` (the content of fit.json) gets the inputs' checksums, the written files and
        the writing timings.
    output_dir : path
    input_files : dict of Path
        Input files by role, checksummed into fit.json.
    checkpoint : dict, optional
        Written as ``model.pt`` (runs that trained).
    figure_title : str, optional
        Title of ``overview.png``; ``None`` draws no figure.
    zooms : tuple of float
        Voxel size in mm (aspect ratio of the figure).
    force : bool
        Replace an existing ``output_dir``.
    started : float
        ``time.perf_counter()`` at the start of the run, for the total time in fit.json.
    """
    metadata = result.metadata
    timings = metadata["timings"]
    t0 = time.perf_counter()
    metadata["inputs"] = input_checksums(input_files)
    timings["checksum_s"] = time.perf_counter() - t0
    output_dir = Path(output_dir)
    files: dict[str, Path] = {}
    with io.atomic_output_dir(output_dir, force=force) as temporary:
        t0 = time.perf_counter()
        for name, array in result.maps.items():
            io.save_map(array, temporary / f"{name}.nii.gz", result.affine, result.header)
            files[name] = output_dir / f"{name}.nii.gz"
        if checkpoint is not None:
            io.save_checkpoint(checkpoint, temporary / CHECKPOINT_NAME)
            files["checkpoint"] = output_dir / CHECKPOINT_NAME
        timings["write_s"] = time.perf_counter() - t0
        if figure_title is not None:
            t0 = time.perf_counter()
            _overview(result, temporary / FIGURE_NAME, zooms=zooms, title=figure_title)
            files["figure"] = output_dir / FIGURE_NAME
            timings["figure_s"] = time.perf_counter() - t0
        metadata["outputs"] = {name: path.name for name, path in files.items()}
        timings["total_s"] = time.perf_counter() - started
        io.save_json(metadata, temporary / SIDECAR_NAME)
        files["sidecar"] = output_dir / SIDECAR_NAME
    result.files.update(files)
    result.output_dir = output_dir


def _overview(result: ImageFitResult, path: Path, *, zooms: tuple[float, float, float], title: str) -> None:
    from ..plots import overview_figure

    shown = {name: array for name, array in result.maps.items() if name not in _NOT_IN_FIGURE}
    overview_figure(shown, result.units, path, clusters=result.maps.get("clusters"), mask=result.mask,
                    zooms=zooms, title=title)
