"""Every estimator's options, declared once: name, type, default, range and help.

The estimators read their settings from these tables, ``varmap.fit_image`` checks the options it is
given against them, and the command line builds its flags from them; nothing here imports torch, so
the command line can read the tables before any heavy library loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Option", "OPTIONS", "method_options", "check_options"]


@dataclass(frozen=True)
class Option:
    """One setting of an estimator.

    Attributes
    ----------
    name : str
        Keyword argument (``--name-with-dashes`` on the command line).
    type : type
        ``int``, ``float``, ``str`` or ``bool``; for ``n_values`` > 1 the type of each element.
    default : object
        Value when not given (``None`` where the estimator derives it from the data).
    help : str
        One line for ``--help`` and the docs, with units.
    choices : tuple, optional
        The allowed values.
    low, high : float, optional
        Inclusive bounds of a number (each element of a tuple).
    n_values : int
        1 for a scalar; 2 for a pair such as a temperature schedule.
    cli : bool
        Offered as a flag of ``varmap fit``.
    per_voxel : bool
        Also accepts one value per voxel, a 1-D array (through the Python API).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    n_values: int = 1
    cli: bool = True
    per_voxel: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag, ``--n-epochs`` for ``n_epochs``."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type and checked against its choices and bounds.

        Raises
        ------
        ValueError
            Naming the option, the value and what is allowed.
        """
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"option {self.name} needs a value; its default is {self.default!r}.")
        if self.per_voxel and np.ndim(value) == 1:
            return np.asarray(value, dtype=np.float64)  # checked against the voxels by the data preparation
        if self.n_values > 1:
            values = tuple(value) if isinstance(value, (list, tuple)) else None
            if values is None or len(values) != self.n_values:
                raise ValueError(f"option {self.name} takes {self.n_values} values; got {value!r}.")
            return tuple(replace(self, n_values=1).check(v) for v in values)
        try:
            if self.type is bool and not isinstance(value, bool):
                raise TypeError
            if self.type is int and (isinstance(value, bool) or float(value) != int(value)):
                raise TypeError
            converted = self.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"option {self.name} must be {self.type.__name__}; got {value!r}.") from None
        if self.choices is not None and converted not in self.choices:
            raise ValueError(f"option {self.name} must be one of {list(self.choices)}; got {value!r}.")
        if self.low is not None and not converted >= self.low:
            raise ValueError(f"option {self.name} must be >= {self.low}; got {value!r}.")
        if self.high is not None and not converted <= self.high:
            raise ValueError(f"option {self.name} must be <= {self.high}; got {value!r}.")
        return converted


_COMMON = (
    Option("sigma", float, None, "noise standard deviation of one measurement in raw signal units, for the "
           "scan or (Python API) one value per voxel (default: estimated from the data)", low=0.0, per_voxel=True),
    Option("likelihood", str, "rician", "noise model of the reconstruction term", choices=("rician", "gaussian")),
)

_NLLS = (
    Option("max_iter", int, 100, "most Levenberg-Marquardt iterations per voxel", low=1),
    Option("tol", float, 1e-10, "relative change of the objective at which a voxel has converged", low=0.0),
    Option("chunk_size", int, None, "voxels fitted at once (default: chunks whose Jacobians take about "
           "1.5 GB)", low=1, cli=False),
)

_NETWORK = (
    Option("n_hidden", int, None, "width of the encoder's hidden layers (default: max(64, observables))", low=1),
    Option("n_layers", int, 3, "hidden layers of the encoder", low=1),
    Option("activation", str, "relu", "encoder activation", choices=("relu", "prelu", "softplus", "elu", "silu")),
    Option("n_epochs", int, 500, "most training epochs", low=1),
    Option("batch_size", int, 128, "voxels per mini-batch at the start", low=1),
    Option("max_batch_size", int, None, "largest mini-batch: on a plateau of the held-out loss the batch "
           "grows fourfold up to this (and an epoch's voxels / 16) before the learning rate is lowered "
           "(default: batch_size, no growth)", low=1),
    Option("learning_rate", float, 1e-3, "Adam step size", low=0.0),
    Option("validation_fraction", float, 0.1, "fraction of voxels held out for early stopping (still mapped)",
           low=0.0, high=0.99),
    Option("patience", int, 30, "epochs without a better held-out loss before training stops", low=1),
    Option("min_improvement", float, 0.01, "decrease of the held-out loss (per voxel, nats) that counts as "
           "better for early stopping (0: any decrease)", low=0.0),
    Option("voxels_per_epoch", int, 8192, "most training voxels one epoch visits (a fresh random subset "
           "each epoch) and most held-out voxels checked", low=1),
    Option("chunk_size", int, 4096, "most voxels per inference chunk", low=1, cli=False),
    Option("n_threads", int, None, "CPU threads for training (default 1: mini-batches gain nothing from more)",
           low=1),
)

_VARIATIONAL = (
    Option("n_latent", int, None, "latent dimension (default: physical parameters + S0)", low=1),
    Option("beta", float, 1.0, "final KL weight (1: the evidence lower bound)", low=0.0),
    Option("warmup_off_epochs", int, 5, "epochs without the KL term at the start", low=0),
    Option("warmup_ramp_epochs", int, 20, "epochs over which the KL weight rises to beta", low=0),
    Option("inference", str, "fast", "posterior sampling (maps and prior refinement): 'fast' searches a "
           "voxel's posterior mode (Newton steps, Laplace proposal) only where the encoder's proposals and "
           "the adaptive rounds leave fewer than min_effective_samples effective samples; 'exact' searches "
           "it in every voxel (about 3x slower inference; also what 'fast' does with no adaptive rounds)",
           choices=("fast", "exact")),
    Option("target_effective_samples", float, None, "'fast' inference: skip the adaptive rounds in voxels "
           "whose encoder proposals alone leave at least this many effective samples (about 2.5x faster "
           "inference, the same RMSE, but more voxels with a std far below their error; default: the "
           "rounds in every voxel)", low=0.0),
    Option("min_effective_samples", float, 32.0, "effective sample size below which 'fast' inference "
           "searches the voxel's posterior mode (voxels of all chunks together, after the first pass)", low=0.0),
    Option("n_posterior_samples", int, 64, "importance samples per voxel and proposal at inference", low=1),
    Option("proposal_scale", float, 1.2, "widening of the proposals' spread for the maps (gmvae's prior "
           "refinement has its own, refinement_proposal_scale)", low=1e-3),
    Option("n_mode_steps", int, 10, "most Newton steps to each voxel's posterior mode (fewer once every point "
           "of a chunk has converged; 0: no Laplace proposal)", low=0),
    Option("n_adaptive_rounds", int, 2, "adaptive importance-sampling rounds after the first proposals", low=0),
)

_MIXTURE = (
    Option("n_components", int, 3, "mixture components K", low=1),
    Option("y_sampler", str, "enumerate", "how the component enters the reconstruction term in training",
           choices=("gumbel", "enumerate")),
    Option("temperature", float, (1.0, 0.3), "Gumbel-softmax temperature after the warm-up and at the last "
           "epoch", low=1e-6, n_values=2, cli=False),
    Option("min_component_usage", float, 0.005, "share of voxels below which a component is re-seeded",
           low=0.0, high=1.0),
    Option("max_reseeds", int, 4, "most component re-seedings in one training run", low=0),
    Option("restarts", int, 2, "trainings again, from other random streams of the seed, while the refined "
           "prior holds two components closer than duplicate_distance (two components of one tissue)", low=0),
    Option("duplicate_distance", float, 0.5, "Bhattacharyya distance between two refined components below "
           "which they count as one tissue split in two (see restarts)", low=0.0),
    Option("merged_distance", float, 0.1, "Bhattacharyya distance between two refined components' "
           "distributions of one voxel's observables below which the pair is refitted by exact EM on a grid of "
           "the tissue parameters (models with at most two; 0: never)", low=0.0),
    Option("merge_split_distance", float, 0.5, "Bhattacharyya distance between the two refined components "
           "whose distributions of one voxel's observables lie closest below which merging them while splitting "
           "another in two is tried by exact EM on a grid of the tissue parameters (models with at most two), "
           "and kept where it raises the evidence more than any refit (0: never)", low=0.0),
    Option("refinement_rounds", int, 4, "importance-sampling draws of the empirical-Bayes prior refinement "
           "(0: none)", low=0),
    Option("refinement_steps", int, 5, "EM steps on each draw", low=0),
    Option("refinement_voxels", int, 8192, "voxels whose posteriors the refinement uses", low=1),
    Option("refinement_proposal_scale", float, None, "widening of the proposals' spread when sampling the "
           "refinement voxels' posteriors (wider than at inference: EM sets the prior's covariances from "
           "these samples, and proposals that miss a posterior's tails narrow it; too wide, few effective "
           "samples are left and EM leans towards the proposals' shape; default: the widening that leaves "
           "16 % effective samples in the latent space's dimensions, 2.5 for msdki, 1.66 for ball_stick)",
           low=1e-3),
    Option("component_correlations", str, None, "correlations a prior component keeps between the "
           "parameters in the empirical-Bayes refinement: 'none' holds every parameter (the fibre direction "
           "as one) and S0 uncorrelated within a component; 'tissue' lets the tissue parameters correlate "
           "and holds S0 apart (default: the signal model's, 'none' for ball_stick, 'tissue' for msdki)",
           choices=("none", "tissue")),
    Option("prior_uncertainty", bool, True, "add to each voxel's std the uncertainty of the learned "
           "components' means (Kass-Steffey, from the linearised model's information; large only where the "
           "data place a component loosely, as free water at b >= 1000 s/mm²)"),
)


def _with_default(options: tuple[Option, ...], name: str, default: Any) -> tuple[Option, ...]:
    return tuple(replace(o, default=default) if o.name == name else o for o in options)


#: Options of every registered method, by method name.
OPTIONS: dict[str, tuple[Option, ...]] = {
    "nlls": _COMMON + _NLLS,
    "selfsup": _with_default(_COMMON, "likelihood", "gaussian") + _NETWORK,
    "vae": _COMMON + _NETWORK + _VARIATIONAL,
    "gmvae": _COMMON + _NETWORK + _VARIATIONAL + _MIXTURE,
}


def method_options(method: str) -> dict[str, Option]:
    """The options of ``method`` by name.

    Raises
    ------
    ValueError
        If ``method`` is not registered; the message lists the valid names.
    """
    try:
        return {option.name: option for option in OPTIONS[method]}
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(OPTIONS)}.") from None


def check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``method``: the given ones checked and converted, the others at their defaults.

    Raises
    ------
    ValueError
        For an option ``method`` does not have (listing the ones it has) or a value out of range.
    """
    table = method_options(method)
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to method {method}; its options are "
            f"{', '.join(sorted(table))}."
        )
    return {name: option.check(options[name]) if name in options else option.default
            for name, option in table.items()}
