"""How estimators parametrise S0 beside a model's tissue parameters, and the unconstrained vectors of both.

Two S0 conventions exist, one per kind of estimator, each an ordinary bounded :class:`Parameter`:

- voxelwise fits estimate S0 relative to the voxel's own mean b=0 signal (:data:`S0_PER_B0`), a
  factor close to 1;
- network estimators decode S0 in the reference units of :mod:`varmap.estimators.data` (relative to the
  dataset's median b=0 signal, :data:`S0_PER_SCALE`), so that a learned prior sees what voxels share.
"""

from __future__ import annotations

import torch

from ..signal_models import Parameter, SignalModel

__all__ = ["S0_PER_B0", "S0_PER_SCALE", "initial_unconstrained", "decode_unconstrained"]

#: S0 relative to the voxel's mean b=0 signal (voxelwise fits).
S0_PER_B0 = Parameter("S0", "1", 0.5, 2.0, "S0 relative to the voxel's mean b=0 signal", typical=1.0)

#: S0 in reference units, relative to the dataset's median b=0 signal (network estimators).
S0_PER_SCALE = Parameter("S0", "1", 0.0, 8.0, "S0 relative to the median b=0 signal of the data", typical=1.0)


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
