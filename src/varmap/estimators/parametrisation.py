"""How estimators parametrise S0 beside a model's tissue parameters, and the unconstrained vectors of both.

Two S0 conventions exist, one per kind of estimator, each an ordinary bounded :class:`Parameter`:

- voxelwise fits estimate S0 relative to the voxel's own mean b=0 signal (:data:`S0_PER_B0`), a
  factor close to 1;
- network estimators decode S0 in the reference units of :mod:`varmap.estimators.data` (relative to the
  dataset's median b=0 signal, :data:`S0_PER_SCALE`), so that a learned prior sees what voxels share.
"""

from __future__ import annotations

import math

import torch

from ..protocol import Protocol
from ..signal_models import Parameter, SignalModel
from .data import MAX_EXTRAPOLATION_DIFFUSIVITY

__all__ = ["S0_PER_B0", "S0_PER_SCALE", "s0_per_reference", "initial_unconstrained", "decode_unconstrained"]

#: S0 relative to the voxel's mean b=0 signal (voxelwise fits).
S0_PER_B0 = Parameter("S0", "1", 0.5, 2.0, "S0 relative to the voxel's mean b=0 signal", typical=1.0)

#: Fastest decay from b=0 to the lowest shell that S0's range allows where there is no b=0 measurement,
#: µm²/ms: the largest diffusivity of the models' parameters.
MAX_DECAY_DIFFUSIVITY = 4.0

#: S0 in reference units, relative to the dataset's median b=0 signal (network estimators).
S0_PER_SCALE = Parameter("S0", "1", 0.0, 8.0, "S0 relative to the median b=0 signal of the data", typical=1.0)


def s0_per_reference(protocol: Protocol) -> Parameter:
    """S0 relative to the intensity each voxel's signals are normalised by, for voxelwise fits.

    With b=0 measurements that is their mean, which S0 is close to (:data:`S0_PER_B0`).  Without, it is
    :func:`~varmap.estimators.data.reference_intensity`'s extrapolation S1 · exp(b1 · d), d within
    0-3 µm²/ms, from the lowest shell's mean S1 at b1; S0 lies between S1 and S1 · exp(4 b1) (no decay
    faster than :data:`MAX_DECAY_DIFFUSIVITY`), so relative to the reference between exp(-3 b1) and
    exp(4 b1).  The mono-exponential extrapolation falls short most where a slow compartment follows a
    fast one (a few per cent of stick in free water: S0 4-5x the reference from b = 1000 and 2000 s/mm²).
    """
    if protocol.n_b0:
        return S0_PER_B0
    lowest_b = float(protocol.shell_bvals[0])
    return Parameter("S0", "1", math.exp(-MAX_EXTRAPOLATION_DIFFUSIVITY * lowest_b),
                     math.exp(MAX_DECAY_DIFFUSIVITY * lowest_b),
                     "S0 relative to the voxel's signal extrapolated to b=0", typical=1.0)


def initial_unconstrained(model: SignalModel, S0_parameter: Parameter) -> torch.Tensor:
    """Unconstrained vector (n_packed + 1,) of the model's typical values and the typical S0."""
    S0 = S0_parameter.to_unconstrained(torch.tensor(S0_parameter.start, dtype=torch.float64))
    return torch.cat([model.initial_unconstrained(), S0[None]])


def decode_unconstrained(
    model: SignalModel, unconstrained: torch.Tensor, S0_parameter: Parameter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split unconstrained vectors (..., n_packed + 1) into packed parameters and S0.

    Returns
    -------
    packed : Tensor, shape (..., n_packed)
    S0 : Tensor, shape (..., 1)
        In the units of ``S0_parameter``.
    """
    return model.constrain(unconstrained[..., :-1]), S0_parameter.to_bounded(unconstrained[..., -1:])
