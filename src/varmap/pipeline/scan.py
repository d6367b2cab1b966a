"""The scan to map: its files checked, its brain mask, and the masked voxels' signals."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import DWIImage, InputError, check_input_file, compute_mask, load_mask, load_protocol, open_dwi
from ..protocol import Protocol

if TYPE_CHECKING:  # the estimators load torch
    from ..estimators.data import ValidVoxels

__all__ = ["Scan", "open_scan", "brain_mask", "read_signals", "computed_mask_note"]

logger = logging.getLogger("varmap")


def computed_mask_note(protocol: Protocol) -> str:
    """How a mask that was not given is made (:func:`brain_mask`), as recorded in fit.json."""
    _, image = _least_weighted(protocol)
    return (f"computed: dipy median_otsu on the mean {image} image, holes filled (every voxel with a positive "
            f"{image} signal where what Otsu left out is bright or attenuated by diffusion weighting: no background)")


def _least_weighted(protocol: Protocol) -> tuple[np.ndarray, str]:
    """The volumes the computed mask starts from and their name: the b=0 volumes, or without them the lowest
    shell's (the brightest brain image there is)."""
    if protocol.n_b0:
        return np.flatnonzero(protocol.b0_mask), "b=0"
    return np.flatnonzero(protocol.shell_index == 0), "lowest-shell"


#: The computed mask's background check reads the first this many volumes with at least this b-value
#: (ms/µm²): tissue keeps 20-60 % of its b=0 signal at b = 1-3 ms/µm², about 70 % at 0.5; noise all of it.
_MASK_CHECK_VOLUMES, _MASK_CHECK_MIN_B = 4, 0.5


@dataclass(frozen=True)
class Scan:
    """A diffusion scan whose files have been checked; no voxel has been read yet.

    Attributes
    ----------
    image : DWIImage
        The 4-D image, opened lazily.
    protocol : Protocol
        From the bvals/bvecs files, one measurement per volume.
    mask : ndarray of bool, shape (X, Y, Z), or None
        The given mask; ``None`` when it is to be computed.
    files : dict of Path
        Input files by role: ``dwi``, ``bvals``, ``bvecs`` and, when given, ``mask`` and ``noise_map``.
    """

    image: DWIImage
    protocol: Protocol
    mask: np.ndarray | None
    files: dict[str, Path]

    @property
    def mask_computed(self) -> bool:
        """No mask was given: :func:`brain_mask` computes one."""
        return self.mask is None


def open_scan(
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    noise_map: str | PathLike | None = None,
) -> Scan:
    """Open the image and read the protocol and the mask, checking each against the others.

    A ``noise_map`` file is only checked to exist here; it is read against the mask by
    :func:`.noise.noise_level`.

    Raises
    ------
    FileNotFoundError, InputError, ProtocolError
        Naming the file, what is wrong and the fix.
    """
    image = open_dwi(dwi)
    protocol = load_protocol(bvals, bvecs, n_volumes=image.n_volumes)
    files = {"dwi": image.path, "bvals": Path(bvals), "bvecs": Path(bvecs)}
    given = None
    if mask is not None:
        given = load_mask(mask, image.spatial_shape, affine=image.affine)
        files["mask"] = Path(mask)
    if noise_map is not None:
        files["noise_map"] = check_input_file(noise_map, "noise map")
    return Scan(image=image, protocol=protocol, mask=given, files=files)


def brain_mask(scan: Scan) -> np.ndarray:
    """The given mask, or one computed from the mean b=0 image (without b=0 volumes, that of the lowest
    shell) and the mean of a few strongly diffusion-weighted volumes (:func:`varmap.io.compute_mask`).

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    InputError
        If the computed mask is empty.
    """
    if scan.mask is not None:
        return scan.mask
    protocol = scan.protocol
    least_weighted, image = _least_weighted(protocol)
    mean_b0 = scan.image.mean_volume(least_weighted)
    # the first few volumes weighted enough for tissue to lose signal (the cheapest to reach in a .nii.gz),
    # or the most weighted ones where none is
    weighted = np.flatnonzero(~protocol.b0_mask)
    strong = weighted[protocol.bvals[weighted] >= _MASK_CHECK_MIN_B]
    if not strong.size:
        strong = weighted[np.argsort(protocol.bvals[weighted])[::-1]]
    chosen = strong[:_MASK_CHECK_VOLUMES]
    mean_dw = scan.image.mean_volume(chosen) if chosen.size else None
    mask = compute_mask(mean_b0, mean_dw=mean_dw)
    if not mask.any():
        raise InputError(
            f"the brain mask computed from the mean {image} image of {scan.image.path} is empty; give a mask "
            f"with --mask."
        )
    logger.info("no mask given: computed one with median_otsu on the mean %s image (%d voxels); it is saved as "
                "mask.nii.gz", image, int(mask.sum()))
    return mask


def read_signals(scan: Scan, mask: np.ndarray, *, progress: bool) -> tuple[np.ndarray, ValidVoxels]:
    """Signals of the mask's voxels, and which of them can be fitted.

    Returns
    -------
    signals : ndarray, shape (n_voxels, n_volumes), float32
        Voxels in ``np.nonzero(mask)`` order.
    voxels : ValidVoxels
        :func:`varmap.estimators.data.valid_voxels` of the signals; excluded voxels are logged.

    Raises
    ------
    InputError
        If no voxel of the mask can be fitted.
    """
    from ..estimators.data import reference_name, valid_voxels

    signals = scan.image.extract(mask, progress=progress)
    voxels = valid_voxels(signals, scan.protocol)
    reference = reference_name(scan.protocol)
    if voxels.n_excluded:
        logger.warning(
            "%d of %d mask voxels are excluded from the fit (%d with NaN/Inf values, %d with a %s <= 0); they "
            "are 0 in the maps", voxels.n_excluded, len(signals), voxels.n_nonfinite, voxels.n_nonpositive_b0,
            reference)
    if not voxels.valid.any():
        raise InputError(
            f"no voxel of the mask has finite signals and a positive {reference} in {scan.image.path}; check "
            f"the image and the mask."
        )
    logger.info("read %d voxels x %d volumes (%.0f MB float32)", *signals.shape, signals.nbytes / 2**20)
    return signals, voxels
