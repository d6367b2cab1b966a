"""Smooth random fields: the spatial variation of tissue parameters, of S0 and of the fibre orientation.

Every field is drawn on the whole template grid and then cropped, so the truth of a crop equals the
same region of the uncropped phantom.  The draws of one generator follow a fixed order: the
parameter fields (tissue by tissue, parameter by parameter), then the S0 field, then the three
components of the fibre field.  The noise-level field (:func:`noise_field`) draws from its own
generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .tissues import TISSUES

__all__ = [
    "NOISE_FIELD_COILS",
    "NOISE_FIELD_RANGE",
    "ORIENTATION_FWHM_MM",
    "S0_FIELD_STD",
    "fibre_field",
    "noise_field",
    "parameter_fields",
    "s0_field",
    "smooth_random_field",
]

#: Relative standard deviation of the smooth multiplicative S0 field (receive-coil inhomogeneity).
S0_FIELD_STD = 0.05
#: FWHM (mm) of the smooth field that orients the fibres.
ORIENTATION_FWHM_MM = 20.0
#: Smallest and largest factor of the noise-level field over the brain.
NOISE_FIELD_RANGE = (1.0, 3.0)
#: Virtual receive coils of the noise-level field, and their loop radius (mm).
NOISE_FIELD_COILS = 8
_COIL_RADIUS_MM = 40.0

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


def noise_field(
    *, brain: np.ndarray, region: Region, voxel_size: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth multiplicative field of the noise level, like a parallel-imaging g-factor / coil profile.

    Parameters
    ----------
    brain : ndarray, shape (X, Y, Z)
        Brain-mask fraction on the whole template grid (the field's range is set on ``brain >= 0.5``).
    region : tuple of slice
        Part of the grid kept.
    voxel_size : float
        Isotropic voxel size, mm.
    rng : numpy.random.Generator
        Draws the coils' placement (one rotation about the head's vertical axis, then one elevation
        per coil).

    Returns
    -------
    ndarray, float32, shape of the region
        Factor of the noise standard deviation: from :data:`NOISE_FIELD_RANGE` [0] to [1] over the
        whole brain mask (lowest near the coils, highest deep inside), positive everywhere.

    Notes
    -----
    :data:`NOISE_FIELD_COILS` circular coils of radius 40 mm sit on an ellipsoid 1.25 times the brain's
    half-extent around its centre, evenly spaced in azimuth (a random rotation) at random elevations in
    [-20°, 40°].  Coil i's sensitivity falls off as the on-axis field of a current loop,
    :math:`c_i = (1 + d_i^2 / a^2)^{-3/2}` with :math:`d_i` the distance to it; the root-sum-of-squares
    combination :math:`S = \\sqrt{\\sum_i c_i^2}` gives a noise level ∝ 1/S in signal-normalised
    images.  log(1/S) is mapped linearly onto [log 1, log 3] over the brain, so the field is a power
    of 1/S: smooth, from 1 at the best-covered brain voxel to 3 at the least covered.
    """
    inside = np.argwhere(brain >= 0.5).astype(np.float64) * voxel_size
    centre = (inside.min(axis=0) + inside.max(axis=0)) / 2
    half = 1.25 * (inside.max(axis=0) - inside.min(axis=0)) / 2
    azimuth = rng.uniform(0.0, 2 * np.pi) + np.arange(NOISE_FIELD_COILS) * 2 * np.pi / NOISE_FIELD_COILS
    elevation = np.radians(rng.uniform(-20.0, 40.0, NOISE_FIELD_COILS))
    # Axis 2 of the template grid is inferior-superior; axes 0 and 1 span the axial plane.
    unit = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], 1)
    coils = centre + half * unit
    axes = [np.arange(n, dtype=np.float64)[s] * voxel_size for n, s in zip(brain.shape, region)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    brain_low, brain_high = (f(_log_noise_level(inside, coils)) for f in (np.min, np.max))
    scaled = (_log_noise_level(grid, coils) - brain_low) / (brain_high - brain_low)
    low, high = NOISE_FIELD_RANGE
    return np.exp(np.log(low) + scaled * (np.log(high) - np.log(low))).astype(np.float32)


def _log_noise_level(points_mm: np.ndarray, coils: np.ndarray) -> np.ndarray:
    """log(1/S) at points (..., 3) in mm, S the root-sum-of-squares sensitivity of ``coils`` (n_coils, 3)."""
    power = np.zeros(points_mm.shape[:-1])
    for coil in coils:
        power += (1.0 + ((points_mm - coil) ** 2).sum(axis=-1) / _COIL_RADIUS_MM**2) ** -3.0
    return -0.5 * np.log(power)
