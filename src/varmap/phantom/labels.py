"""Voxel labels for evaluation: pure-tissue and partial-volume groups, distance to tissue boundaries."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .tissues import TISSUES

__all__ = ["PARTIAL_VOLUME", "boundary_distance", "tissue_groups"]

#: Name of the group of voxels where no tissue reaches the purity threshold (:func:`tissue_groups`).
PARTIAL_VOLUME = "PV"


def tissue_groups(fractions: np.ndarray, mask: np.ndarray, *, threshold: float = 0.9) -> np.ndarray:
    """Pure-tissue and partial-volume groups.

    Parameters
    ----------
    fractions : ndarray, shape (..., 3)
        Volume fractions of :data:`TISSUES`.
    mask : ndarray of bool, shape (...)
    threshold : float
        A voxel is pure tissue t where ``fractions[..., t] >= threshold`` (> 0.5 so the groups are
        disjoint).

    Returns
    -------
    ndarray of int8, shape (...)
        0, 1, 2 for pure WM, GM, CSF; 3 (:data:`PARTIAL_VOLUME`) where no tissue reaches the threshold;
        -1 outside the mask.
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0.5, 1] so that a voxel is pure in one tissue at most.")
    groups = np.full(mask.shape, len(TISSUES), dtype=np.int8)
    for t in range(len(TISSUES)):
        groups[fractions[..., t] >= threshold] = t
    groups[~mask] = -1
    return groups


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (voxels) from every voxel to the nearest voxel of another label.

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        A label map (dominant tissue, -1 for background: the brain surface counts as a boundary).

    Returns
    -------
    ndarray of float, shape (X, Y, Z)
        Euclidean distance (``scipy.ndimage.distance_transform_edt``) to the closest voxel with a
        different label: 1 next to a boundary.  A label alone in the array gets ``inf``; voxels next to
        the array's edge are not treated as boundary voxels.
    """
    distance = np.full(labels.shape, np.inf)
    values = np.unique(labels)
    if values.size < 2:
        return distance
    for value in values:
        region = labels == value
        distance[region] = ndimage.distance_transform_edt(region)[region]
    return distance
