"""Voxelwise nonlinear least squares: the classical baseline, batched Levenberg–Marquardt in torch.

Every voxel is fitted on its own, but all voxels of a chunk are fitted at once: Jacobians come from
``torch.func`` (``vmap`` of ``jacfwd``), the small normal equations are solved batched, and each voxel
keeps its own damping, accepts or rejects its own steps and stops on its own.  Starting points come
from model-specific rules (:data:`INITIALISERS`: closed-form log-linear fits plus small grids); every
voxel starts from its candidate of lowest objective.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jacfwd, vmap

from ..signal_models import Parameter, SignalModel
from .base import Estimates, Estimator
from .data import PreparedData
from .parametrisation import decode_unconstrained, s0_per_reference

__all__ = ["NLLSEstimator", "INITIALISERS"]

#: Smallest signal (normalised units) taken into the logarithm of the log-linear starting fits.
_MIN_LOG_SIGNAL = 1e-3
#: Starting points are pulled this fraction of each parameter's range inside its bounds.
_INIT_MARGIN = 1e-3
#: Damping of the first step, the factor it changes by, and the value at which a voxel gives up.
_LAMBDA_START, _LAMBDA_FACTOR, _LAMBDA_MIN, _LAMBDA_MAX = 1e-3, 10.0, 1e-12, 1e12
#: A step this small relative to the unconstrained parameters counts as converged.
_STEP_TOL = 1e-12
#: Diffusivity grid (µm²/ms) of the ball-and-stick starting points.
_BALL_STICK_D_PAR_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
_BALL_STICK_D_ISO_GRID = (0.2, 0.5, 1.0, 1.5, 2.0, 3.0)
#: Memory the forward-mode Jacobians of one chunk may take when ``chunk_size`` is not given (bytes), the
#: bytes they take per voxel, observable and unknown (float64, with vmap's intermediates), and the range
#: of chunk sizes chosen from it.
_CHUNK_MEMORY = 1.5e9
_JACOBIAN_BYTES_PER_ELEMENT = 70
_MIN_CHUNK, _MAX_CHUNK = 1_000, 50_000


# ---------------------------------------------------------------------------------------------- init
def _clip(parameter: Parameter, value: torch.Tensor) -> torch.Tensor:
    """Pull ``value`` inside ``parameter``'s bounds by a small fraction of its range; NaN to the middle."""
    span = parameter.high - parameter.low
    value = torch.nan_to_num(value, nan=0.5 * (parameter.low + parameter.high))
    return value.clamp(parameter.low + _INIT_MARGIN * span, parameter.high - _INIT_MARGIN * span)


def _log_linear_fit(design: torch.Tensor, observables: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Weighted least squares of log(observables) on ``design``, batched over voxels.

    Parameters
    ----------
    design : Tensor, shape (n_observables, n_coefficients)
    observables : Tensor, shape (n_voxels, n_observables)
        Normalised signals; values below ``_MIN_LOG_SIGNAL`` are raised to it.
    counts : Tensor, shape (n_observables,)
        Measurements per observable.

    Returns
    -------
    Tensor, shape (n_voxels, n_coefficients)
        Coefficients; NaN where the weighted normal equations are singular.

    Notes
    -----
    The weights ``count * S²`` are the inverse variances of log S to first order (var log S ≈ σ²/(count S²)).
    """
    signal = observables.clamp_min(_MIN_LOG_SIGNAL)
    weights = counts * signal * signal
    weighted_design = design * weights[..., None]
    normal = weighted_design.mT @ design
    rhs = (weighted_design * torch.log(signal)[..., None]).sum(-2)
    ridge = 1e-12 * normal.diagonal(dim1=-2, dim2=-1).sum(-1)
    normal = normal + ridge[:, None, None] * torch.eye(design.shape[1], dtype=design.dtype, device=design.device)
    coefficients, info = torch.linalg.solve_ex(normal, rhs)
    return torch.where((info == 0)[:, None], coefficients, torch.nan)


def _init_msdki(model: SignalModel, observables: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Starting points of MS-DKI: a log-linear fit of the shell means plus a grid over (D, K).

    ``log S̄(b) = a0 + a1 b + a2 b²`` gives ``D = -a1``, ``K = 6 a2 / D²`` and the S0 factor ``exp(a0)``.
    """
    D_param, K_param = model.parameters
    bvals = torch.tensor(model.protocol.shell_bvals, dtype=observables.dtype, device=observables.device)
    design = torch.stack([torch.ones_like(bvals), bvals, bvals * bvals], dim=-1)
    a = _log_linear_fit(design, observables, counts)
    D = _clip(D_param, -a[:, 1])
    K = _clip(K_param, 6.0 * a[:, 2] / (D * D))
    S0 = _clip(s0_per_reference(model.protocol), torch.exp(a[:, 0]))
    candidates = [torch.stack([D, K, S0], dim=-1)]
    ones = torch.ones_like(D)
    for D_grid in (0.5, 1.0, 1.5, 2.0, 3.0):
        for K_grid in (0.0, 0.5, 1.0, 1.5):
            candidates.append(torch.stack([D_grid * ones, K_grid * ones, ones], dim=-1))
    return torch.stack(candidates, dim=1)


def _init_ball_stick(model: SignalModel, observables: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Starting point of ball-and-stick: a diffusion-tensor direction and a diffusivity grid.

    A log-linear diffusion-tensor fit gives the fibre direction ``n`` (principal eigenvector).  With
    ``n`` and both diffusivities fixed the model is linear in ``S0 · f`` and
    ``S0 · (1 - f)``, so for every ``(d_par, d_iso)`` of a grid the best fraction and S0
    follow from a 2×2 weighted least-squares solve (variable projection).  The grid point of lowest
    objective, after clipping into the bounds, is returned as the one candidate.
    """
    f_param, d_par_param, d_iso_param = model.parameters
    direction = _tensor_direction(model, observables, counts)
    ones = torch.ones_like(observables[:, :1])
    S0_parameter = s0_per_reference(model.protocol)

    def compartment(f: float, d_par: float, d_iso: float) -> torch.Tensor:
        return model.forward(torch.cat([ones * f, ones * d_par, ones * d_iso, direction], dim=-1))

    sticks = {d_par: compartment(1.0, d_par, 1.0) for d_par in _BALL_STICK_D_PAR_GRID}
    balls = {d_iso: compartment(0.0, 1.0, d_iso) for d_iso in _BALL_STICK_D_ISO_GRID}
    best_objective = torch.full_like(ones[:, 0], torch.inf)
    best = torch.zeros(observables.shape[0], 4, dtype=observables.dtype, device=observables.device)
    for d_par, stick in sticks.items():
        for d_iso, ball in balls.items():
            ss, se, ee = ((counts * u * v).sum(-1) for u, v in ((stick, stick), (stick, ball), (ball, ball)))
            sy, ey = (counts * stick * observables).sum(-1), (counts * ball * observables).sum(-1)
            determinant = (ss * ee - se * se).clamp_min(1e-12 * ss * ee)
            stick_weight = (ee * sy - se * ey) / determinant
            ball_weight = (ss * ey - se * sy) / determinant
            f = _clip(f_param, stick_weight / (stick_weight + ball_weight))
            S0 = _clip(S0_parameter, stick_weight + ball_weight)
            predicted = S0[:, None] * (f[:, None] * stick + (1.0 - f[:, None]) * ball)
            objective = (counts * (observables - predicted) ** 2).sum(-1)
            better = objective < best_objective
            values = torch.stack([f, ones[:, 0] * d_par, ones[:, 0] * d_iso, S0], dim=-1)
            best = torch.where(better[:, None], values, best)
            best_objective = torch.where(better, objective, best_objective)
    f, d_par, d_iso, S0 = best.unbind(-1)
    scalars = [_clip(f_param, f), _clip(d_par_param, d_par), _clip(d_iso_param, d_iso)]
    return torch.cat([torch.stack(scalars, -1), direction, S0[:, None]], dim=-1)[:, None, :]


def _tensor_direction(model: SignalModel, observables: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Principal eigenvector (n_voxels, 3) of a log-linear diffusion-tensor fit to every measurement."""
    kwargs = {"dtype": observables.dtype, "device": observables.device}
    b = torch.tensor(model.protocol.bvals, **kwargs)
    x, y, z = torch.tensor(model.protocol.bvecs, **kwargs).unbind(-1)
    design = torch.stack(
        [torch.ones_like(b), -b * x * x, -b * y * y, -b * z * z, -2 * b * x * y, -2 * b * x * z, -2 * b * y * z],
        dim=-1,
    )
    xx, yy, zz, xy, xz, yz = torch.nan_to_num(_log_linear_fit(design, observables, counts))[:, 1:].unbind(-1)
    tensor = torch.stack(
        [torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1), torch.stack([xz, yz, zz], -1)], dim=-2
    )
    return torch.linalg.eigh(tensor)[1][..., :, -1]


#: Starting-point generators keyed by signal-model name.  Each takes the model, the observables
#: (n_voxels, n_observables) and the counts (n_observables,), all float64 on one device, and returns
#: candidates (n_voxels, n_candidates, n_packed + 1): packed parameters inside the bounds, then S0 relative to the mean b=0 signal.
INITIALISERS: dict[str, Callable[[SignalModel, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "msdki": _init_msdki,
    "ball_stick": _init_ball_stick,
}


# ---------------------------------------------------------------------------------------------- LM
#: torch keeps the current forward-AD level in a module global (``torch.autograd.forward_ad``), so two
#: threads taking forward-mode derivatives at once exit each other's level ("Trying to access a forward
#: AD level with an invalid index"); the variational estimators' inference threads fit collapsed voxels
#: with this class (:meth:`NLLSEstimator.fit_observables`), so its Jacobians are taken one at a time.
_FORWARD_AD_LOCK = threading.Lock()


@functools.cache
def _load_forward_ad() -> None:
    """Run one forward-mode derivative so torch loads its forward-AD decompositions.

    Loading them makes torch (2.13) call its own deprecated ``torch.jit.script`` and emit a
    ``DeprecationWarning`` that says nothing about varmap; it is silenced here, once.
    """
    with _FORWARD_AD_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        one = torch.ones(1, dtype=torch.float64)
        torch.func.jvp(torch.exp, (one,), (one,))


@dataclass
class _Solution:
    unconstrained: torch.Tensor
    objective: torch.Tensor
    converged: torch.Tensor
    n_iterations: torch.Tensor


class NLLSEstimator(Estimator):
    """Voxelwise nonlinear least squares, fitted by batched Levenberg–Marquardt.

    Minimises, in every voxel, the sum of squared differences between the measurements and the
    model, ``Σ count · (observable - S0 · φ(θ))²`` (S0 relative to the voxel's mean b=0 signal) in S0-normalised units: an observable that
    averages ``count`` measurements with one prediction (a shell of MS-DKI) enters with weight
    ``count``, which equals the sum over the raw measurements up to a constant.

    Parameters
    ----------
    model : SignalModel
        Physics model bound to the protocol; it needs an entry in :data:`INITIALISERS`.
    max_iter : int
        Most Levenberg–Marquardt iterations (accepted or rejected steps) per voxel.
    tol : float
        A voxel has converged when an accepted step lowers its objective by less than this fraction.
    chunk_size : int, optional
        Voxels fitted together.  Peak memory is about ``70 × chunk_size × n_observables × (n_packed + 1)``
        bytes (forward-mode Jacobians in float64).  Default: as many voxels as keep that near 1.5 GB
        (between 1,000 and 50,000; :attr:`voxels_per_chunk`).
    sigma, likelihood, seed, device, progress
        As in :class:`~varmap.estimators.base.Estimator`.  ``likelihood`` is not used: the objective
        is ordinary least squares (Gaussian noise of equal variance), the classical voxelwise baseline,
        which is biased where the signal approaches the Rician noise floor.  ``sigma`` is only recorded.
        The fit is deterministic, so ``seed`` changes nothing.

    Attributes
    ----------
    converged_ : ndarray of bool, shape (n_valid,)
        Voxels of the last fit or transform that met a stopping criterion before ``max_iter``.
    n_iterations_ : ndarray of int, shape (n_valid,)
        Iterations used per voxel.
    objective_ : ndarray, shape (n_valid,)
        Final residual sum of squares, S0-normalised units.

    Notes
    -----
    Parameters are optimised in the unconstrained space of :meth:`SignalModel.constrain` plus one
    component for S0, so estimates stay inside the physical bounds; the fibre direction is an
    unconstrained 3-vector renormalised after every accepted step.  The damped normal equations are
    ``(JᵀJ + λ diag(JᵀJ)) δ = -Jᵀr`` (Marquardt scaling); λ shrinks tenfold after an accepted step and
    grows tenfold after a rejected one.

    References
    ----------
    Marquardt DW (1963) An algorithm for least-squares estimation of nonlinear parameters. J. Soc.
    Ind. Appl. Math. 11:431-441.
    """

    name = "nlls"

    def __init__(self, model: SignalModel, **settings) -> None:
        if model.name not in INITIALISERS:
            raise ValueError(
                f"nlls has no starting-point rule for signal model {model.name!r}; models with one: "
                f"{sorted(INITIALISERS)}. Add an initialiser to varmap.estimators.nlls.INITIALISERS."
            )
        super().__init__(model, **settings)

    @functools.cached_property
    def _S0(self) -> Parameter:
        """S0 relative to each voxel's normalisation reference (:func:`~.parametrisation.s0_per_reference`)."""
        return s0_per_reference(self.model.protocol)

    @property
    def voxels_per_chunk(self) -> int:
        """Voxels fitted together: ``chunk_size``, or as many as keep the Jacobians near 1.5 GB."""
        if self.chunk_size is not None:
            return self.chunk_size
        per_voxel = _JACOBIAN_BYTES_PER_ELEMENT * self.model.n_observables * (self.model.n_packed + 1)
        return int(max(_MIN_CHUNK, min(_MAX_CHUNK, _CHUNK_MEMORY // per_voxel)))

    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        return {}

    # ------------------------------------------------------------------ inference
    def _infer(self, data: PreparedData) -> Estimates:
        device = self.device_
        counts = torch.as_tensor(self.model.observation_counts, dtype=torch.float64, device=device)
        chunk_size = self.voxels_per_chunk
        starts = range(0, data.n_valid, chunk_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="nlls", unit="chunk")
        solutions = []
        for start in starts:
            chunk = torch.as_tensor(data.observables[start : start + chunk_size], dtype=torch.float64, device=device)
            solutions.append(self._fit_chunk(chunk, counts))
        unconstrained = torch.cat([s.unconstrained for s in solutions])
        with torch.no_grad():
            packed, S0_per_b0 = decode_unconstrained(self.model, unconstrained, self._S0)
        self.converged_ = torch.cat([s.converged for s in solutions]).cpu().numpy()
        self.n_iterations_ = torch.cat([s.n_iterations for s in solutions]).cpu().numpy()
        self.objective_ = torch.cat([s.objective for s in solutions]).cpu().numpy()
        return Estimates(packed=packed.cpu().numpy(), S0=S0_per_b0[:, 0].cpu().numpy() * data.b0_mean)

    def fit_observables(self, observables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit one chunk of normalised observables (each voxel's signals over its mean b=0 signal).

        Parameters
        ----------
        observables : Tensor, shape (n_voxels, n_observables)

        Returns
        -------
        packed : Tensor, shape (n_voxels, n_packed)
            Fitted parameters, float64 on the observables' device.
        S0_per_b0 : Tensor, shape (n_voxels, 1)
            S0 relative to each voxel's mean b=0 signal.
        """
        observables = observables.double()
        counts = torch.as_tensor(self.model.observation_counts, dtype=torch.float64, device=observables.device)
        with torch.no_grad():
            return decode_unconstrained(self.model, self._fit_chunk(observables, counts).unconstrained, self._S0)

    def _residual(
        self, unconstrained: torch.Tensor, observables: torch.Tensor, sqrt_counts: torch.Tensor
    ) -> torch.Tensor:
        """Weighted residuals ``√count · (observable - S0 φ)`` (S0 per b=0 mean); broadcasts over leading axes."""
        packed, S0 = decode_unconstrained(self.model, unconstrained, self._S0)
        return sqrt_counts * (observables - S0 * self.model.forward(packed))

    def _start(self, observables: torch.Tensor, sqrt_counts: torch.Tensor) -> torch.Tensor:
        """Unconstrained starting point of every voxel: the initialiser's candidate of lowest objective."""
        candidates = INITIALISERS[self.model.name](self.model, observables, sqrt_counts * sqrt_counts)
        unconstrained = torch.cat(
            [self.model.unconstrain(candidates[..., :-1]), self._S0.to_unconstrained(candidates[..., -1:])], dim=-1
        )
        objectives = torch.stack(
            [
                self._residual(unconstrained[:, c], observables, sqrt_counts).square().sum(-1)
                for c in range(unconstrained.shape[1])
            ],
            dim=1,
        )
        best = torch.nan_to_num(objectives, nan=torch.inf).argmin(dim=1)
        return unconstrained[torch.arange(best.numel(), device=best.device), best]

    def _fit_chunk(self, observables: torch.Tensor, counts: torch.Tensor) -> _Solution:
        """Batched Levenberg–Marquardt over the voxels of one chunk."""
        sqrt_counts = counts.sqrt()

        jacobian = self._jacobian_function(sqrt_counts)

        with torch.no_grad():
            u = self._normalise_direction(self._start(observables, sqrt_counts))
            n_voxels, n_unknowns = u.shape
            J, r = jacobian(u, observables)
            objective = r.square().sum(-1)
            damping = torch.full((n_voxels,), _LAMBDA_START, dtype=u.dtype, device=u.device)
            active = torch.ones(n_voxels, dtype=torch.bool, device=u.device)
            converged = torch.zeros_like(active)
            n_iterations = torch.zeros(n_voxels, dtype=torch.int64, device=u.device)
            eye = torch.eye(n_unknowns, dtype=u.dtype, device=u.device)
            for _ in range(self.max_iter):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                n_iterations[idx] += 1
                Ja, ra, lam = J[idx], r[idx], damping[idx]
                JtJ = Ja.mT @ Ja
                gradient = (Ja.mT @ ra[..., None])[..., 0]
                scale = JtJ.diagonal(dim1=-2, dim2=-1)
                scale = scale + 1e-12 * scale.amax(-1, keepdim=True) + 1e-300
                step, info = torch.linalg.solve_ex(JtJ + lam[:, None, None] * scale[..., None] * eye, -gradient)
                trial = self._normalise_direction(u[idx] + step)
                trial_objective = self._residual(trial, observables[idx], sqrt_counts).square().sum(-1)
                old = objective[idx]
                accept = (info == 0) & torch.isfinite(trial_objective) & (trial_objective < old)
                relative = (old - trial_objective) / old.clamp_min(1e-300)
                small_step = step.abs().amax(-1) <= _STEP_TOL * (1.0 + u[idx].abs().amax(-1))
                done = (accept & (relative <= self.tol)) | small_step | (trial_objective == 0)
                lam = torch.where(accept, (lam / _LAMBDA_FACTOR).clamp_min(_LAMBDA_MIN), lam * _LAMBDA_FACTOR)
                done = done | (lam > _LAMBDA_MAX)
                damping[idx] = lam
                moved = idx[accept]
                if moved.numel():
                    u[moved] = trial[accept]
                    objective[moved] = trial_objective[accept]
                    J[moved], r[moved] = jacobian(u[moved], observables[moved])
                finished = idx[done]
                converged[finished] = True
                active[finished] = False
        return _Solution(u, objective, converged, n_iterations)

    def _jacobian_function(
        self, sqrt_counts: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``(u, observables) -> (J, r)``: Jacobians (n, n_observables, n_unknowns) and residuals."""
        def residual_pair(u: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            r = self._residual(u, obs, sqrt_counts)
            return r, r

        _load_forward_ad()
        batched = vmap(jacfwd(residual_pair, has_aux=True))

        def jacobian(u: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with _FORWARD_AD_LOCK:
                return batched(u, obs)

        return jacobian

    def _normalise_direction(self, unconstrained: torch.Tensor) -> torch.Tensor:
        """Rescale the direction block to unit length (the objective does not depend on its norm)."""
        if not self.model.has_direction:
            return unconstrained
        start = self.model.n_scalars
        vector = unconstrained[..., start : start + 3]
        unit = vector / vector.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.cat([unconstrained[..., :start], unit, unconstrained[..., start + 3 :]], dim=-1)
