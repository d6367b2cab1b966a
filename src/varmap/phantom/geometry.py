"""The phantom's geometry: MNI152 tissue templates resampled to a voxel size, cropped, and turned
into a brain mask, tissue volume fractions and dominant-tissue labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["TissueGeometry", "load_tissue_templates", "resolve_crop", "tissue_geometry"]

# Resolution (mm) of the templates the phantom is resampled from.
_TEMPLATE_RESOLUTION = 1


@lru_cache(maxsize=4)
def load_tissue_templates(voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 WM and GM probabilities and brain mask, resampled to an isotropic voxel size.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm.

    Returns
    -------
    wm, gm, brain : ndarray of float32, shape (X, Y, Z)
        Resampled probability maps (brain mask as a fraction in [0, 1]); read-only, cached.
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI (mm) transform of the resampled grid, with the x axis stored radiologically
        (negative determinant, as FSL's MNI152 and HCP images), so that FSL-convention bvecs are the
        gradient directions in voxel axes.

    Raises
    ------
    ValueError
        If ``voxel_size`` is not between 0.5 and 8 mm.

    Notes
    -----
    The 1 mm templates (``nilearn.datasets.load_mni152_*_template(resolution=1)``, shipped with
    nilearn) are smoothed with a Gaussian of variance ``(s² - 1)/12`` voxels² (``s`` = voxel size in
    template voxels: the variance a box average of ``s`` voxels adds to a 1-voxel box) and then
    linearly interpolated on the new grid, ``new index i`` at ``template index s·i``; the first voxel
    centres coincide.  The new affine is therefore the template's times ``diag(s, s, s, 1)``.
    """
    from nilearn import datasets

    if not (np.isfinite(voxel_size) and 0.5 <= voxel_size <= 8.0):
        raise ValueError(f"voxel_size={voxel_size!r} mm must be between 0.5 and 8 (1.25 is HCP's, 2 is faster).")
    images = [
        datasets.load_mni152_wm_template(resolution=_TEMPLATE_RESOLUTION),
        datasets.load_mni152_gm_template(resolution=_TEMPLATE_RESOLUTION),
        datasets.load_mni152_brain_mask(resolution=_TEMPLATE_RESOLUTION),
    ]
    affine = np.asarray(images[0].affine, dtype=np.float64)
    zooms = np.asarray(images[0].header.get_zooms()[:3], dtype=np.float64)
    scale = voxel_size / zooms
    shape = np.asarray(images[0].shape[:3])
    new_shape = tuple(int(n) for n in np.floor((shape - 1) / scale + 1e-9).astype(int) + 1)
    smoothing = np.sqrt(np.maximum(scale**2 - 1.0, 0.0) / 12.0)
    maps = []
    for image in images:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
        if np.any(smoothing > 0):
            data = ndimage.gaussian_filter(data, sigma=smoothing, mode="constant")
        data = ndimage.affine_transform(
            data, scale, offset=0.0, output_shape=new_shape, order=1, mode="constant", cval=0.0, prefilter=False
        )
        maps.append(np.clip(data, 0.0, 1.0).astype(np.float32))
    new_affine = affine @ np.diag([*scale, 1.0])
    if np.linalg.det(new_affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = new_shape[0] - 1
        new_affine = new_affine @ flip
        maps = [np.ascontiguousarray(m[::-1]) for m in maps]
    for m in maps:
        m.setflags(write=False)
    new_affine.setflags(write=False)
    return maps[0], maps[1], maps[2], new_affine


def resolve_crop(
    crop: Sequence[int] | Sequence[slice] | None, shape: tuple[int, int, int], brain: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """The region of the template grid a phantom covers.

    Parameters
    ----------
    crop : (nx, ny, nz) or (slice, slice, slice), optional
        Sizes of a box around the centre of the brain mask (clipped to the grid), or slices of the grid.
    shape : tuple of int
        Shape (X, Y, Z) of the template grid.
    brain : ndarray, shape (X, Y, Z)
        Brain-mask fraction; the box is centred on the centre of mass of ``brain >= 0.5``.

    Returns
    -------
    tuple of slice or None
        Three slices with explicit start and stop; ``None`` when ``crop`` is ``None`` (the whole grid).

    Raises
    ------
    ValueError
        On a crop without three entries, with sizes below 1, mixing sizes and slices, or selecting no
        voxel.
    """
    if crop is None:
        return None
    crop = tuple(crop)
    if len(crop) != 3:
        raise ValueError(f"crop={crop!r} needs 3 entries: sizes (nx, ny, nz) or slices, one per axis.")
    if all(isinstance(c, slice) for c in crop):
        slices = tuple(slice(*c.indices(n)[:2]) for c, n in zip(crop, shape))
    elif all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in crop):
        if any(c < 1 for c in crop):
            raise ValueError(f"crop sizes {crop} must be >= 1 voxel.")
        centre = np.round(ndimage.center_of_mass(brain >= 0.5)).astype(int)
        slices = []
        for c, n, mid in zip(crop, shape, centre):
            size = min(int(c), n)
            start = int(np.clip(mid - size // 2, 0, n - size))
            slices.append(slice(start, start + size))
        slices = tuple(slices)
    else:
        raise ValueError(f"crop={crop!r}: give three sizes (ints) around the brain centre, or three slices.")
    if any(s.stop - s.start < 1 for s in slices):
        raise ValueError(f"crop={crop!r} selects no voxel of the {shape} grid.")
    return slices


@dataclass
class TissueGeometry:
    """Mask, tissue fractions and labels of the phantom's region of the template grid.

    Attributes
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask (resampled MNI152 brain mask >= 0.5).
    fractions : ndarray, shape (X, Y, Z, 3), float32
        Volume fractions of WM, GM and CSF; they sum to 1 in the mask and are 0 outside.
    labels : ndarray of int8, shape (X, Y, Z)
        Dominant tissue (index into the fractions' last axis), -1 outside the mask.
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI (mm) transform of the region.
    """

    mask: np.ndarray
    fractions: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def tissue_geometry(
    templates: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], region: tuple[slice, slice, slice] | None
) -> TissueGeometry:
    """Mask, volume fractions, labels and affine of a region of the resampled templates.

    Parameters
    ----------
    templates : (wm, gm, brain, affine)
        As returned by :func:`load_tissue_templates`.
    region : tuple of slice or None
        From :func:`resolve_crop`; ``None`` for the whole grid.

    Returns
    -------
    TissueGeometry

    Notes
    -----
    Inside the mask, WM and GM fractions are the resampled probabilities (rescaled to sum to 1 where
    they exceed it) and CSF is the rest, ``1 - WM - GM``.
    """
    wm_full, gm_full, brain_full, affine_full = templates
    slices = region if region is not None else (slice(None),) * 3
    wm, gm, brain = (np.array(m[slices], dtype=np.float32) for m in (wm_full, gm_full, brain_full))
    affine = affine_full.copy()
    if region is not None:
        affine[:3, 3] = affine_full[:3, :3] @ np.array([s.start for s in region]) + affine_full[:3, 3]
    mask = brain >= 0.5
    tissue_sum = wm + gm
    over = tissue_sum > 1.0
    wm[over] /= tissue_sum[over]
    gm[over] /= tissue_sum[over]
    fractions = np.stack([wm, gm, np.clip(1.0 - wm - gm, 0.0, 1.0)], axis=-1)
    fractions[~mask] = 0.0
    labels = np.where(mask, np.argmax(fractions, axis=-1), -1).astype(np.int8)
    return TissueGeometry(mask=mask, fractions=fractions, labels=labels, affine=affine)
