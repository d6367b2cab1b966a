"""The noise level a fit starts from, and where it came from.

Estimators estimate sigma themselves from two or more b=0 volumes.  With fewer, and no sigma given,
the pipeline estimates it from the b=0 image (pseudo-residuals) and passes it as ``sigma=``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..io import DWIImage, InputError
from ..protocol import Protocol

__all__ = ["estimate_sigma_from_image", "noise_level", "SIGMA_GIVEN", "SIGMA_FROM_B0_VOLUMES", "SIGMA_FROM_IMAGE"]

logger = logging.getLogger("varmap")

#: Where the noise level came from, as recorded in fit.json's ``config.sigma_source``.
SIGMA_GIVEN = "given (--sigma)"
SIGMA_FROM_B0_VOLUMES = "estimated by the estimator from the repeated b=0 volumes"
SIGMA_FROM_IMAGE = "estimated from the b=0 image (pseudo-residuals)"

#: Fewest voxels with six in-mask neighbours for their pseudo-residuals alone to be used.
_MIN_INNER_VOXELS = 20


def noise_level(image: DWIImage, protocol: Protocol, mask: np.ndarray, sigma: float | None) -> tuple[float | None, str]:
    """The ``sigma`` option of the estimator, and where it comes from.

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
    mask : ndarray of bool, shape (X, Y, Z)
    sigma : float or None
        The noise standard deviation the user gave (raw signal units), if any.

    Returns
    -------
    sigma : float or None
        ``None`` leaves the estimate to the estimator (two or more b=0 volumes).
    source : str
        One of :data:`SIGMA_GIVEN`, :data:`SIGMA_FROM_B0_VOLUMES`, :data:`SIGMA_FROM_IMAGE`.
    """
    if sigma is not None:
        return sigma, SIGMA_GIVEN
    if protocol.n_b0 >= 2:
        return None, SIGMA_FROM_B0_VOLUMES
    sigma = estimate_sigma_from_image(image, protocol, mask)
    logger.info("only %d b=0 volume: noise level estimated from the image, sigma = %.4g", protocol.n_b0, sigma)
    return sigma, SIGMA_FROM_IMAGE


def estimate_sigma_from_image(image: DWIImage, protocol: Protocol, mask: np.ndarray) -> float:
    """Noise standard deviation from the b=0 volume(s) by pseudo-residuals.

    Parameters
    ----------
    image : DWIImage
    protocol : Protocol
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    float
        σ in raw signal units.

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

    mask = np.asarray(mask, dtype=bool)
    kernel = np.zeros((3, 3, 3))
    kernel[[0, 2, 1, 1, 1, 1], [1, 1, 0, 2, 1, 1], [1, 1, 1, 1, 0, 2]] = 1.0
    structure = kernel.astype(bool)
    structure[1, 1, 1] = True
    inner = ndimage.binary_erosion(mask, structure=structure)
    if inner.sum() < _MIN_INNER_VOXELS:
        inner = mask
    sigmas = []
    for index in np.flatnonzero(protocol.b0_mask):
        volume = np.nan_to_num(image.volumes(int(index), int(index) + 1)[..., 0].astype(np.float64))
        neighbours = ndimage.convolve(volume, kernel, mode="nearest") / 6.0
        residual = math.sqrt(6.0 / 7.0) * (volume - neighbours)[inner]
        sigmas.append(1.4826 * float(np.median(np.abs(residual - np.median(residual)))))
    sigma = float(np.median(sigmas))
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(
            "cannot estimate the noise level from the image (one b=0 volume, no spread in the mask); "
            "pass --sigma (noise standard deviation in signal units)."
        )
    return sigma
