"""Estimators of a noise map: the noise standard deviation of every voxel of a scan, from the scan.

Each estimator takes the opened image, its protocol and the brain mask and returns a map of σ in raw
signal units (0 outside the mask).  They are the candidates that ``benchmarks/bench_noise_map.py``
measures on images whose noise level varies smoothly in space; :func:`default_method` names the one
that measured best for the protocol.  :data:`NOISE_MAP_METHODS` is the registry, with each method's
parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import DWIImage, InputError
from ..protocol import Protocol

__all__ = [
    "NoiseMapMethod",
    "NOISE_MAP_METHODS",
    "default_method",
    "estimate_noise_map",
    "b0_local_pooling",
    "pca_local",
    "pseudo_residual_local",
    "fit_residual_local",
    "global_constant",
    "global_pseudo_residuals",
]

logger = logging.getLogger("varmap")

#: Fewest voxels with six in-mask neighbours for their pseudo-residuals alone to be used.
_MIN_INNER_VOXELS = 20


@dataclass(frozen=True)
class NoiseMapMethod:
    """One estimator of a noise map.

    Attributes
    ----------
    name : str
    estimate : callable
        ``estimate(image, protocol, mask, **parameters)`` -> ndarray (X, Y, Z), σ in raw units.
    parameters : dict
        Its default parameters (recorded in fit.json).
    min_b0 : int
        Fewest b=0 volumes it needs.
    description : str
    """

    name: str
    estimate: Callable[..., np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    min_b0: int = 1
    description: str = ""


def b0_local_pooling(image: DWIImage, protocol: Protocol, mask: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """σ per voxel from the spread of the repeated b=0 volumes, pooled over a neighbourhood.

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
        Needs two or more b=0 measurements.
    mask : ndarray of bool, shape (X, Y, Z)
    radius : int
        Half-width (voxels) of the cubic neighbourhood, ``(2 radius + 1)³`` voxels.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units; 0 outside the mask.

    Notes
    -----
    Each voxel's unbiased variance of its ``n`` b=0 signals has ``n - 1`` degrees of freedom.  The mean
    of these variances over the voxel's in-mask neighbours estimates σ² without bias and has
    ``ν = m (n - 1)`` degrees of freedom for ``m`` neighbours; ``σ = √(mean variance) / c₄(ν)`` with
    ``c₄(ν) = √(2/ν) Γ((ν+1)/2) / Γ(ν/2)`` removes the bias of the square root (chi-square correction,
    large with few repeats and small neighbourhoods).  At the b=0 SNR of brain tissue Rician noise is
    close to Gaussian.
    """
    from scipy import ndimage, special

    b0 = _b0_volumes(image, protocol)
    if b0.shape[-1] < 2:
        raise InputError(f"the b=0 pooling noise map needs two or more b=0 volumes; {image.path} has {b0.shape[-1]}.")
    variance = np.var(b0, axis=-1, ddof=1) * mask
    size = 2 * int(radius) + 1
    count = ndimage.uniform_filter(mask.astype(np.float64), size=size, mode="constant") * size**3
    total = ndimage.uniform_filter(variance, size=size, mode="constant") * size**3
    count = np.maximum(np.rint(count), 1.0)
    dof = count * (b0.shape[-1] - 1)
    c4 = np.sqrt(2.0 / dof) * np.exp(special.gammaln((dof + 1) / 2) - special.gammaln(dof / 2))
    return np.where(mask, np.sqrt(np.maximum(total, 0.0) / count) / c4, 0.0)


def pca_local(
    image: DWIImage, protocol: Protocol, mask: np.ndarray, *, patch_radius: int = 1, smooth: int = 2
) -> np.ndarray:
    """σ per voxel by dipy's local PCA estimate (``dipy.denoise.pca_noise_estimate``).

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
    mask : ndarray of bool, shape (X, Y, Z)
    patch_radius : int
        Half-width (voxels) of the patch whose PCA gives the noise variance.
    smooth : int
        Width (voxels) of the Gaussian smoothing of the estimated variance, as dipy's ``smooth``, but over
        the mask's voxels only.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units; 0 outside the mask.

    Notes
    -----
    dipy uses the b=0 volumes as samples when there are two or more (MUBE), otherwise the
    diffusion-weighted ones (SIBE), with its Rician bias correction.  Only the mask's bounding box (with
    a margin of ``patch_radius + smooth`` voxels) is read, as float32.  dipy smooths the variance over
    every voxel, the background too, whose magnitude varies less than σ² (a Rayleigh variable's 0.43 σ²):
    near the mask's edge that read σ low (13 % in the median on a small ellipsoid, the pipeline tests'
    scan); here the variance is smoothed over the mask's voxels alone (1 % there).

    References
    ----------
    Manjón JV et al. (2013) Diffusion weighted image denoising using overcomplete local PCA. PLoS ONE
    8:e73021.
    """
    from dipy.core.gradients import gradient_table
    from dipy.denoise.pca_noise_estimate import pca_noise_estimate
    from scipy import ndimage

    margin = int(patch_radius) + int(smooth)
    box = _bounding_box(mask, margin)
    data = np.stack([image.volumes(i, i + 1)[box + (0,)] for i in range(image.n_volumes)], axis=-1)
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    gtab = gradient_table(protocol.bvals * 1000.0, bvecs=protocol.bvecs, b0_threshold=protocol.b0_threshold * 1000.0)
    # dipy needs every axis of the box to be 1 or longer than its patch
    pad = [(0, max(0, 2 * patch_radius + 1 - n)) if n > 1 else (0, 0) for n in data.shape[:3]] + [(0, 0)]
    sigma = pca_noise_estimate(np.pad(data, pad, mode="edge"), gtab, patch_radius=int(patch_radius),
                               correct_bias=True, smooth=0)[tuple(slice(0, n) for n in data.shape[:3])]
    if smooth:
        inside = mask[box].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = np.sqrt(ndimage.gaussian_filter(sigma.astype(np.float64) ** 2 * inside, int(smooth))
                            / ndimage.gaussian_filter(inside, int(smooth)))
    out = np.zeros(mask.shape)
    out[box] = sigma
    return np.where(mask, out, 0.0)


def pseudo_residual_local(image: DWIImage, protocol: Protocol, mask: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """σ per voxel from the pseudo-residuals of every volume, pooled over a neighbourhood.

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
    mask : ndarray of bool, shape (X, Y, Z)
    radius : int
        Half-width (voxels) of the cubic neighbourhood, ``(2 radius + 1)³`` voxels.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units; 0 outside the mask.

    Notes
    -----
    In each volume, the pseudo-residual ``ε = √(6/7) (s − mean of the 6 face neighbours)`` has the
    noise variance where the anatomy is locally linear.  A voxel's ``1.4826 · median |ε|`` over the
    volumes (robust to the volumes where it sits on an edge) is averaged over the neighbourhood's mask
    voxels whose six neighbours are in the mask too (every mask voxel when fewer than 20 are).
    """
    from scipy import ndimage

    kernel, inner = _pseudo_residual_kernel(mask)
    spread = np.empty((int(inner.sum()), image.n_volumes), dtype=np.float32)  # no larger than the signals
    for index in range(image.n_volumes):
        volume = np.nan_to_num(image.volumes(index, index + 1)[..., 0].astype(np.float64))
        spread[:, index] = np.abs(volume - ndimage.convolve(volume, kernel, mode="nearest") / 6.0)[inner]
    robust = np.zeros(mask.shape)
    robust[inner] = 1.4826 * math.sqrt(6.0 / 7.0) * np.median(spread, axis=1)
    del spread
    local = _neighbourhood_mean(robust, inner.astype(np.float64), radius)
    return np.where(mask & ~np.isnan(local), local, 0.0)


def fit_residual_local(image: DWIImage, protocol: Protocol, mask: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """σ per voxel from the residuals of each voxel's own diffusion fit, pooled over a neighbourhood.

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
        Needs more measurements than the fit's unknowns (22 for the kurtosis fit of two or more
        shells, 7 for the tensor fit of one).
    mask : ndarray of bool, shape (X, Y, Z)
    radius : int
        Half-width (voxels) of the cubic neighbourhood, ``(2 radius + 1)³`` voxels (0: each voxel alone).

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units; 0 outside the mask.

    Notes
    -----
    Each voxel's variance comes from :func:`varmap.estimators.noise_level.residual_variances` (a
    weighted kurtosis or tensor fit; degrees of freedom from each measurement's leverage; Rician
    corrected): it needs no b=0 repeats and assumes nothing about the anatomy around the voxel, only
    that its signal is a smooth function of the gradient.  The neighbourhood's variances are averaged
    with their degrees of freedom as weights.
    """
    from ..estimators.noise_level import residual_variances

    variance, dof, _ = residual_variances(image.extract(mask), protocol)
    good = np.isfinite(variance) & (variance > 0)
    values, weights = np.zeros(mask.shape), np.zeros(mask.shape)
    values[mask] = np.where(good, variance, 0.0)
    weights[mask] = np.where(good, dof, 0.0)
    with np.errstate(invalid="ignore"):  # NaN where no usable voxel is near (or round-off leaves a mean < 0)
        local = np.sqrt(_neighbourhood_mean(values, weights, radius))
    return np.where(mask, local, 0.0)


def global_constant(image: DWIImage, protocol: Protocol, mask: np.ndarray) -> np.ndarray:
    """One σ for the whole scan, as a map: the pooled variance of the b=0 repeats (two or more b=0
    volumes), otherwise :func:`global_pseudo_residuals`.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units in the mask, 0 outside.

    Notes
    -----
    The pooled estimate is the median over mask voxels of the unbiased b=0 variances divided by the
    median of χ²ₖ/k (k = n_b0 - 1).
    """
    from scipy import stats

    if protocol.n_b0 < 2:
        return global_pseudo_residuals(image, protocol, mask)
    b0 = _b0_volumes(image, protocol)[mask]
    dof = b0.shape[-1] - 1
    sigma = math.sqrt(float(np.median(np.var(b0, axis=-1, ddof=1))) / (stats.chi2.median(dof) / dof))
    return np.where(mask, sigma, 0.0)


def global_pseudo_residuals(image: DWIImage, protocol: Protocol, mask: np.ndarray) -> np.ndarray:
    """One σ for the whole scan from the b=0 image(s) by pseudo-residuals, as a map.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units in the mask, 0 outside.

    Raises
    ------
    InputError
        If the mask's b=0 signal has no spread.

    Notes
    -----
    In every mask voxel whose six face neighbours are in the mask too, the pseudo-residual
    ``ε = √(6/7) (s − mean of the 6 neighbours)`` has the noise variance where the anatomy is locally
    linear; σ is the robust spread ``1.4826 · MAD(ε)``, the median over the b=0 volumes.  With fewer
    than 20 such voxels, every mask voxel is used.

    References
    ----------
    Coupé P et al. (2008) An optimized blockwise nonlocal means denoising filter for 3-D magnetic
    resonance images. IEEE Trans. Med. Imaging 27:425-441.
    """
    from scipy import ndimage

    kernel, inner = _pseudo_residual_kernel(mask)
    b0 = _b0_volumes(image, protocol)
    sigmas = []
    for volume in np.moveaxis(b0, -1, 0):
        neighbours = ndimage.convolve(volume, kernel, mode="nearest") / 6.0
        residual = math.sqrt(6.0 / 7.0) * (volume - neighbours)[inner]
        sigmas.append(1.4826 * float(np.median(np.abs(residual - np.median(residual)))))
    sigma = float(np.median(sigmas))
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(
            f"cannot estimate the noise level from the b=0 image of {image.path} (no spread in the mask); "
            f"pass --sigma (noise standard deviation in signal units) or --noise-map."
        )
    return np.where(mask, sigma, 0.0)


#: Every estimator of a noise map, by name.
NOISE_MAP_METHODS: dict[str, NoiseMapMethod] = {
    method.name: method
    for method in (
        NoiseMapMethod("b0_local_pooling", b0_local_pooling, {"radius": 2}, min_b0=2,
                       description="variance of the b=0 repeats, averaged over a (2r+1)^3 neighbourhood in the "
                       "mask, chi-square corrected"),
        NoiseMapMethod("pca_local", pca_local, {"patch_radius": 1, "smooth": 2},
                       description="dipy pca_noise_estimate (MUBE with >= 2 b=0, SIBE with one), its variance smoothed "
                       "over the mask"),
        NoiseMapMethod("pseudo_residual_local", pseudo_residual_local, {"radius": 2}, min_b0=0,
                       description="1.4826 median |pseudo-residual| over the volumes, averaged over a (2r+1)^3 "
                       "neighbourhood in the mask"),
        NoiseMapMethod("fit_residual_local", fit_residual_local, {"radius": 2}, min_b0=0,
                       description="residuals of each voxel's kurtosis (tensor) fit, leverage and Rician corrected, "
                       "averaged over a (2r+1)^3 neighbourhood in the mask"),
        NoiseMapMethod("global_constant", global_constant, min_b0=1,
                       description="one value: pooled b=0 variance (>= 2 b=0) or b=0 pseudo-residuals (one b=0)"),
    )
}


def default_method(protocol: Protocol) -> str:
    """The noise-map estimator that measured best for ``protocol`` (``benchmarks/bench_noise_map.py``).

    Two or more b=0 volumes: :func:`b0_local_pooling` (it assumes nothing about the anatomy and reads
    only the b=0 volumes; :func:`fit_residual_local` is more accurate still, 1.3 % against 2.2 % median
    error on a brain phantom whose noise level varies 3-fold, but fits every voxel).  Otherwise
    :func:`fit_residual_local` where the protocol has more measurements than the full voxelwise fit has
    unknowns (one b=0: 1.3 % median and 3.9 % 95th-percentile error against 3.4 % and 12 % for the
    pseudo-residuals, which also assume the anatomy is locally linear).  A shorter protocol with one b=0
    (1 b=0 + 2 x 6 directions, a clinical trace scan): :func:`pca_local` (3.6-4.4 % median error, median
    ratio 0.97-1.03 on MS-DKI and ball-and-stick phantoms, against 4.0-7.5 % and up to 1.075 for the
    residuals of the reduced fits and 5.9-20 % and up to 1.20 for the pseudo-residuals, which read white
    matter's anisotropy as noise).  Without b=0: :func:`pseudo_residual_local`.
    """
    from ..estimators.noise_level import has_residuals

    if protocol.n_b0 >= 2:
        return "b0_local_pooling"
    if has_residuals(protocol):
        return "fit_residual_local"
    return "pca_local" if protocol.n_b0 == 1 else "pseudo_residual_local"


def estimate_noise_map(
    image: DWIImage, protocol: Protocol, mask: np.ndarray, method: str, parameters: dict[str, Any] | None = None
) -> np.ndarray:
    """The noise map of ``method`` with its default parameters updated by ``parameters``.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64
        σ in raw units, positive and finite in the mask, 0 outside.  Mask voxels where the estimator
        gives no positive finite value (an empty neighbourhood, a flat patch) get the median of the
        others, with a warning.

    Raises
    ------
    ValueError
        For an unknown ``method`` (listing the valid names).
    InputError
        If the protocol has too few b=0 volumes for ``method``, or no mask voxel gets a usable value.
    """
    if method not in NOISE_MAP_METHODS:
        raise ValueError(f"unknown noise-map method {method!r}; choose one of {sorted(NOISE_MAP_METHODS)}.")
    chosen = NOISE_MAP_METHODS[method]
    if protocol.n_b0 < chosen.min_b0:
        raise InputError(f"noise-map method {method} needs {chosen.min_b0} or more b=0 volumes; {image.path} has "
                         f"{protocol.n_b0}. Choose another method, or pass --sigma or --noise-map.")
    mask = np.asarray(mask, dtype=bool)
    sigma = chosen.estimate(image, protocol, mask, **{**chosen.parameters, **(parameters or {})})
    usable = mask & np.isfinite(sigma) & (sigma > 0)
    if not usable.any():
        raise InputError(f"the noise map ({method}) of {image.path} has no positive value in the mask; pass --sigma "
                         f"(noise standard deviation in signal units) or --noise-map.")
    n_filled = int(mask.sum() - usable.sum())
    if n_filled:
        logger.warning("noise map (%s): %d mask voxels without a usable estimate get the median of the others",
                       method, n_filled)
    return np.where(usable, sigma, np.where(mask, np.median(sigma[usable]), 0.0))


def _neighbourhood_mean(values: np.ndarray, weights: np.ndarray, radius: int) -> np.ndarray:
    """The ``weights``-weighted mean of ``values`` over the (2 radius + 1)³ box around every voxel (the
    image's edge pads with zero weight); NaN where the box holds no weight."""
    from scipy import ndimage

    size = 2 * int(radius) + 1
    total = ndimage.uniform_filter(values * weights, size=size, mode="constant")
    weight = ndimage.uniform_filter(weights, size=size, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def _pseudo_residual_kernel(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The six-face-neighbour kernel, and the mask voxels whose six neighbours are in the mask (every
    mask voxel when fewer than 20 are)."""
    from scipy import ndimage

    kernel = np.zeros((3, 3, 3))
    kernel[[0, 2, 1, 1, 1, 1], [1, 1, 0, 2, 1, 1], [1, 1, 1, 1, 0, 2]] = 1.0
    structure = kernel.astype(bool)
    structure[1, 1, 1] = True
    inner = ndimage.binary_erosion(mask, structure=structure)
    return kernel, inner if inner.sum() >= _MIN_INNER_VOXELS else mask


def _b0_volumes(image: DWIImage, protocol: Protocol) -> np.ndarray:
    """The b=0 volumes as float64, shape (X, Y, Z, n_b0); non-finite values are 0."""
    volumes = [image.volumes(int(i), int(i) + 1)[..., 0] for i in np.flatnonzero(protocol.b0_mask)]
    return np.nan_to_num(np.stack(volumes, axis=-1).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """The smallest box holding ``mask``, grown by ``margin`` voxels (inside the image)."""
    where = np.nonzero(mask)
    return tuple(slice(max(0, int(w.min()) - margin), min(n, int(w.max()) + margin + 1))
                 for w, n in zip(where, mask.shape))
