"""Error metrics of parameter estimates against a known truth, overall and per tissue cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rmse", "bias", "angular_error_deg", "error_table"]


def _paired(estimate: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimates and truth of equal shape, restricted to the entries with a finite estimate."""
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {estimate.shape} but truth has {truth.shape}; they must match.")
    keep = np.isfinite(estimate)
    return estimate[keep], truth[keep]


def rmse(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error over the entries with a finite estimate.

    Parameters
    ----------
    estimate, truth : ndarray, same shape

    Returns
    -------
    float
        In the parameter's unit; NaN when no estimate is finite.
    """
    estimate, truth = _paired(estimate, truth)
    return float(np.sqrt(np.mean((estimate - truth) ** 2))) if estimate.size else float("nan")


def bias(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean of ``estimate - truth`` over the entries with a finite estimate (NaN when there are none)."""
    estimate, truth = _paired(estimate, truth)
    return float(np.mean(estimate - truth)) if estimate.size else float("nan")


def angular_error_deg(n_est: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """Angle between two fibre directions, treating n and -n as the same fibre.

    Parameters
    ----------
    n_est, n_true : ndarray, shape (..., 3)
        Directions (normalised here, so any non-zero length works).

    Returns
    -------
    ndarray, shape (...)
        Angle between the two lines in degrees, in [0, 90]; NaN where an estimate is not finite.
    """
    n_est = np.asarray(n_est, dtype=np.float64)
    n_true = np.asarray(n_true, dtype=np.float64)
    if n_est.shape != n_true.shape or n_est.shape[-1:] != (3,):
        raise ValueError(f"directions must both have shape (..., 3); got {n_est.shape} and {n_true.shape}.")
    lengths = np.linalg.norm(n_est, axis=-1) * np.linalg.norm(n_true, axis=-1)
    cosine = np.abs((n_est * n_true).sum(-1)) / lengths
    return np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0)))


def error_table(
    estimates: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    cluster_names: Sequence[str] = (),
) -> list[dict]:
    """RMSE and bias of every parameter, for all voxels and for each cluster.

    Parameters
    ----------
    estimates : dict of ndarray
        Estimated maps, shape (n_voxels,) per scalar, ``"n"`` (n_voxels, 3) for a direction.  Keys that
        are not in ``truth`` (``"D_std"``, ...) are ignored.
    truth : dict of ndarray
        True maps with the same shapes.
    labels : ndarray of int, shape (n_voxels,), optional
        Cluster of each voxel; ``None`` gives only the ``"all"`` rows.
    cluster_names : sequence of str
        Name of cluster k at position k; missing names read ``"cluster k"``.

    Returns
    -------
    list of dict
        One row per parameter and group (``"all"`` first, then each cluster present in ``labels``) with
        keys ``parameter``, ``cluster``, ``n`` (voxels in the group), ``n_nan`` (of which the estimate
        is not finite and is skipped), ``rmse``, ``bias`` and ``angular_error_deg``.  Scalars fill
        ``rmse`` and ``bias`` (parameter units) and leave ``angular_error_deg`` NaN; the direction
        ``"n"`` gives the mean angle between estimated and true fibre (degrees) and NaN ``rmse``/``bias``.
    """
    names = [name for name in truth if name in estimates]
    if not names:
        raise ValueError(f"no parameter is in both estimates {sorted(estimates)} and truth {sorted(truth)}.")
    n_voxels = len(np.asarray(truth[names[0]]))
    groups: list[tuple[str, np.ndarray]] = [("all", np.ones(n_voxels, dtype=bool))]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n_voxels,):
            raise ValueError(f"labels has shape {labels.shape}; expected ({n_voxels},), one per voxel.")
        for k in np.unique(labels):
            name = cluster_names[k] if k < len(cluster_names) else f"cluster {k}"
            groups.append((name, labels == k))
    rows = []
    for name in names:
        estimate = np.asarray(estimates[name], dtype=np.float64)
        true = np.asarray(truth[name], dtype=np.float64)
        for group, mask in groups:
            est, tru = estimate[mask], true[mask]
            row = {"parameter": name, "cluster": group, "n": int(mask.sum())}
            if name == "n":
                angles = angular_error_deg(est, tru)
                finite = np.isfinite(angles)
                row |= {
                    "n_nan": int((~finite).sum()),
                    "rmse": float("nan"),
                    "bias": float("nan"),
                    "angular_error_deg": float(angles[finite].mean()) if finite.any() else float("nan"),
                }
            else:
                row |= {
                    "n_nan": int((~np.isfinite(est)).sum()),
                    "rmse": rmse(est, tru),
                    "bias": bias(est, tru),
                    "angular_error_deg": float("nan"),
                }
            rows.append(row)
    return rows
