"""Evaluation labels: purity groups and distance to tissue boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.phantom import boundary_distance, tissue_groups


def test_boundary_distance() -> None:
    labels = np.zeros((9, 1, 1), dtype=int)
    labels[5:] = 1
    np.testing.assert_array_equal(boundary_distance(labels)[:, 0, 0], [5, 4, 3, 2, 1, 1, 2, 3, 4])
    assert np.all(np.isinf(boundary_distance(np.zeros((3, 3, 3), dtype=int))))  # no boundary at all


def test_tissue_groups() -> None:
    fractions = np.array([[0.95, 0.05, 0.0], [0.5, 0.4, 0.1], [0.0, 0.0, 1.0]])
    groups = tissue_groups(fractions, np.array([True, True, False]))
    np.testing.assert_array_equal(groups, [0, 3, -1])
    np.testing.assert_array_equal(tissue_groups(fractions, np.ones(3, dtype=bool), threshold=0.5 + 1e-9), [0, 3, 2])
    with pytest.raises(ValueError, match="threshold"):
        tissue_groups(fractions, np.ones(3, dtype=bool), threshold=0.5)
