"""The result of a whole-image fit: maps in image space, the per-voxel fit and what fit.json records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..results import FitResult

__all__ = ["ImageFitResult"]


@dataclass
class ImageFitResult:
    """Maps of a whole-image fit, in image space.

    Attributes
    ----------
    maps : dict of ndarray
        float32 arrays of shape (X, Y, Z) -- or (X, Y, Z, k) for ``n`` and ``cluster_probs`` -- keyed
        by output name (the file name without ``.nii.gz``); 0 outside the mask and in excluded voxels.
    units : dict of str
        Unit of every map.
    mask : ndarray of bool, shape (X, Y, Z)
        The mask used.
    affine : ndarray, shape (4, 4)
    header : nibabel header
        Header of the input image.
    fit : FitResult
        The per-voxel result (voxels in ``np.nonzero(mask)`` order).
    estimator : Estimator
        The fitted estimator (``transform`` maps new scans of the same protocol).
    metadata : dict
        What ``fit.json`` holds.
    output_dir : Path or None
    files : dict of Path
        Written files keyed by output name.
    """

    maps: dict[str, np.ndarray]
    units: dict[str, str]
    mask: np.ndarray
    affine: np.ndarray
    header: Any
    fit: FitResult
    estimator: Any
    metadata: dict
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Voxels in the mask."""
        return int(self.mask.sum())

    @property
    def n_excluded(self) -> int:
        """Voxels in the mask that were not fitted (NaN/Inf signals or a non-positive b=0 signal)."""
        return int((~self.fit.valid).sum())
