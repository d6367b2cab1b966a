"""dipy's MS-DKI fit as the studies call it."""

from __future__ import annotations

import numpy as np

from varmap.evaluation.baselines import BASELINES, DIPY_METHOD, fit_dipy_msdki


def test_dipy_recovers_noiseless_msdki_in_varmap_units(msdki_data_noiseless):
    data = msdki_data_noiseless
    estimates = fit_dipy_msdki(data.signals, data.protocol)
    assert set(estimates) == {"D", "K"}
    assert estimates["D"].shape == estimates["K"].shape == (data.n_voxels,)
    np.testing.assert_allclose(estimates["D"], data.params["D"], rtol=1e-3)  # µm²/ms, not mm²/s
    np.testing.assert_allclose(estimates["K"], data.params["K"], atol=1e-2)


def test_msdki_is_the_model_with_a_baseline():
    assert BASELINES["msdki"] == (DIPY_METHOD, fit_dipy_msdki)
    assert "ball_stick" not in BASELINES
