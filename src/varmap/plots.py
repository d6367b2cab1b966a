"""Figures.  matplotlib is imported inside each function, never at import time.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, not through pyplot, so
they neither need a display nor change the backend of a notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from .phantom import Phantom
    from .results import FitResult

__all__ = ["overview_figure", "study_scatter_figure", "phantom_maps_figure", "phantom_clusters_figure"]


def overview_figure(
    maps: dict[str, np.ndarray],
    units: dict[str, str],
    path: str | PathLike,
    clusters: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    zooms: tuple[float, float, float] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Three orthogonal mid-slices of every map, one row per map, each with a colour bar and its unit.

    Parameters
    ----------
    maps : dict of ndarray
        3-D maps (X, Y, Z) keyed by name; a 4-D map with 3 components (a fibre direction) is drawn as
        direction-encoded colour (red |x|, green |y|, blue |z|).
    units : dict of str
        Unit of each map, shown on its colour bar.
    path : path
        PNG file to write.
    clusters : ndarray of int, shape (X, Y, Z), optional
        Label map (0 = background, k = component k) drawn in the last row with one colour per label.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Slices go through the centre of the mask's bounding box and colour ranges are taken inside it.
        Default: the image centre and the non-zero voxels of each map.
    zooms : tuple of float, optional
        Voxel size (mm) for the aspect ratio.
    title : str, optional
    dpi : int

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If there is no map, the maps' spatial shapes differ, or a 4-D map has other than 3 components.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _overview_rows(maps, clusters)
    shape = rows[0].array.shape[:3]
    centre = _centre(mask, shape)
    zooms = tuple(zooms) if zooms is not None else (1.0, 1.0, 1.0)
    aspects = (zooms[2] / zooms[1], zooms[2] / zooms[0], zooms[1] / zooms[0])  # sagittal, coronal, axial

    fig = Figure(figsize=(10.5, 2.5 * len(rows) + (0.4 if title else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 0.06]})
    for index, row in enumerate(rows):
        shown, style = _row_style(row, mask)
        image = _draw_slices(axes[index, :3], shown, style, row.name, centre, aspects, first_row=index == 0)
        _draw_colour_bar(fig, axes[index, 3], image, row, units.get(row.name, ""))
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


_VIEWS = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class _OverviewRow:
    """One row of :func:`overview_figure`: a map and how it is drawn (``"scalar"``, ``"rgb"`` or ``"clusters"``)."""

    name: str
    array: np.ndarray
    kind: str


def _overview_rows(maps: dict[str, np.ndarray], clusters: np.ndarray | None) -> list[_OverviewRow]:
    """The rows of the overview, the cluster labels last, after checking their shapes."""
    rows = [_OverviewRow(name, array, "rgb" if array.ndim == 4 else "scalar") for name, array in maps.items()]
    if clusters is not None:
        rows.append(_OverviewRow("clusters", np.asarray(clusters), "clusters"))
    if not rows:
        raise ValueError("overview_figure needs at least one map.")
    shape = rows[0].array.shape[:3]
    for row in rows:
        if row.array.shape[:3] != shape or row.array.ndim not in (3, 4):
            raise ValueError(
                f"map {row.name!r} has shape {row.array.shape}; every map needs the spatial shape {shape}."
            )
        if row.kind == "rgb" and row.array.shape[3] != 3:
            raise ValueError(
                f"4-D map {row.name!r} needs 3 components to be drawn as colour; got {row.array.shape[3]}."
            )
    return rows


def _n_labels(labels: np.ndarray) -> int:
    """Highest cluster label (at least 1)."""
    return max(int(labels.max()), 1)


def _row_style(row: _OverviewRow, mask: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """The array to draw and the ``imshow`` keywords of one overview row."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if row.kind == "clusters":
        labels = np.asarray(row.array).astype(int)
        n_labels = _n_labels(labels)
        base = matplotlib.colormaps["tab10"]
        cmap = ListedColormap([(0, 0, 0, 1)] + [base(k % 10) for k in range(n_labels)])
        norm = BoundaryNorm(np.arange(-0.5, n_labels + 1.5), cmap.N)
        return labels, {"cmap": cmap, "norm": norm, "interpolation": "nearest"}
    if row.kind == "rgb":
        return np.clip(np.abs(np.nan_to_num(row.array)), 0.0, 1.0), {"interpolation": "nearest"}
    low, high = _limits(row.array, mask)
    cmap = "gray" if row.name == "S0" else "viridis"
    return row.array, {"cmap": cmap, "vmin": low, "vmax": high, "interpolation": "nearest"}


def _draw_slices(axes: Sequence[Axes], array: np.ndarray, style: dict, name: str, centre: tuple[int, int, int],
                 aspects: tuple[float, float, float], *, first_row: bool) -> AxesImage:
    """Draw the sagittal, coronal and axial slices through ``centre``; returns the last image."""
    image = None
    for column, (ax, view, aspect) in enumerate(zip(axes, _VIEWS, aspects)):
        image = ax.imshow(np.swapaxes(_slice(array, column, centre), 0, 1), origin="lower", aspect=aspect, **style)
        ax.set_xticks([])
        ax.set_yticks([])
        if first_row:
            ax.set_title(view, fontsize=9)
        if column == 0:
            ax.set_ylabel(name, fontsize=10)
    return image


def _draw_colour_bar(fig: Figure, bar_ax: Axes, image: AxesImage, row: _OverviewRow, unit: str) -> None:
    """The row's colour bar with its unit, the cluster legend, or a note on the RGB encoding."""
    if row.kind == "rgb":
        bar_ax.axis("off")
        bar_ax.text(0.0, 0.5, "RGB = |x|, |y|, |z|", rotation=90, va="center", fontsize=8)
    elif row.kind == "clusters":
        n_labels = _n_labels(np.asarray(row.array).astype(int))
        bar = fig.colorbar(image, cax=bar_ax, ticks=np.arange(0, n_labels + 1))
        bar.set_label("component (0 = background)", fontsize=8)
    else:
        bar = fig.colorbar(image, cax=bar_ax)
        bar.set_label("dimensionless" if unit == "1" else unit, fontsize=8)
        bar.ax.tick_params(labelsize=7)


def _centre(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if mask is not None and np.any(mask):
        index = np.nonzero(mask)
        return tuple(int((i.min() + i.max()) // 2) for i in index)
    return tuple(n // 2 for n in shape)


def _slice(array: np.ndarray, axis: int, centre: tuple[int, int, int]) -> np.ndarray:
    return np.take(array, centre[axis], axis=axis)


def _limits(array: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    values = array[mask] if mask is not None and mask.shape == array.shape else array[array != 0]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return low, high


def study_scatter_figure(
    estimates: dict[str, dict[str, np.ndarray]],
    truth: dict[str, np.ndarray],
    labels: np.ndarray,
    cluster_names: tuple[str, ...],
    path: str | Path,
    *,
    title: str = "",
    max_points: int = 4000,
) -> Path:
    """Estimate against truth for every scalar parameter (rows) and method (columns), by cluster.

    Parameters
    ----------
    estimates : dict
        ``estimates[method][parameter]``, shape (n,) with n up to the number of true values (the
        oracle runs on the first voxels only).
    truth : dict of ndarray
        True parameter values, shape (n_voxels,) (a direction ``"n"`` is skipped).
    labels : ndarray of int
        Cluster of each voxel, for the colours.
    cluster_names : tuple of str
    path : path
        PNG file to write.
    title : str
    max_points : int
        Voxels drawn per panel (the first ones), to keep the figure light.

    Returns
    -------
    Path
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    parameters = [name for name in truth if name != "n"]
    methods = list(estimates)
    fig = Figure(figsize=(2.6 * len(methods), 2.6 * len(parameters) + 0.4))
    axes = fig.subplots(len(parameters), len(methods), squeeze=False)
    colours = colormaps["tab10"]
    for row, name in enumerate(parameters):
        true = np.asarray(truth[name])
        low, high = np.nanpercentile(true, [0.5, 99.5])
        pad = 0.1 * (high - low)
        for col, method in enumerate(methods):
            ax = axes[row, col]
            estimate = np.asarray(estimates[method][name])
            n = min(estimate.size, max_points)
            for k in np.unique(labels[:n]):
                pick = labels[:n] == k
                label = cluster_names[k] if k < len(cluster_names) else f"cluster {k}"
                ax.scatter(true[:n][pick], estimate[:n][pick], s=2, alpha=0.4, color=colours(k), label=label, rasterized=True)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=0.8)
            ax.set_xlim(low - pad, high + pad)
            ax.set_ylim(low - pad, high + pad)
            if row == 0:
                ax.set_title(method)
            if col == 0:
                ax.set_ylabel(f"estimated {name}")
            ax.set_xlabel(f"true {name}")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), markerscale=4, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def phantom_maps_figure(
    phantom: Phantom, estimates: dict[str, dict[str, np.ndarray]], path: str | PathLike, *, dpi: int = 100
) -> Path:
    """Truth, estimate and error of every scalar parameter (columns) for every method (rows), axial mid-slice.

    Parameters
    ----------
    phantom : Phantom
        The truth, mask and grid.
    estimates : dict
        ``estimates[method][parameter]``, shape (n_voxels,) in mask order.
    path : path
        PNG file to write.
    dpi : int

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth = phantom.truth_in_mask()
    names = list(phantom.parameter_names)
    methods = list(estimates)
    n_cols = 3 * len(names)
    aspect = phantom.shape[1] / max(phantom.shape[0], 1)
    figure = Figure(figsize=(2.2 * n_cols, 2.2 * aspect * len(methods) + 0.8), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(methods), n_cols, squeeze=False)
    for j, name in enumerate(names):
        true_slice = _mid_slice(phantom, truth[name])
        low, high = np.nanpercentile(true_slice, [1, 99]) if np.isfinite(true_slice).any() else (0.0, 1.0)
        errors = {m: _mid_slice(phantom, estimates[m][name] - truth[name]) for m in methods}
        spread = _error_spread(errors.values())
        for i, method in enumerate(methods):
            panels = (
                (true_slice, "viridis", low, high, f"{name} truth"),
                (_mid_slice(phantom, estimates[method][name]), "viridis", low, high, f"{name} {method}"),
                (errors[method], "RdBu_r", -spread, spread, f"{name} error"),
            )
            for k, (image, cmap, vmin, vmax, title) in enumerate(panels):
                ax = axes[i, 3 * j + k]
                shown = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=8)
                if i == len(methods) - 1 or k == 2:
                    figure.colorbar(shown, ax=ax, shrink=0.7)
    figure.suptitle(
        f"{phantom.model} phantom, {phantom.voxel_size:g} mm, SNR {phantom.snr:g}: axial slice {phantom.shape[2] // 2} "
        "(radiological display)",
        fontsize=9,
    )
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


def phantom_clusters_figure(
    phantom: Phantom, fits: dict[str, FitResult], path: str | PathLike, *, dpi: int = 100
) -> Path:
    """Dominant tissue next to each mixture model's most probable component, axial mid-slice.

    Parameters
    ----------
    phantom : Phantom
    fits : dict of FitResult
        Results with ``clusters`` and ``cluster_probs`` (brain voxels in mask order), keyed by method.
    path : path
        PNG file to write.
    dpi : int

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    panels = [("dominant tissue (0 WM, 1 GM, 2 CSF)", phantom.labels[phantom.mask].astype(float), 3)]
    for method, fit in fits.items():
        panels.append((f"{method} cluster", fit.clusters.astype(float), fit.cluster_probs.shape[1]))
    figure = Figure(figsize=(3.2 * len(panels), 3.4), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for ax, (title, values, n_classes) in zip(axes, panels):
        image = _mid_slice(phantom, np.where(values >= 0, values, np.nan))
        cmap = ListedColormap([colours[k % len(colours)] for k in range(max(n_classes, 1))])
        shown = ax.imshow(image, origin="lower", cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, interpolation="nearest")
        figure.colorbar(shown, ax=ax, shrink=0.7, ticks=range(n_classes))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


def _mid_slice(phantom: Phantom, values: np.ndarray) -> np.ndarray:
    """Axial mid-slice (transposed for display) of per-voxel values in mask order; NaN outside."""
    volume = np.full(phantom.shape, np.nan)
    volume[phantom.mask] = values
    return volume[:, :, phantom.shape[2] // 2].T


def _error_spread(errors: Iterable[np.ndarray]) -> float:
    """Colour range of the error panels: the 98th percentile of the finite absolute errors (1 if none)."""
    finite = [e[np.isfinite(e)] for e in errors]
    spread = np.nanpercentile(np.abs(np.concatenate(finite or [np.zeros(1)])), 98)
    return float(spread) if np.isfinite(spread) and spread > 0 else 1.0
