"""Figures are written as PNG files from arrays and results, and refuse maps they cannot draw."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from varmap.phantom import make_phantom
from varmap.plots import overview_figure, phantom_clusters_figure, phantom_maps_figure, study_scatter_figure

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG


def test_importing_plots_does_not_import_matplotlib():
    check = "import sys, varmap.plots; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


def test_overview_of_scalar_direction_and_cluster_maps(tmp_path):
    shape = (6, 5, 4)
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, dtype=bool)
    mask[1:5, 1:4, 1:3] = True
    maps = {"S0": rng.uniform(500, 1000, shape), "D": rng.uniform(0, 3, shape), "n": rng.normal(size=(*shape, 3))}
    clusters = np.where(mask, rng.integers(1, 4, shape), 0)
    path = overview_figure(maps, {"S0": "a.u.", "D": "µm²/ms"}, tmp_path / "overview.png", clusters, mask=mask,
                           zooms=(1.25, 1.25, 2.5), title="test")
    assert path == tmp_path / "overview.png" and _is_png(path)


@pytest.mark.parametrize(
    "maps, match",
    [
        ({}, "at least one map"),
        ({"D": np.zeros((4, 4, 4)), "K": np.zeros((4, 4, 3))}, "spatial shape"),
        ({"n": np.zeros((4, 4, 4, 2))}, "3 components"),
    ],
)
def test_overview_refuses_maps_it_cannot_draw(tmp_path, maps, match):
    with pytest.raises(ValueError, match=match):
        overview_figure(maps, {}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_study_scatter(tmp_path, msdki_data):
    estimates = {"nlls": dict(msdki_data.params), "oracle": {k: v[:100] for k, v in msdki_data.params.items()}}
    path = study_scatter_figure(estimates, msdki_data.params, msdki_data.labels, msdki_data.prior.cluster_names,
                                tmp_path / "scatter.png", title="SNR 50")
    assert _is_png(path)


@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom(model="msdki", voxel_size=2.0, snr=20.0, seed=0, crop=(6, 6, 4), image=False)


def test_phantom_maps_and_clusters(tmp_path, small_phantom):
    truth = small_phantom.truth_in_mask()
    estimates = {"truth": truth, "biased": {name: value + 0.1 for name, value in truth.items()}}
    assert _is_png(phantom_maps_figure(small_phantom, estimates, tmp_path / "maps.png"))
    n = small_phantom.n_voxels
    probs = np.tile([0.7, 0.2, 0.1], (n, 1))
    fit = SimpleNamespace(clusters=np.arange(n) % 3, cluster_probs=probs)  # what the figure reads of a FitResult
    assert _is_png(phantom_clusters_figure(small_phantom, {"gmvae": fit}, tmp_path / "clusters.png"))
