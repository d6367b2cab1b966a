"""Error metrics of parameter estimates against a known truth, overall and per tissue cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rmse", "bias", "angular_error_deg", "error_table", "calibration_table", "Z_95"]

#: Half-width, in standard deviations, of the central 95 % interval of a normal distribution.
Z_95 = 1.959963984540054

#: |z| beyond which a voxel's reported spread is far below its error (counted in calibration tables).
Z_FAR = 4.0


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
    groups = _groups(len(np.asarray(truth[names[0]])), labels, cluster_names)
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


def calibration_table(
    estimates: dict[str, np.ndarray],
    std: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    cluster_names: Sequence[str] = (),
) -> list[dict]:
    """How well reported standard deviations describe the errors, for all voxels and for each cluster.

    With ``z = (estimate - truth) / std``, a calibrated uncertainty covers the truth with the ±1.96 std
    interval in 95 % of voxels and has an RMS z near 1; a voxel whose reported std is far below its
    error shows as a large ``|z|``.

    Parameters
    ----------
    estimates, std, truth : dict of ndarray
        Maps of shape (n_voxels,) by parameter; parameters missing from any of the three (the fibre
        direction, methods without an uncertainty) are left out.
    labels : ndarray of int, shape (n_voxels,), optional
    cluster_names : sequence of str
        As in :func:`error_table`.

    Returns
    -------
    list of dict
        One row per parameter and group with ``parameter``, ``cluster``, ``n`` (voxels with a finite
        estimate and a positive finite std), ``coverage_95`` (share with ``|z| <= 1.96``), ``rms_z``,
        ``max_abs_z`` and ``share_z_over_4`` (share with ``|z| > 4``).
    """
    names = [name for name in truth if name in estimates and name in std and name != "n"]
    if not names:
        return []
    groups = _groups(len(np.asarray(truth[names[0]])), labels, cluster_names)
    rows = []
    for name in names:
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = np.asarray(std[name], dtype=np.float64)
            z = (np.asarray(estimates[name], dtype=np.float64) - np.asarray(truth[name], dtype=np.float64)) / spread
        usable = np.isfinite(z) & (spread > 0)
        for group, mask in groups:
            values = np.abs(z[mask & usable])
            row = {"parameter": name, "cluster": group, "n": int(values.size)}
            if values.size:
                row |= {
                    "coverage_95": float(np.mean(values <= Z_95)),
                    "rms_z": float(np.sqrt(np.mean(values**2))),
                    "max_abs_z": float(values.max()),
                    "share_z_over_4": float(np.mean(values > Z_FAR)),
                }
            else:
                row |= dict.fromkeys(("coverage_95", "rms_z", "max_abs_z", "share_z_over_4"), float("nan"))
            rows.append(row)
    return rows


def _groups(n_voxels: int, labels: np.ndarray | None, cluster_names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``("all", every voxel)`` and, with ``labels``, one ``(name, mask)`` per cluster present."""
    groups: list[tuple[str, np.ndarray]] = [("all", np.ones(n_voxels, dtype=bool))]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n_voxels,):
            raise ValueError(f"labels has shape {labels.shape}; expected ({n_voxels},), one per voxel.")
        for k in np.unique(labels):
            name = cluster_names[k] if k < len(cluster_names) else f"cluster {k}"
            groups.append((name, labels == k))
    return groups
