"""The summed Rician log-likelihood of one shell's measurements as a cheap function of the shell's signal."""

from __future__ import annotations

import torch

from ...estimators.likelihood import rician_log_pdf
from .common import DTYPE

__all__ = ["ShellLikelihood"]


class ShellLikelihood:
    """Summed Rician log-likelihood of one shell's measurements as a function of the shell's ν.

    Parameters
    ----------
    m : Tensor, shape (n_voxels, n_directions)
        Magnitudes of the shell's measurements.
    sigma : Tensor, shape (n_voxels,)
        Noise standard deviation per channel of each voxel.
    """

    n_coarse = 48
    n_fine = 96
    #: Nats below the maximum that the fine table must cover.
    depth = 60.0

    def __init__(self, m: torch.Tensor, sigma: torch.Tensor) -> None:
        self.sigma = sigma
        self.curvature = m.shape[1] / sigma**2
        top = m.max(dim=1).values + 12.0 * sigma
        coarse_step = top / (self.n_coarse - 1)
        coarse = self._evaluate(m, torch.zeros_like(top), coarse_step, self.n_coarse)
        keep = coarse >= coarse.max(dim=1, keepdim=True).values - self.depth
        first = keep.to(torch.int8).argmax(dim=1)
        last = self.n_coarse - 1 - keep.flip(1).to(torch.int8).argmax(dim=1)
        self.low = (first - 1).clamp_min(0) * coarse_step
        self.high = (last + 1).clamp_max(self.n_coarse - 1) * coarse_step
        self.step = (self.high - self.low) / (self.n_fine - 1)
        table = self._evaluate(m, self.low, self.step, self.n_fine)
        self.slope_low = (table[:, 1] - table[:, 0]) / self.step
        self.slope_high = (table[:, -1] - table[:, -2]) / self.step
        # Catmull-Rom cubic of each interval, c0 + c1 t + c2 t² + c3 t³ for t in [0, 1]; linear
        # extrapolation by one point at each end gives the end intervals' outer neighbours.
        below, above = 2 * table[:, :1] - table[:, 1:2], 2 * table[:, -1:] - table[:, -2:-1]
        padded = torch.cat([below, table, above], dim=1)
        p0, p1, p2, p3 = (padded[:, j : j + self.n_fine - 1] for j in range(4))
        self.coefficients = torch.stack(
            [p1, 0.5 * (p2 - p0), p0 - 2.5 * p1 + 2 * p2 - 0.5 * p3, 1.5 * (p1 - p2) + 0.5 * (p3 - p0)],
            dim=-1,
        )

    def _evaluate(self, m: torch.Tensor, low: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
        nu = low[:, None] + step[:, None] * torch.arange(n, dtype=DTYPE)
        return rician_log_pdf(m[:, None, :], nu[:, :, None], self.sigma[:, None, None]).sum(-1)

    def __call__(self, nu: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """Log-likelihood at ν, shape (n_rows, ...), where row r belongs to voxel ``voxels[r]``."""
        shape = nu.shape
        nu = nu.reshape(shape[0], -1)
        low, high, step = self.low[voxels, None], self.high[voxels, None], self.step[voxels, None]
        inside = torch.minimum(torch.maximum(nu, low), high)
        u = (inside - low) / step
        index = u.floor().clamp(0, self.n_fine - 2).long()
        t = u - index
        c = torch.gather(self.coefficients[voxels], 1, index[..., None].expand(-1, -1, 4))
        value = c[..., 0] + t * (c[..., 1] + t * (c[..., 2] + t * c[..., 3]))
        beyond = nu - inside
        slope = torch.where(beyond > 0, self.slope_high[voxels, None], self.slope_low[voxels, None])
        value = value + slope * beyond - 0.5 * self.curvature[voxels, None] * beyond * beyond
        return value.reshape(shape)
