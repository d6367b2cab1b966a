"""Smooth random fields: the spatial variation of tissue parameters, of S0 and of the fibre orientation.

Every field is drawn on the whole template grid and then cropped, so the truth of a crop equals the
same region of the uncropped phantom.  The draws of one generator follow a fixed order: the
parameter fields (tissue by tissue, parameter by parameter), then the S0 field, then the three
components of the fibre field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .tissues import TISSUES

__all__ = [
    "ORIENTATION_FWHM_MM",
    "S0_FIELD_STD",
    "fibre_field",
    "parameter_fields",
    "s0_field",
    "smooth_random_field",
]

#: Relative standard deviation of the smooth multiplicative S0 field (receive-coil inhomogeneity).
S0_FIELD_STD = 0.05
#: FWHM (mm) of the smooth field that orients the fibres.
ORIENTATION_FWHM_MM = 20.0

#: A region of a grid: one slice per axis.
Region = tuple[slice, slice, slice]


def smooth_random_field(
    shape: Sequence[int], *, fwhm_voxels: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to zero mean and unit standard deviation.

    Parameters
    ----------
    shape : sequence of int
        Grid shape.
    fwhm_voxels : float
        Full width at half maximum of the Gaussian kernel, in voxels (0: white noise).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    if fwhm_voxels > 0:
        sigma = fwhm_voxels / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect")
    noise -= noise.mean(dtype=np.float64)
    std = float(noise.std(dtype=np.float64))
    return noise / std if std > 0 else noise


def parameter_fields(
    names: Sequence[str],
    *,
    grid_shape: Sequence[int],
    region: Region,
    fwhm_voxels: float,
    rng: np.random.Generator,
) -> dict[tuple[str, str], np.ndarray]:
    """One unit-variance smooth field per tissue and parameter, cropped to ``region``.

    Parameters
    ----------
    names : sequence of str
        Scalar parameters of the model.
    grid_shape : sequence of int
        Shape (X, Y, Z) of the whole template grid the fields are drawn on.
    region : tuple of slice
        Part of the grid kept.
    fwhm_voxels : float
        FWHM of the fields, voxels.
    rng : numpy.random.Generator
        Draws the fields tissue by tissue (:data:`~varmap.phantom.tissues.TISSUES` order), parameter
        by parameter.

    Returns
    -------
    dict of ndarray
        ``fields[tissue, name]``, float32, shape of the region.
    """
    fields = {}
    for tissue in TISSUES:
        for name in names:
            fields[tissue, name] = smooth_random_field(grid_shape, fwhm_voxels=fwhm_voxels, rng=rng)[region]
    return fields


def s0_field(
    *, grid_shape: Sequence[int], region: Region, fwhm_voxels: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth multiplicative S0 field ``B = 1 + S0_FIELD_STD * z`` (receive-coil inhomogeneity).

    Parameters
    ----------
    grid_shape, region, fwhm_voxels, rng
        As in :func:`parameter_fields`; one field is drawn.

    Returns
    -------
    ndarray, float32, shape of the region
    """
    return 1.0 + S0_FIELD_STD * smooth_random_field(grid_shape, fwhm_voxels=fwhm_voxels, rng=rng)[region]


def fibre_field(
    *, grid_shape: Sequence[int], region: Region, voxel_size: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth unit vector field of fibre directions, shared by all tissues.

    Parameters
    ----------
    grid_shape, region, rng
        As in :func:`parameter_fields`; three fields are drawn, one per component.
    voxel_size : float
        Isotropic voxel size, mm; the components have a FWHM of :data:`ORIENTATION_FWHM_MM`.

    Returns
    -------
    ndarray, float32, shape of the region + (3,)
        Unit vectors in voxel axes: three smooth random fields, normalised.
    """
    fwhm_voxels = ORIENTATION_FWHM_MM / voxel_size
    components = [
        smooth_random_field(grid_shape, fwhm_voxels=fwhm_voxels, rng=rng)[region] for _ in range(3)
    ]
    direction = np.stack(components, axis=-1)
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    return direction
