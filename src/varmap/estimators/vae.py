"""VAE with a univariate standard Gaussian prior (VAE-UniG)."""

from __future__ import annotations

from .priors import StandardNormalPrior
from .variational import VariationalEstimator

__all__ = ["VAEEstimator"]


class VAEEstimator(VariationalEstimator):
    """Variational autoencoder with prior p(z) = N(0, I).

    The encoder outputs the mean and log-variance of q(z|s); a linear layer decodes z into unconstrained
    parameters, which smooth transforms bound to their physical ranges before the physics model predicts
    the signal.  Everything else is :class:`~varmap.estimators.variational.VariationalEstimator`; options:
    ``varmap.estimators.options.OPTIONS["vae"]``.
    """

    name = "vae"
    prior_class = StandardNormalPrior
    n_components = 1
