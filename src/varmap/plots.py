"""Figures.  matplotlib is imported inside each function, never at import time.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, not through pyplot, so
they neither need a display nor change the backend of a notebook.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["overview_figure", "study_scatter_figure"]


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
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    rows = list(maps.items())
    if clusters is not None:
        rows.append(("clusters", np.asarray(clusters)))
    if not rows:
        raise ValueError("overview_figure needs at least one map.")
    shape = next(iter(a.shape[:3] for _, a in rows))
    for name, array in rows:
        if array.shape[:3] != shape or array.ndim not in (3, 4):
            raise ValueError(f"map {name!r} has shape {array.shape}; every map needs the spatial shape {shape}.")
    centre = _centre(mask, shape)
    zooms = tuple(zooms) if zooms is not None else (1.0, 1.0, 1.0)
    aspects = (zooms[2] / zooms[1], zooms[2] / zooms[0], zooms[1] / zooms[0])  # sagittal, coronal, axial
    views = ("sagittal", "coronal", "axial")

    fig = Figure(figsize=(10.5, 2.5 * len(rows) + (0.4 if title else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 0.06]})
    for row, (name, array) in enumerate(rows):
        is_clusters = clusters is not None and row == len(rows) - 1
        rgb = array.ndim == 4
        if rgb and array.shape[3] != 3:
            raise ValueError(f"4-D map {name!r} needs 3 components to be drawn as colour; got {array.shape[3]}.")
        if is_clusters:
            labels = np.asarray(array).astype(int)
            n_labels = max(int(labels.max()), 1)
            base = matplotlib.colormaps["tab10"]
            cmap = ListedColormap([(0, 0, 0, 1)] + [base(k % 10) for k in range(n_labels)])
            norm = BoundaryNorm(np.arange(-0.5, n_labels + 1.5), cmap.N)
            kwargs = {"cmap": cmap, "norm": norm, "interpolation": "nearest"}
            array = labels
        elif rgb:
            kwargs = {"interpolation": "nearest"}
            array = np.clip(np.abs(np.nan_to_num(array)), 0.0, 1.0)
        else:
            low, high = _limits(array, mask)
            kwargs = {"cmap": "gray" if name == "S0" else "viridis", "vmin": low, "vmax": high,
                      "interpolation": "nearest"}
        image = None
        for column, (view, aspect) in enumerate(zip(views, aspects)):
            ax = axes[row, column]
            image = ax.imshow(np.swapaxes(_slice(array, column, centre), 0, 1), origin="lower", aspect=aspect, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, fontsize=9)
            if column == 0:
                ax.set_ylabel(name, fontsize=10)
        bar_ax = axes[row, 3]
        unit = units.get(name, "")
        if rgb:
            bar_ax.axis("off")
            bar_ax.text(0.0, 0.5, "RGB = |x|, |y|, |z|", rotation=90, va="center", fontsize=8)
        elif is_clusters:
            bar = fig.colorbar(image, cax=bar_ax, ticks=np.arange(0, n_labels + 1))
            bar.set_label("component (0 = background)", fontsize=8)
        else:
            bar = fig.colorbar(image, cax=bar_ax)
            bar.set_label("dimensionless" if unit == "1" else unit, fontsize=8)
            bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


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
