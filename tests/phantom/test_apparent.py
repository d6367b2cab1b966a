"""apparent_parameters: the model fitted to noiseless signals (the phantom's truth of mixed voxels)."""

from __future__ import annotations

import numpy as np
import pytest

from varmap import get_signal_model
from varmap.phantom.apparent import apparent_parameters
from varmap.simulation import hcp_protocol


def test_a_signal_of_the_model_returns_its_parameters() -> None:
    model = get_signal_model("msdki", hcp_protocol(n_b0=2, n_directions=12))
    D, K = np.array([0.6, 1.0, 2.0]), np.array([1.2, 0.5, 0.1])
    clean = model.predict({"D": D, "K": K}, S0=np.array([800.0, 1000.0, 1500.0]))
    fitted = apparent_parameters(model, clean)
    np.testing.assert_allclose(fitted["D"], D, rtol=1e-4)
    np.testing.assert_allclose(fitted["K"], K, rtol=1e-4, atol=1e-4)


def test_a_mixture_of_gaussian_compartments_has_the_kurtosis_of_its_spread_of_D() -> None:
    """Two compartments without kurtosis of their own: at low b, log S = -b mean(D) + b² Var(D) / 2 + O(b³),
    so MS-DKI reads D = mean(D) and K = 3 Var(D) / mean(D)², not the compartments' K = 0."""
    model = get_signal_model("msdki", hcp_protocol(n_b0=2, n_directions=12, shells=(200.0, 400.0, 600.0)))
    weight, D1, D2 = 0.4, 0.8, 1.6
    clean = weight * model.predict({"D": np.array([D1]), "K": np.zeros(1)}, S0=np.array([1000.0]))
    clean += (1 - weight) * model.predict({"D": np.array([D2]), "K": np.zeros(1)}, S0=np.array([1000.0]))
    mean = weight * D1 + (1 - weight) * D2
    variance = weight * (D1 - mean) ** 2 + (1 - weight) * (D2 - mean) ** 2
    fitted = apparent_parameters(model, clean)
    assert fitted["D"][0] == pytest.approx(mean, rel=0.01)
    assert fitted["K"][0] == pytest.approx(3 * variance / mean**2, rel=0.05)
