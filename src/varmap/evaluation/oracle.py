"""Bayes-optimal voxelwise estimators for simulated data: posterior means under the true prior.

In simulation the prior that generated the parameters, S0 and the noise level are known, so the best
any voxelwise estimator can do in mean-squared error is the posterior mean under that prior with the
exact likelihood of every measurement.  These oracles compute it, as a yardstick for the learned
estimators.  They are not estimators for real data.

- :func:`msdki_oracle` integrates the two-dimensional (D, K) posterior on adaptively refined grids
  (deterministic, converged to well below the posterior standard deviation).
- :func:`ball_stick_oracle` samples the five-dimensional posterior (three scalars and a fibre
  direction) with a random-walk Metropolis sampler, so its result carries Monte Carlo error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
import torch

from ..protocol import Protocol
from ..signal_models import BallStickModel, MSDKIModel, msdki_signal
from ..simulation import ClusterPrior, rician_log_pdf

__all__ = ["OracleResult", "msdki_oracle", "ball_stick_oracle"]

_DTYPE = torch.float64

# Grid points this many nats below a posterior's maximum carry no weight that matters (e^-25 ≈ 1e-11).
_DEPTH = 25.0


@dataclass
class OracleResult:
    """Posterior summaries of every voxel.

    Attributes
    ----------
    params : dict of ndarray
        Posterior means, shape (n_voxels,) per scalar; for a direction, ``"n"`` (n_voxels, 3): the
        principal eigenvector of the posterior mean of n nᵀ.
    std : dict of ndarray
        Posterior standard deviations; for ``"n"`` the angular spread in degrees,
        arccos(sqrt(λ_max)) with λ_max the largest eigenvalue of the posterior mean of n nᵀ (the RMS
        angle to the mean axis when the spread is small).
    cluster_probs : ndarray, shape (n_voxels, n_clusters)
        Posterior probability that the voxel was drawn from each prior cluster.
    method : str
        ``"grid"`` or ``"mcmc"``.
    diagnostics : dict
        Settings and convergence figures (grid sizes, acceptance rates, seconds).
    """

    params: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    cluster_probs: np.ndarray
    method: str
    diagnostics: dict = field(default_factory=dict)


# =============================================================================================== MS-DKI
def msdki_oracle(
    signals: np.ndarray,
    protocol: Protocol,
    prior: ClusterPrior,
    *,
    sigma: float,
    S0: float | np.ndarray,
    n_grid: int = 41,
    max_refinements: int = 30,
    chunk_size: int = 256,
) -> OracleResult:
    """Posterior mean and standard deviation of MS-DKI's D and K under the true prior.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Rician magnitudes, raw units (every measurement, not shell averages).
    protocol : Protocol
        The acquisition; needs at least two non-zero shells.
    prior : ClusterPrior
        The prior the parameters were drawn from (names ``("D", "K")``).
    sigma : float
        Noise standard deviation per channel, raw units.
    S0 : float or ndarray, shape (n_voxels,)
        True non-diffusion-weighted signal, raw units.
    n_grid : int
        Grid points per axis at every level (odd, so the centre is a grid point).
    max_refinements : int
        Largest number of refinement levels after the first grid over the prior; the grids stop
        refining once converged (see Notes), usually after 2-8 levels.
    chunk_size : int
        Voxels processed together (memory grows as chunk_size × n_grid² × n_shells).

    Returns
    -------
    OracleResult
        ``params`` and ``std`` hold ``"D"`` (µm²/ms) and ``"K"``; ``cluster_probs`` the posterior
        probability of each prior cluster.

    Notes
    -----
    Every measurement i of shell s has the Rician density of :func:`~varmap.simulation.rician_log_pdf`
    with noiseless value :math:`\\nu_s = S_0 \\exp(-b_s D + b_s^2 D^2 K / 6)`, the same for every
    direction of the shell.  The log-likelihood is therefore a sum over shells of one-dimensional
    functions :math:`L_s(\\nu_s)`.  For each voxel and shell, :math:`L_s` is tabulated exactly on a
    coarse grid over :math:`[0, \\max_i m_i + 12\\sigma]`, then on 96 points over the interval where it
    lies within 60 nats of its maximum, and interpolated with Catmull-Rom cubics (exact for quadratics);
    outside that interval it continues with a steep quadratic decay (those points carry less than
    e^-40 of the posterior mass).  b=0 measurements carry no information on (D, K) when S0 is known.

    The posterior is a mixture over prior clusters, :math:`p(\theta|s) \propto \sum_k \pi_k
    p_k(\theta) L(\theta)`.  Each cluster's term is integrated separately on ``n_grid``² grids.  The
    first spans the cluster mean ± 6 prior standard deviations.  Each refinement aligns the grid with
    the principal axes of the current posterior covariance and spans the bounding box, along those
    axes, of the previous grid's points within 25 nats of the maximum, plus one previous cell on each
    side (so a posterior narrower than a cell is not lost), doubled when that region reached the
    previous grid's edge.  Refinement stops when, for every cluster
    holding more than e^-25 of a voxel's posterior, the last grid covered that region (no point of it
    on the grid's edge) and resolved it (it spans at least a quarter of the grid along both grid axes,
    so more than ``n_grid`` / 4 points across: 0.7 standard deviations apart or closer for a
    Gaussian, where trapezoidal sums are exact to e^-40).  The evidence of each cluster gives the cluster probabilities; the posterior mean and
    variance follow from the law of total expectation and
    variance.  Grid points outside MS-DKI's parameter bounds (D in [0, 4] µm²/ms, K in [-1, 3]) or
    outside the prior's support have zero weight; the paper's untruncated prior has less than 1e-15 of
    its mass outside those bounds.
    """
    model = MSDKIModel(protocol)
    _check_prior(prior, model.parameter_names, False)
    signals, S0_v = _check_inputs(signals, protocol, sigma, S0)
    if n_grid < 3 or n_grid % 2 == 0:
        raise ValueError(f"n_grid={n_grid} must be an odd integer >= 3.")
    shells = [s for s, b in enumerate(protocol.shell_bvals) if b > protocol.b0_threshold]
    shell_bvals = torch.tensor(protocol.shell_bvals[shells], dtype=_DTYPE)
    masks = [torch.as_tensor(protocol.shell_index == s) for s in shells]
    bounds = np.array([[p.low, p.high] for p in model.parameters])
    start = perf_counter()
    means, covs, log_evidence, n_refinements = [], [], [], 0
    for chunk in _chunks(signals.shape[0], chunk_size):
        m = torch.as_tensor(signals[chunk], dtype=_DTYPE)
        s0 = torch.as_tensor(S0_v[chunk], dtype=_DTYPE)
        tables = [_ShellLikelihood(m[:, mask], sigma) for mask in masks]

        def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
            nu = s0.view(-1, *([1] * (theta.dim() - 1))) * msdki_signal(shell_bvals, theta[..., 0], theta[..., 1])
            return sum(table(nu[..., i]) for i, table in enumerate(tables))

        mu, cov, log_z, levels = _grid_posterior(
            log_likelihood, prior, bounds, n_voxels=len(s0), n_grid=n_grid,
            max_refinements=max_refinements,
        )
        n_refinements = max(n_refinements, levels)
        means.append(mu)
        covs.append(cov)
        log_evidence.append(log_z)
    mean, variance, probs = _combine_clusters(
        torch.cat(means), torch.cat(covs), torch.cat(log_evidence), prior.weights
    )
    names = model.parameter_names
    return OracleResult(
        params={name: mean[:, i].numpy() for i, name in enumerate(names)},
        std={name: variance[:, i].clamp_min(0.0).sqrt().numpy() for i, name in enumerate(names)},
        cluster_probs=probs.numpy(),
        method="grid",
        diagnostics={
            "n_grid": n_grid,
            "n_refinements": n_refinements,
            "seconds": perf_counter() - start,
        },
    )


class _ShellLikelihood:
    """Summed Rician log-likelihood of one shell's measurements as a function of the shell's ν.

    Parameters
    ----------
    m : Tensor, shape (n_voxels, n_directions)
        Magnitudes of the shell's measurements.
    sigma : float
        Noise standard deviation per channel.
    """

    n_coarse = 48
    n_fine = 96
    #: Nats below the maximum that the fine table must cover.
    depth = 60.0

    def __init__(self, m: torch.Tensor, sigma: float) -> None:
        self.n_measurements = m.shape[1]
        self.sigma = sigma
        top = m.max(dim=1).values + 12.0 * sigma
        coarse_step = top / (self.n_coarse - 1)
        coarse = self._evaluate(m, torch.zeros_like(top), coarse_step, self.n_coarse)
        keep = coarse >= coarse.max(dim=1, keepdim=True).values - self.depth
        first = keep.to(torch.int8).argmax(dim=1)
        last = self.n_coarse - 1 - keep.flip(1).to(torch.int8).argmax(dim=1)
        self.low = (first - 1).clamp_min(0) * coarse_step
        self.high = (last + 1).clamp_max(self.n_coarse - 1) * coarse_step
        self.step = (self.high - self.low) / (self.n_fine - 1)
        self.table = self._evaluate(m, self.low, self.step, self.n_fine)
        edge = self.table[:, :1], self.table[:, -1:]
        self._padded = torch.cat(
            [2 * edge[0] - self.table[:, 1:2], self.table, 2 * edge[1] - self.table[:, -2:-1]], dim=1
        )

    def _evaluate(self, m: torch.Tensor, low: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
        nu = low[:, None] + step[:, None] * torch.arange(n, dtype=_DTYPE)
        return rician_log_pdf(m[:, None, :], nu[:, :, None], self.sigma).sum(-1)

    def __call__(self, nu: torch.Tensor) -> torch.Tensor:
        """Log-likelihood at ν of shape (n_voxels, ...), by cubic interpolation inside the table."""
        shape = nu.shape
        nu = nu.reshape(shape[0], -1)
        inside = torch.minimum(torch.maximum(nu, self.low[:, None]), self.high[:, None])
        u = (inside - self.low[:, None]) / self.step[:, None]
        index = u.floor().clamp(0, self.n_fine - 2).long()
        t = u - index
        p0, p1, p2, p3 = (torch.gather(self._padded, 1, index + j) for j in range(4))
        value = p1 + 0.5 * t * (p2 - p0 + t * (2 * p0 - 5 * p1 + 4 * p2 - p3 + t * (3 * (p1 - p2) + p3 - p0)))
        outside = (nu - inside) / self.sigma
        return (value - 0.5 * self.n_measurements * outside * outside).reshape(shape)


def _grid_posterior(
    log_likelihood,
    prior: ClusterPrior,
    bounds: np.ndarray,
    *,
    n_voxels: int,
    n_grid: int,
    max_refinements: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per-cluster posterior moments and log evidence of a two-parameter model on refined grids.

    Returns
    -------
    mean : Tensor, shape (n_voxels, K, 2)
    cov : Tensor, shape (n_voxels, K, 2, 2)
    log_evidence : Tensor, shape (n_voxels, K)
        log ∫ p_k(θ) L(θ) dθ.
    n_refinements : int
        Refinement levels used.
    """
    n_clusters = prior.n_clusters
    unit = torch.linspace(-1.0, 1.0, n_grid, dtype=_DTYPE)
    unit_grid = torch.stack(torch.meshgrid(unit, unit, indexing="ij"), dim=-1).reshape(-1, 2)
    cell_width = 2.0 / (n_grid - 1)
    edge = torch.ones(n_grid, n_grid, dtype=torch.bool)
    edge[1:-1, 1:-1] = False
    edge = edge.reshape(-1)
    cluster_index = np.arange(n_clusters)[None, :, None, None]

    def evaluate(centre: torch.Tensor, axes: torch.Tensor):
        """Moments on the grid θ = centre + axes · unit grid, and the window for the next grid."""
        theta = centre[..., None, :] + unit_grid @ axes.transpose(-1, -2)
        values = theta.numpy()
        log_prior = np.take_along_axis(prior.cluster_log_density(values), cluster_index, axis=-1)[..., 0]
        inside = np.all((values >= bounds[:, 0]) & (values <= bounds[:, 1]), axis=-1)
        log_w = torch.as_tensor(np.where(inside, log_prior, -np.inf)) + log_likelihood(theta)
        top = log_w.max(dim=-1, keepdim=True).values
        w = torch.exp(log_w - top)
        total = w.sum(dim=-1)
        w = w / total[..., None]
        mean = (w[..., None] * theta).sum(dim=-2)
        centred = theta - mean[..., None, :]
        cov = torch.einsum("vkm,vkmi,vkmj->vkij", w, centred, centred)
        log_z = top[..., 0] + torch.log(total * torch.linalg.det(axes).abs() * cell_width**2)
        # Next window: the principal-axis bounding box of the points within _DEPTH nats of the
        # maximum, widened by one cell of this grid on each side.
        _, principal = torch.linalg.eigh(cov)
        projected = centred @ principal
        above = (log_w >= top - _DEPTH)[..., None]
        low = torch.where(above, projected, math.inf).min(dim=-2).values
        high = torch.where(above, projected, -math.inf).max(dim=-2).values
        margin = (principal.transpose(-1, -2) @ axes).abs().sum(-1) * cell_width
        covered = ~(above[..., 0] & edge).any(dim=-1)
        span = (torch.where(above, unit_grid, -2.0).max(dim=-2).values
                - torch.where(above, unit_grid, 2.0).min(dim=-2).values)
        resolved = (span >= 0.5).all(dim=-1)
        # A region cut by the grid's edge may reach far beyond it: double the next window.
        half = ((high - low) / 2 + margin) * torch.where(covered, 1.0, 2.0)[..., None]
        next_centre = mean + (principal @ ((low + high) / 2)[..., None])[..., 0]
        next_axes = principal * half[..., None, :]
        return mean, cov, log_z, next_centre, next_axes, covered, resolved

    # First grid: each cluster's mean +- 6 prior standard deviations, within the bounds.
    box_low = np.maximum(prior.means - 6 * prior.stds, np.maximum(bounds[:, 0], prior.lower))
    box_high = np.minimum(prior.means + 6 * prior.stds, np.minimum(bounds[:, 1], prior.upper))
    centre = torch.as_tensor((box_high + box_low) / 2).expand(n_voxels, -1, -1)
    axes = torch.diag_embed(torch.as_tensor((box_high - box_low) / 2)).expand(n_voxels, -1, -1, -1)
    log_weights = torch.as_tensor(np.log(prior.weights))
    for level in range(max_refinements + 1):
        mean, cov, log_z, centre, axes, covered, resolved = evaluate(centre, axes)
        log_joint = log_z + log_weights
        relevant = log_joint >= log_joint.max(dim=1, keepdim=True).values - _DEPTH
        if level > 0 and bool((covered & resolved | ~relevant).all()):
            return mean, cov, log_z, level
    raise RuntimeError(
        f"the MS-DKI oracle's grids did not converge in {max_refinements} refinements "
        f"({int((relevant & ~covered).sum())} voxel-clusters not covered, "
        f"{int((relevant & ~resolved).sum())} not resolved); raise max_refinements or n_grid."
    )


# =========================================================================================== ball-stick
def ball_stick_oracle(
    signals: np.ndarray,
    protocol: Protocol,
    prior: ClusterPrior,
    *,
    sigma: float,
    S0: float | np.ndarray,
    n_steps: int = 1500,
    n_burn: int = 1000,
    n_init: int = 64,
    seed: int = 0,
    chunk_size: int = 4096,
) -> OracleResult:
    """Posterior means of ball-and-stick parameters under the true prior, by Metropolis sampling.

    Parameters
    ----------
    signals : ndarray, shape (n_voxels, n_measurements)
        Rician magnitudes, raw units.
    protocol : Protocol
    prior : ClusterPrior
        The prior the parameters were drawn from (names ``("f", "d_par", "d_iso")``, with direction).
    sigma : float
        Noise standard deviation per channel, raw units.
    S0 : float or ndarray, shape (n_voxels,)
        True non-diffusion-weighted signal, raw units.
    n_steps : int
        Sweeps kept for the posterior averages (after burn-in).
    n_burn : int
        Sweeps of burn-in, during which the proposals adapt.
    n_init : int
        Prior draws per voxel; the chain starts at the one with the highest posterior density.
    seed : int
        Seeds the prior draws (NumPy) and the sampler (a local ``torch.Generator``).
    chunk_size : int
        Voxels sampled together.

    Returns
    -------
    OracleResult
        ``params``: ``"f"``, ``"d_par"``, ``"d_iso"`` (µm²/ms) and ``"n"``; ``std`` the posterior
        standard deviations (angular spread in degrees for ``"n"``); ``cluster_probs`` the posterior
        mean of each cluster's responsibility.

    Notes
    -----
    This oracle is a sampler, not a grid: the posterior has five dimensions (three scalars and a unit
    direction), too many to integrate on a grid.  One chain per voxel, all voxels in parallel, each
    sweep updating two blocks by random-walk Metropolis with the exact Rician likelihood of every
    diffusion-weighted measurement:

    - the scalars, with a Gaussian proposal whose covariance is learnt from the chain during burn-in
      (re-estimated at 1/4, 1/2 and 3/4 of it, scaled by 2.38²/3);
    - the direction, proposing n' = (n + s·ε)/|n + s·ε| with ε ~ N(0, I₃), which is symmetric on the
      sphere.

    The proposal scales adapt by Robbins-Monro towards an acceptance rate of 0.3 during burn-in and
    stay fixed afterwards, so the kept sweeps are a valid Markov chain.  The chain starts from the best
    of ``n_init`` prior draws, never from the truth.  With the defaults the Monte Carlo standard error
    of a posterior mean is about a tenth of the posterior standard deviation, which inflates the
    oracle's mean squared error by about 1 %.
    """
    model = BallStickModel(protocol)
    _check_prior(prior, model.parameter_names, True)
    signals, S0_v = _check_inputs(signals, protocol, sigma, S0)
    start = perf_counter()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    dw = torch.as_tensor(~protocol.b0_mask)
    parts = []
    for chunk in _chunks(signals.shape[0], chunk_size):
        sampler = _BallStickSampler(
            model, prior, torch.as_tensor(signals[chunk], dtype=_DTYPE)[:, dw],
            torch.as_tensor(S0_v[chunk], dtype=_DTYPE), sigma, dw,
        )
        sampler.initialise(n_init, rng)
        parts.append(sampler.run(n_burn, n_steps, generator))
    summary = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    names = model.parameter_names
    eigenvalues, eigenvectors = torch.linalg.eigh(summary["scatter"])
    params = {name: summary["mean"][:, i].numpy() for i, name in enumerate(names)}
    params["n"] = eigenvectors[:, :, -1].numpy()
    std = {name: summary["std"][:, i].numpy() for i, name in enumerate(names)}
    std["n"] = np.degrees(np.arccos(np.sqrt(np.clip(eigenvalues[:, -1].numpy(), 0.0, 1.0))))
    return OracleResult(
        params=params,
        std=std,
        cluster_probs=summary["cluster_probs"].numpy(),
        method="mcmc",
        diagnostics={
            "n_steps": n_steps,
            "n_burn": n_burn,
            "n_init": n_init,
            "seed": seed,
            "acceptance_scalars": float(summary["accept_scalars"].mean()),
            "acceptance_direction": float(summary["accept_direction"].mean()),
            "seconds": perf_counter() - start,
        },
    )


class _BallStickSampler:
    """Vectorised random-walk Metropolis over (f, d_par, d_iso, n) for a batch of voxels."""

    target_acceptance = 0.3
    adaptation_rate = 0.05

    def __init__(
        self,
        model: BallStickModel,
        prior: ClusterPrior,
        m: torch.Tensor,
        S0: torch.Tensor,
        sigma: float,
        dw: torch.Tensor,
    ) -> None:
        self.model, self.prior, self.m, self.S0, self.sigma, self.dw = model, prior, m, S0, sigma, dw
        self.n_voxels = m.shape[0]

    def log_posterior(self, scalars: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Log prior of the scalars plus the Rician log-likelihood (uniform direction prior omitted)."""
        log_prior = torch.as_tensor(self.prior.log_density(scalars.numpy()))
        nu = self.S0[:, None] * self.model.forward(torch.cat([scalars, direction], dim=1))[:, self.dw]
        log_lik = rician_log_pdf(self.m, nu, self.sigma).sum(-1)
        return torch.where(torch.isfinite(log_prior), log_prior + log_lik, -math.inf)

    def initialise(self, n_init: int, rng: np.random.Generator) -> None:
        """Start every chain at the best of ``n_init`` prior draws."""
        best = None
        for _ in range(n_init):
            params, _ = self.prior.sample(self.n_voxels, rng)
            scalars = torch.as_tensor(np.stack([params[name] for name in self.prior.names], axis=1))
            direction = torch.as_tensor(params["n"])
            log_post = self.log_posterior(scalars, direction)
            if best is None:
                best = [scalars, direction, log_post]
            else:
                better = log_post > best[2]
                best = [torch.where(better[:, None], scalars, best[0]),
                        torch.where(better[:, None], direction, best[1]),
                        torch.where(better, log_post, best[2])]
        self.scalars, self.direction, self.log_post = best

    def _metropolis(self, scalars, direction, generator) -> torch.Tensor:
        """Accept or reject a proposal in place; return the acceptance probabilities."""
        proposal = self.log_posterior(scalars, direction)
        log_ratio = (proposal - self.log_post).nan_to_num(nan=-math.inf)
        accept = torch.log(torch.rand(self.n_voxels, generator=generator, dtype=_DTYPE)) < log_ratio
        self.scalars = torch.where(accept[:, None], scalars, self.scalars)
        self.direction = torch.where(accept[:, None], direction, self.direction)
        self.log_post = torch.where(accept, proposal, self.log_post)
        return log_ratio.clamp_max(0.0).exp()

    def run(self, n_burn: int, n_steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Burn in with adaptation, then average over ``n_steps`` sweeps."""
        n, p = self.n_voxels, self.prior.n_params
        typical_std = torch.as_tensor(self.prior.weights @ self.prior.stds)
        chol = torch.diag(0.1 * typical_std).expand(n, p, p).clone()
        log_scale = torch.zeros(n, 2, dtype=_DTYPE)
        log_scale[:, 1] = math.log(0.2)
        checkpoints = {n_burn // 4, n_burn // 2, 3 * n_burn // 4} - {0}
        window = _RunningMoments(n, p)
        sums = {
            "mean": torch.zeros(n, p, dtype=_DTYPE),
            "square": torch.zeros(n, p, dtype=_DTYPE),
            "scatter": torch.zeros(n, 3, 3, dtype=_DTYPE),
            "cluster_probs": torch.zeros(n, self.prior.n_clusters, dtype=_DTYPE),
            "accept_scalars": torch.zeros(n, dtype=_DTYPE),
            "accept_direction": torch.zeros(n, dtype=_DTYPE),
        }
        for sweep in range(n_burn + n_steps):
            noise = torch.randn(n, p, 1, generator=generator, dtype=_DTYPE)
            step = log_scale[:, :1].exp() * (chol @ noise)[..., 0]
            accept_scalars = self._metropolis(self.scalars + step, self.direction, generator)
            moved = self.direction + log_scale[:, 1:].exp() * torch.randn(n, 3, generator=generator, dtype=_DTYPE)
            accept_direction = self._metropolis(self.scalars, moved / moved.norm(dim=1, keepdim=True), generator)
            if sweep < n_burn:
                log_scale += self.adaptation_rate * (
                    torch.stack([accept_scalars, accept_direction], dim=1) - self.target_acceptance
                )
                window.add(self.scalars)
                if sweep + 1 in checkpoints:
                    chol = window.proposal_cholesky()
                    log_scale[:, 0] = 0.0
                    window = _RunningMoments(n, p)
                continue
            sums["mean"] += self.scalars
            sums["square"] += self.scalars**2
            sums["scatter"] += self.direction[:, :, None] * self.direction[:, None, :]
            sums["cluster_probs"] += torch.as_tensor(self.prior.responsibilities(self.scalars.numpy()))
            sums["accept_scalars"] += accept_scalars
            sums["accept_direction"] += accept_direction
        out = {key: value / n_steps for key, value in sums.items()}
        out["std"] = (out.pop("square") - out["mean"] ** 2).clamp_min(0.0).sqrt()
        return out


class _RunningMoments:
    """Welford running mean and covariance of a batch of chains."""

    def __init__(self, n_chains: int, n_params: int) -> None:
        self.count = 0
        self.mean = torch.zeros(n_chains, n_params, dtype=_DTYPE)
        self.m2 = torch.zeros(n_chains, n_params, n_params, dtype=_DTYPE)

    def add(self, x: torch.Tensor) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta[:, :, None] * (x - self.mean)[:, None, :]

    def proposal_cholesky(self) -> torch.Tensor:
        """Cholesky factor of the optimal random-walk covariance 2.38² Σ / P (Roberts & Rosenthal 2001)."""
        n_params = self.mean.shape[1]
        cov = self.m2 / max(self.count - 1, 1)
        jitter = 1e-6 * cov.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
        cov = cov + jitter[:, None, None] * torch.eye(n_params, dtype=_DTYPE)
        return torch.linalg.cholesky(cov * (2.38**2 / n_params))


# =============================================================================================== shared
def _check_prior(prior: ClusterPrior, names: tuple[str, ...], has_direction: bool) -> None:
    if tuple(prior.names) != names or prior.has_direction != has_direction:
        raise ValueError(
            f"the oracle needs a prior over {names} (has_direction={has_direction}); got one over "
            f"{prior.names} (has_direction={prior.has_direction})."
        )


def _check_inputs(
    signals: np.ndarray, protocol: Protocol, sigma: float, S0: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    signals = np.asarray(signals, dtype=np.float64)
    if signals.ndim != 2 or signals.shape[1] != protocol.n_measurements:
        raise ValueError(
            f"signals must have shape (n_voxels, {protocol.n_measurements}); got {signals.shape}."
        )
    if not np.all(np.isfinite(signals)) or np.any(signals < 0):
        raise ValueError("signals must be finite magnitudes >= 0.")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma={sigma!r} must be the positive noise standard deviation (raw units).")
    S0 = np.broadcast_to(np.asarray(S0, dtype=np.float64), (signals.shape[0],)).copy()
    if not np.all(np.isfinite(S0) & (S0 > 0)):
        raise ValueError("S0 must be positive and finite (a float, or one value per voxel).")
    return signals, S0


def _combine_clusters(
    means: torch.Tensor, covs: torch.Tensor, log_evidence: torch.Tensor, weights: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture posterior mean, variance and cluster probabilities from per-cluster moments."""
    log_joint = log_evidence + torch.as_tensor(np.log(weights))
    probs = torch.softmax(log_joint, dim=1)
    safe_means = torch.where(probs[..., None] > 0, means, 0.0)
    mean = (probs[..., None] * safe_means).sum(1)
    second = covs.diagonal(dim1=2, dim2=3) + safe_means**2
    variance = (probs[..., None] * torch.where(probs[..., None] > 0, second, 0.0)).sum(1) - mean**2
    return mean, variance, probs


def _chunks(n: int, size: int) -> list[slice]:
    if size < 1:
        raise ValueError(f"chunk_size={size} must be >= 1.")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
