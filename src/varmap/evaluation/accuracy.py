"""Accuracy rows of the studies: errors against the truth per cluster or tissue, with their ratios.

The simulation study groups voxels by prior cluster and divides every method's error by the Bayes
oracle's (:func:`simulation_rows`, :func:`add_oracle_ratios`); the phantom study groups them by
tissue purity and distance to a tissue boundary (:class:`PhantomRegions`, :func:`phantom_rows`).  Both
also score the reported standard deviations against the errors in the same groups
(:func:`simulation_calibration_rows`, :func:`phantom_calibration_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..phantom import PARTIAL_VOLUME, TISSUES, Phantom, boundary_distance
from ..simulation import SimulatedData
from .metrics import calibration_table, error_table

__all__ = [
    "simulation_rows",
    "simulation_calibration_rows",
    "phantom_calibration_rows",
    "add_oracle_ratios",
    "PHANTOM_GROUPS",
    "EDGE_GROUPS",
    "PhantomRegions",
    "phantom_regions",
    "phantom_rows",
]

#: Purity groups of the phantom study, by index: the pure tissues, then partial volume.
PHANTOM_GROUPS = (*TISSUES, PARTIAL_VOLUME)
#: Edge groups of the phantom study, by index: 0 interior, 1 boundary.
EDGE_GROUPS = ("interior", "boundary")


# ---------------------------------------------------------------------------------------- simulation
def simulation_rows(data: SimulatedData, params: dict[str, np.ndarray], n: int) -> list[dict]:
    """Error table of estimates of the first ``n`` simulated voxels, overall and per prior cluster.

    Parameters
    ----------
    data : SimulatedData
        The truth, labels and cluster names.
    params : dict of ndarray
        Estimates of the first ``n`` voxels (keys not in the truth are ignored).
    n : int
        Voxels compared.

    Returns
    -------
    list of dict
        Rows of :func:`~varmap.evaluation.metrics.error_table`, ``ratio_to_oracle`` NaN.
    """
    truth = {name: value[:n] for name, value in data.params.items()}
    estimates = {name: value for name, value in params.items() if name in truth}
    rows = error_table(estimates, truth, data.labels[:n], data.prior.cluster_names)
    for row in rows:
        row["ratio_to_oracle"] = float("nan")
    return rows


def simulation_calibration_rows(
    data: SimulatedData, params: dict[str, np.ndarray], std: dict[str, np.ndarray], n: int
) -> list[dict]:
    """Calibration table of the reported standard deviations of the first ``n`` simulated voxels,
    overall and per prior cluster (:func:`~varmap.evaluation.metrics.calibration_table`)."""
    truth = {name: value[:n] for name, value in data.params.items()}
    return calibration_table(params, std, truth, data.labels[:n], data.prior.cluster_names)


def add_oracle_ratios(rows: list[dict], subset_rows: list[dict], oracle_rows: list[dict]) -> None:
    """Set ``ratio_to_oracle`` of ``rows`` in place: error on the oracle's voxels over the oracle's error.

    Parameters
    ----------
    rows : list of dict
        A method's rows on all voxels.
    subset_rows : list of dict
        The same method's rows on the oracle's voxels.
    oracle_rows : list of dict
        The oracle's rows.  RMSE is compared for scalars, the mean angle for the direction ``"n"``.
    """
    oracle = {(r["parameter"], r["cluster"]): r for r in oracle_rows}
    subset = {(r["parameter"], r["cluster"]): r for r in subset_rows}
    for row in rows:
        key = (row["parameter"], row["cluster"])
        if key in oracle and key in subset:
            metric = "angular_error_deg" if row["parameter"] == "n" else "rmse"
            row["ratio_to_oracle"] = subset[key][metric] / oracle[key][metric]


# ---------------------------------------------------------------------------------------- phantom
@dataclass(frozen=True)
class PhantomRegions:
    """Groups of the phantom's brain voxels, each array of shape (n_voxels,) in mask order.

    Attributes
    ----------
    purity : ndarray of int
        Index into :data:`PHANTOM_GROUPS` (a pure tissue, or partial volume).
    edge : ndarray of int8
        Index into :data:`EDGE_GROUPS`: 1 where the voxel is near a tissue boundary.
    wm_dominant : ndarray of bool
        White matter is the voxel's largest tissue fraction.
    """

    purity: np.ndarray
    edge: np.ndarray
    wm_dominant: np.ndarray

    def purity_counts(self) -> dict[str, int]:
        """Voxels in each purity group."""
        return {name: int((self.purity == k).sum()) for k, name in enumerate(PHANTOM_GROUPS)}


def phantom_regions(phantom: Phantom, *, purity: float, edge_voxels: float) -> PhantomRegions:
    """Purity, edge and dominant-tissue groups of the phantom's brain voxels.

    Parameters
    ----------
    phantom : Phantom
    purity : float
        Tissue fraction from which a voxel counts as pure tissue (> 0.5).
    edge_voxels : float
        Voxels at most this far (voxel units) from a change of the dominant tissue, or from the brain
        surface, are ``"boundary"``; the others ``"interior"``.

    Returns
    -------
    PhantomRegions
    """
    distance = boundary_distance(phantom.labels)[phantom.mask]
    return PhantomRegions(
        purity=phantom.groups(threshold=purity)[phantom.mask],
        edge=(distance <= edge_voxels).astype(np.int8),
        wm_dominant=phantom.labels[phantom.mask] == TISSUES.index("WM"),
    )


def phantom_rows(
    params: dict[str, np.ndarray], truth: dict[str, np.ndarray], names: Sequence[str], regions: PhantomRegions
) -> list[dict]:
    """Errors of one method on the phantom per purity group and edge group; fibre angles in white matter.

    Parameters
    ----------
    params : dict of ndarray
        Estimates, (n_voxels,) per scalar and (n_voxels, 3) for ``"n"``, in mask order.
    truth : dict of ndarray
        True values, same shapes.
    names : sequence of str
        Scalar parameters to compare.
    regions : PhantomRegions

    Returns
    -------
    list of dict
        Rows with keys ``parameter``, ``group``, ``n``, ``n_nan``, ``rmse``, ``bias``,
        ``angular_error_deg`` and ``edge_ratio`` (on ``"boundary"`` rows: the boundary RMSE over the
        interior RMSE; NaN elsewhere).  Scalars: groups ``"all"``, the purity groups present, then
        ``"interior"`` and ``"boundary"``; the direction ``"n"``: ``"WM"`` (pure) and ``"WM-dominant"``.
    """
    scalars = {name: params[name] for name in names if name in params}
    rows = _per_group(error_table, regions, scalars, {name: truth[name] for name in scalars})
    interior = {r["parameter"]: r["rmse"] for r in rows if r["group"] == "interior"}
    for row in rows:
        row["edge_ratio"] = float("nan")
        if row["group"] == "boundary" and interior.get(row["parameter"], 0) > 0:
            row["edge_ratio"] = row["rmse"] / interior[row["parameter"]]
    if "n" in params and "n" in truth:
        white_matter = regions.purity == TISSUES.index("WM")
        for group, selected in (("WM", white_matter), ("WM-dominant", regions.wm_dominant)):
            (row,) = error_table({"n": params["n"][selected]}, {"n": truth["n"][selected]})
            row["cluster"] = group
            rows.append(_grouped(row) | {"edge_ratio": float("nan")})
    return rows


def phantom_calibration_rows(
    params: dict[str, np.ndarray], std: dict[str, np.ndarray], truth: dict[str, np.ndarray], names: Sequence[str],
    regions: PhantomRegions,
) -> list[dict]:
    """How one method's reported standard deviations describe its errors on the phantom, per purity group
    and edge group (:func:`~varmap.evaluation.metrics.calibration_table`).

    Parameters
    ----------
    params, truth, names, regions
        As for :func:`phantom_rows` (scalars only).
    std : dict of ndarray
        The estimates' standard deviations, (n_voxels,) per scalar, in mask order.

    Returns
    -------
    list of dict
        Rows with keys ``parameter``, ``group`` (``"all"``, the purity groups present, ``"interior"``,
        ``"boundary"``), ``n``, ``coverage_95``, ``rms_z``, ``max_abs_z`` and ``share_z_over_4``.
    """
    scalars = {name: params[name] for name in names if name in params and name in std}
    return _per_group(calibration_table, regions, scalars, std, {name: truth[name] for name in scalars})


def _per_group(table: Callable[..., list[dict]], regions: PhantomRegions, *maps: dict[str, np.ndarray]) -> list[dict]:
    """``table(*maps, labels, names)`` (:func:`error_table` or :func:`calibration_table`) over all voxels and
    the purity groups, then the edge groups, its ``cluster`` key renamed ``group``."""
    by_tissue = table(*maps, regions.purity, PHANTOM_GROUPS)
    by_edge = [row for row in table(*maps, regions.edge, EDGE_GROUPS) if row["cluster"] != "all"]
    return [_grouped(row) for row in by_tissue + by_edge]


def _grouped(row: dict) -> dict:
    """An error-table row with its ``cluster`` key renamed ``group``."""
    row["group"] = row.pop("cluster")
    return row
