"""Mean-signal diffusion kurtosis imaging (MS-DKI) on direction-averaged shells."""

from __future__ import annotations

import numpy as np
import torch

from ..protocol import Protocol, ProtocolError
from .base import Parameter, SignalModel

__all__ = ["msdki_signal", "MSDKIModel", "EXPONENT_GUARD"]

#: Exponent above which :func:`msdki_signal` grows logarithmically (see its Notes).
EXPONENT_GUARD = 2.0


def msdki_signal(bvals: torch.Tensor, D: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Direction-averaged signal of the mean-signal kurtosis model.

    Parameters
    ----------
    bvals : Tensor, shape (n_b,)
        b-values in ms/µm².
    D : Tensor, shape (...)
        Mean diffusivity in µm²/ms.
    K : Tensor, shape (...)
        Mean kurtosis (dimensionless).

    Returns
    -------
    Tensor, shape (..., n_b)
        S̄(b) / S0.

    Notes
    -----
    .. math:: \\bar S(b)/S_0 = \\exp(-b D + b^2 D^2 K / 6)

    The expansion is physical only while the exponent decreases with b, i.e. for b < 3/(D K).
    Numerical guard: where the exponent exceeds ``EXPONENT_GUARD`` (a normalised signal of e² ≈ 7.4,
    far above any measurement) it grows as ``c + log(1 + x - c)`` instead of quadratically, so that
    parameters beyond the turning point give finite signals and useful gradients during fitting.

    References
    ----------
    Henriques RN et al. (2021) Diffusional kurtosis imaging in the diffusion imaging in Python project.
    Front. Hum. Neurosci. 15:675433.
    """
    bD = bvals * D[..., None]
    exponent = -bD + bD * bD * K[..., None] / 6.0
    excess = (exponent - EXPONENT_GUARD).clamp_min(0.0)
    return torch.exp(exponent - excess + torch.log1p(excess))


class MSDKIModel(SignalModel):
    """MS-DKI: parameters ``D`` (µm²/ms) and ``K`` fitted to the powder-averaged signal of each shell.

    Observables are the normalised mean signals of every shell, b=0 included (which carries the
    information on S0).  Needs at least two non-zero shells, three without a b=0 measurement.

    ``K`` ranges from -3/7, the theoretical limit for water confined to spherical pores that dipy's
    DKI uses as its lower kurtosis bound, to 3.  Allowing slightly negative values matters where the
    true K is about 0 (free water, CSF): with K >= 0 the posterior there piles against the bound, and
    since D and K trade off when only the b = 1000 shell rises above the noise floor, D is biased upward.
    """

    name = "msdki"
    # D and K may correlate within a learned prior component: where the data do not place a component
    # (free water at b >= 1000 s/mm²) its D-K correlation follows the likelihood's ridge, and held at zero
    # the component contracts onto one point of that ridge (per-voxel noise, SNR 5: free water's D interval
    # covers 0.53 -> 0.002 of truths; benchmarks/results/README.md)
    component_correlations = "tissue"
    # without b=0, S0, D and K from the shell means: three unknowns
    min_shells_without_b0 = 3
    parameters = (
        Parameter("D", "µm²/ms", 0.0, 4.0, "mean diffusivity", typical=1.0),
        Parameter("K", "1", -3.0 / 7.0, 3.0, "mean kurtosis", typical=0.5),
    )

    def __init__(self, protocol: Protocol) -> None:
        super().__init__(protocol)
        self._shell_bvals = torch.tensor(protocol.shell_bvals, dtype=torch.float64)

    def check_protocol(self, protocol: Protocol) -> None:
        n_shells = protocol.dw_shell_bvals.size
        if n_shells < 2:
            raise ProtocolError(
                f"MS-DKI needs at least two non-zero shells; the protocol has {n_shells} "
                f"(b-values in s/mm²: {np.unique(np.round(protocol.bvals * 1000)).tolist()})."
            )

    @property
    def observation_counts(self) -> np.ndarray:
        return self.protocol.shell_counts

    def observables(self, normalised_signals: np.ndarray) -> np.ndarray:
        return self.protocol.powder_average(normalised_signals)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        bvals = self._shell_bvals.to(device=packed.device, dtype=packed.dtype)
        return msdki_signal(bvals, packed[..., 0], packed[..., 1])

    def measurement_forward(self, packed: torch.Tensor) -> torch.Tensor:
        index = torch.tensor(self.protocol.shell_index, device=packed.device)
        return self.forward(packed)[..., index]
