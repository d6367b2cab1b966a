"""Voxelwise self-supervised network (IVIM-NET style): the encoder outputs the parameters directly."""

from __future__ import annotations

import torch
from torch import nn

from ..signal_models import SignalModel
from .base import Estimates
from .networks import VoxelBatch, encoder_inputs
from .neural import NetworkEstimator

__all__ = ["SelfSupervisedEstimator"]


class SelfSupervisedEstimator(NetworkEstimator):
    """Self-supervised voxelwise network: no latent distribution, no prior.

    The encoder maps each voxel's observables to unconstrained parameters, the physics model predicts
    the signal, and training minimises the reconstruction loss (Gaussian = MSE by default, as in
    IVIM-NET and DIMOND).  Takes every option of :class:`~varmap.estimators.neural.NetworkEstimator`.

    References
    ----------
    Barbieri S et al. (2020) Deep learning how to fit an intravoxel incoherent motion model to
    diffusion-weighted MRI. Magn. Reson. Med. 83:312-321.
    """

    name = "selfsup"

    def __init__(self, model: SignalModel, *, likelihood: str = "gaussian", **kwargs) -> None:
        super().__init__(model, likelihood=likelihood, **kwargs)

    def _encoder_outputs(self) -> int:
        return self.model.n_packed + 1

    def _extra_modules(self, generator: torch.Generator) -> dict[str, nn.Module]:
        return {}

    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        unconstrained = self.encoder_(encoder_inputs(batch.observables, batch.S0_relative))
        return self.decoder_.nll(batch.observables, unconstrained, batch.sigma)

    def _estimate(self, batch: VoxelBatch, generator: torch.Generator) -> Estimates:
        unconstrained = self.encoder_(encoder_inputs(batch.observables, batch.S0_relative))
        packed, S0_level = self.decoder_.parameters_of(unconstrained)
        S0_scale = S0_level / batch.S0_relative
        return Estimates(packed=packed.double().cpu().numpy(), S0_scale=S0_scale[:, 0].double().cpu().numpy())
