"""Tests of varmap.simulation.prior_registry: the registered priors and get_prior."""

from __future__ import annotations

import numpy as np
import pytest

from varmap.simulation import PRIORS, ball_stick_prior, get_prior, msdki_paper_prior


def test_paper_prior_is_as_published():
    prior = msdki_paper_prior()
    assert prior.names == ("D", "K") and not prior.has_direction
    np.testing.assert_allclose(prior.weights, [0.5, 0.4, 0.1])
    np.testing.assert_allclose(prior.means, [[1.0, 1.25], [1.5, 1.0], [3.0, 0.0]])
    np.testing.assert_allclose(prior.variances, [[0.015, 0.015], [0.015, 0.015], [0.003, 0.003]])
    np.testing.assert_allclose(prior.log_mass, 0.0)


def test_ball_stick_prior():
    prior = ball_stick_prior()
    params, labels = prior.sample(20_000, np.random.default_rng(4))
    assert prior.names == ("f", "d_par", "d_iso") and prior.has_direction
    assert np.all((params["f"] >= 0) & (params["f"] <= 1))
    for name in ("d_par", "d_iso"):
        assert np.all((params[name] > 0) & (params[name] <= 4))
    np.testing.assert_allclose(np.linalg.norm(params["n"], axis=1), 1.0)
    # Uniform directions: E[n n^T] = I/3.
    np.testing.assert_allclose(params["n"].T @ params["n"] / len(labels), np.eye(3) / 3, atol=0.02)


def test_get_prior_registry():
    assert set(PRIORS) == {"msdki", "ball_stick"}
    assert get_prior("msdki", "physical", b_max=2.0).max_product == ("D", "K", 1.5)
    with pytest.raises(ValueError, match="paper"):
        get_prior("msdki", "nonsense")
    with pytest.raises(ValueError, match="ball_stick"):
        get_prior("ivim", "paper")


@pytest.mark.parametrize(("b_max", "hint"), [(3000.0, "divide by 1000"), (0.003, "multiply by 1000"), (0.0, "ms/µm²"),
                                             (-1.0, "ms/µm²"), (float("nan"), "ms/µm²")])
def test_physical_prior_refuses_a_b_max_in_the_wrong_unit(b_max, hint):
    with pytest.raises(ValueError, match=hint):
        get_prior("msdki", "physical", b_max=b_max)
    assert get_prior("msdki", "physical", b_max=0.5).max_product == ("D", "K", 6.0)
