"""The noise level a run maps with, one per voxel, and where it came from.

In order: a number the user gave (``--sigma``), a noise map the user gave (``--noise-map``), or a noise
map estimated from the scan by the method of :mod:`.noise_maps` that measured best for its protocol.
The estimators receive it as ``sigma=`` (a number, or one value per mask voxel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..io import InputError, load_noise_map
from .noise_maps import NOISE_MAP_METHODS, default_method, estimate_noise_map
from .scan import Scan

__all__ = ["NoiseLevel", "noise_level", "noise_summary", "SIGMA_GIVEN", "SIGMA_FROM_FILE", "SIGMA_FROM_IMAGE"]

logger = logging.getLogger("varmap")

#: Where the noise level came from, as recorded in fit.json's ``config.sigma_source``.
SIGMA_GIVEN = "given (--sigma)"
SIGMA_FROM_FILE = "noise map given (--noise-map)"
SIGMA_FROM_IMAGE = "noise map estimated from the image"

#: Factor by which a given noise level (``--sigma``, or a map's median) may differ from the scan's own
#: estimate from its b=0 repeats before a run warns.  MP-PCA noise maps of magnitude images (MRtrix
#: ``dwidenoise -noise``, dipy's ``mppca``) read σ high where much of the signal lies near the noise floor:
#: dipy's ``mppca`` read the 2 mm brain phantom's σ 1.32x (median; b=0 SNR 10, noise varying 1-3x over the
#: head), where the b=0 repeats' estimate read it 0.99x; given 1.3x the true σ, gmvae's K on that phantom
#: came out 0.10 (uniform noise) and 0.52 (noise field) too low.
MAP_DISAGREEMENT = 1.1

#: The likely slip behind a given level that disagrees with the b=0 repeats, by :attr:`NoiseLevel.method`.
_GIVEN_LEVEL_HINTS = {
    "given": "The mean magnitude of an image's background is 1.25 sigma (Rayleigh), more with several receive "
             "coils; check the value and its units, or leave out --sigma to map with the b=0 repeats' estimate.",
    "file": "MP-PCA noise maps of magnitude images (MRtrix dwidenoise -noise, dipy's mppca) can read sigma high "
            "where much of the signal lies near the noise floor (1.32x on that phantom at b=0 SNR 10); check that "
            "the map belongs to this scan and is in its units, or leave out --noise-map to map with the b=0 "
            "repeats' estimate.",
}


@dataclass(frozen=True)
class NoiseLevel:
    """The noise level of a run.

    Attributes
    ----------
    sigma : float or ndarray, shape (n_voxels,)
        Noise standard deviation of one measurement, raw signal units: one number (given), or one
        value per mask voxel in ``np.nonzero(mask)`` order.
    source : str
        :data:`SIGMA_GIVEN`, :data:`SIGMA_FROM_FILE` or :data:`SIGMA_FROM_IMAGE`.
    method : str
        ``"given"``, ``"file"`` or the name of the noise-map estimator (:data:`.NOISE_MAP_METHODS`).
    parameters : dict
        The estimator's parameters, the given value, or the file.
    """

    sigma: float | np.ndarray
    source: str
    method: str
    parameters: dict[str, Any]

    def record(self, fitted_sigma: np.ndarray) -> dict[str, Any]:
        """fit.json's ``noise``: method, parameters, source and the map's summary numbers.

        Parameters
        ----------
        fitted_sigma : ndarray, shape (n_voxels,)
            The noise level the fit used per voxel (NaN where not fitted).
        """
        return {"method": self.method, "parameters": self.parameters, "source": self.source,
                "unit": "raw signal units (standard deviation of one measurement)", **noise_summary(fitted_sigma)}


def noise_level(
    scan: Scan,
    mask: np.ndarray,
    *,
    sigma: float | None = None,
    noise_map: str | PathLike | None = None,
    method: str | None = None,
) -> NoiseLevel:
    """The noise level to map ``scan`` with.

    A level the user gives (``sigma`` or ``noise_map``) is used as given; with two or more b=0 volumes its
    median ratio to the b=0 repeats' own estimate is recorded (``parameters["median_ratio_to_b0_repeats"]``),
    with a warning beyond :data:`MAP_DISAGREEMENT` either way.

    Parameters
    ----------
    scan : Scan
    mask : ndarray of bool, shape (X, Y, Z)
        The mask whose voxels are mapped.
    sigma : float, optional
        The noise standard deviation the user gave (raw signal units).
    noise_map : path, optional
        A NIfTI noise map in the DWI's grid (raw signal units), e.g. from MRtrix ``dwidenoise -noise``.
    method : str, optional
        Noise-map estimator when neither is given; default :func:`.noise_maps.default_method` of the
        scan's protocol.

    Returns
    -------
    NoiseLevel

    Raises
    ------
    InputError
        If both ``sigma`` and ``noise_map`` are given, ``sigma`` is not one number, or the noise map
        does not fit the scan and mask.
    """
    if sigma is not None and noise_map is not None:
        raise InputError("give the noise level once: --sigma (one number) or --noise-map (a map), not both.")
    if sigma is not None and np.ndim(sigma) != 0:
        raise InputError("sigma= of an image is one number (raw signal units); give one value per voxel as a "
                         "NIfTI noise map (noise_map=, --noise-map).")
    if sigma is not None or noise_map is not None:
        if sigma is not None:
            level = NoiseLevel(float(sigma), SIGMA_GIVEN, "given", {"sigma": float(sigma)})
        else:
            values = load_noise_map(noise_map, scan.image.spatial_shape, mask, affine=scan.image.affine)[mask]
            level = NoiseLevel(values, SIGMA_FROM_FILE, "file", {"file": str(Path(noise_map))})
        if scan.protocol.n_b0 < 2:
            return level
        ratio = _compare_with_b0_repeats(level, scan, mask)
        return replace(level, parameters={**level.parameters, "median_ratio_to_b0_repeats": ratio})
    method = default_method(scan.protocol) if method is None else method
    parameters = dict(NOISE_MAP_METHODS[method].parameters)
    values = estimate_noise_map(scan.image, scan.protocol, mask, method, parameters)[mask]
    summary = noise_summary(values)
    logger.info("noise map estimated with %s (%d b=0 volumes): sigma median %.4g (5-95%%: %.4g-%.4g)", method,
                scan.protocol.n_b0, summary["median"], summary["p5"], summary["p95"])
    return NoiseLevel(values, f"{SIGMA_FROM_IMAGE} ({method})", method, parameters)


def _compare_with_b0_repeats(given: NoiseLevel, scan: Scan, mask: np.ndarray) -> float:
    """Median ratio of a given noise level (:data:`SIGMA_GIVEN` or :data:`SIGMA_FROM_FILE`) to the scan's own
    estimate from its b=0 repeats; a warning with the likely slip of that route where it exceeds
    :data:`MAP_DISAGREEMENT` either way (the level is used as given)."""
    own = estimate_noise_map(scan.image, scan.protocol, mask, "b0_local_pooling")[mask]
    ratio = float(np.median(given.sigma / own))
    if not 1.0 / MAP_DISAGREEMENT <= ratio <= MAP_DISAGREEMENT:
        what = f"--sigma {given.sigma:g}" if given.method == "given" else f"noise map {given.parameters['file']}"
        logger.warning(
            "%s is %.2fx the noise level that the spread of the scan's %d b=0 volumes gives (median over the "
            "mask), and is used as given; a noise level 1.3x too high biased gmvae's kurtosis by -0.10 to -0.52 "
            "on a brain phantom. %s", what, ratio, scan.protocol.n_b0, _GIVEN_LEVEL_HINTS[given.method])
    return ratio


def noise_summary(sigma: np.ndarray) -> dict[str, float | None]:
    """Median, 5th and 95th percentile of the finite values of a noise level (``None`` when none is)."""
    values = np.asarray(sigma, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": None, "p5": None, "p95": None}
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"median": float(median), "p5": float(p5), "p95": float(p95)}
