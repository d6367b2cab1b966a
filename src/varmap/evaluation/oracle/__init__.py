"""Bayes-optimal voxelwise estimators for simulated data: posterior means under the true prior.

In simulation the prior that generated the parameters, S0 and the noise level are known, so the best
any voxelwise estimator can do in mean-squared error is the posterior mean under that prior with the
exact likelihood of every measurement.  These oracles compute it, as a yardstick for the learned
estimators.  They are not estimators for real data.

- :func:`msdki_oracle` (module ``msdki``) integrates the two-dimensional (D, K) posterior on
  adaptively refined grids (``grid_posterior``, with the tabulated likelihood of ``shell_likelihood``);
  deterministic, converged to well below the posterior standard deviation.
- :func:`~varmap.evaluation.oracle.box.msdki_box_oracle` (module ``box``) is MS-DKI's posterior where (D, K)
  is uniform over a box instead of drawn from clusters (``benchmarks/bench_continuum.py``).
- :func:`ball_stick_oracle` (module ``ball_stick``) samples the five-dimensional posterior (three
  scalars and a fibre direction) with a random-walk Metropolis sampler, so its result carries Monte
  Carlo error.

Both return an :class:`OracleResult` (module ``common``, with the shared input checks).
"""

from .ball_stick import ball_stick_oracle
from .common import OracleResult
from .msdki import msdki_oracle

__all__ = ["OracleResult", "msdki_oracle", "ball_stick_oracle"]
