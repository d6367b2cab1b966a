"""Voxelwise self-supervised network (IVIM-NET style): the encoder outputs the parameters directly."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..random_streams import torch_stream
from .base import Estimates, Estimator
from .data import PreparedData
from .networks import SignalDecoder, VoxelBatch, encoder_inputs, start_at_typical_values, voxel_batch
from .neural import (
    build_encoder,
    input_statistics,
    map_chunks,
    network_state,
    train_estimator,
    untrained_input_statistics,
)

__all__ = ["SelfSupervisedEstimator"]


class SelfSupervisedEstimator(Estimator):
    """Self-supervised voxelwise network: no latent distribution, no prior.

    The encoder maps each voxel's observables to unconstrained parameters and S0, the physics model
    predicts the signal, and training minimises the reconstruction loss (Gaussian, i.e. MSE, by default,
    as in IVIM-NET and DIMOND).  Options: ``varmap.estimators.options.OPTIONS["selfsup"]``.

    References
    ----------
    Barbieri S et al. (2020) Deep learning how to fit an intravoxel incoherent motion model to
    diffusion-weighted MRI. Magn. Reson. Med. 83:312-321.
    """

    name = "selfsup"

    def _build(self, input_mean: np.ndarray, input_std: np.ndarray) -> None:
        self.encoder_ = build_encoder(self, self.model.n_packed + 1, input_mean, input_std,
                                      torch_stream(self.seed, "init"))
        start_at_typical_values(self.encoder_.head, self.model)
        self.decoder_ = SignalDecoder(self.model, self.likelihood)
        self.network_ = nn.ModuleDict({"encoder": self.encoder_, "decoder": self.decoder_}).to(self.device_)

    def _loss(self, batch: VoxelBatch, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return self.decoder_.nll(batch, self.encoder_(encoder_inputs(batch)))

    def _train(self, data: PreparedData) -> dict[str, list[float]]:
        voxels = voxel_batch(data, self.device_)
        self._build(*input_statistics(voxels))
        return train_estimator(self, voxels, self._loss)

    def _infer(self, data: PreparedData) -> Estimates:
        def estimates(_: int, batch: VoxelBatch) -> Estimates:
            packed, S0 = self.decoder_.parameters_of(self.encoder_(encoder_inputs(batch)))
            return Estimates(packed=packed.double().cpu().numpy(), S0=S0[:, 0].double().cpu().numpy())

        self.network_.eval()
        with torch.no_grad():
            parts = map_chunks(estimates, voxel_batch(data, self.device_), self.chunk_size, progress=self.progress,
                               description="selfsup inference")
        return Estimates.concatenate(parts)

    def _state(self) -> dict:
        return network_state(self.network_)

    def _load_state(self, state: dict) -> None:
        self._build(*untrained_input_statistics(self.model))
        self.network_.load_state_dict(state["network"])
