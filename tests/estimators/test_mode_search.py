"""Newton mode search: exact on quadratics, descends on non-convex densities, batched over voxels and starts."""

import torch

from varmap.estimators.mode_search import find_modes


def test_quadratic_modes_and_curvature_are_exact_in_one_step():
    generator = torch.Generator().manual_seed(0)
    n_voxels, n_latent = 50, 3
    centres = torch.randn(n_voxels, n_latent, generator=generator, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(n_voxels, n_latent, n_latent, generator=generator, dtype=torch.float64))[0]
    scales = 10.0 ** torch.empty(n_voxels, n_latent, dtype=torch.float64).uniform_(-2, 4, generator=generator)
    precision = basis @ torch.diag_embed(scales) @ basis.transpose(-1, -2)

    def negative_log_density(z):
        diff = z - centres
        return 0.5 * torch.einsum("...bi,bij,...bj->...b", diff, precision, diff)

    start = torch.randn(2, n_voxels, n_latent, generator=generator, dtype=torch.float64)
    modes, values, curvatures, axes = find_modes(negative_log_density, start, n_steps=1)
    torch.testing.assert_close(modes, centres.expand_as(modes))
    torch.testing.assert_close(values, torch.zeros_like(values))
    torch.testing.assert_close(axes @ torch.diag_embed(curvatures) @ axes.transpose(-1, -2), precision.expand(2, -1, -1, -1))


def test_descends_from_negative_curvature_and_never_increases():
    """Double well (z² - 1)² per coordinate: from near the local maximum at 0, reaches a minimum at ±1."""
    start = torch.tensor([[[0.1, -0.2], [2.5, 0.9]]], dtype=torch.float64)  # (M=1, B=2, L=2)

    def negative_log_density(z):
        return ((z**2 - 1.0) ** 2).sum(-1)

    before = negative_log_density(start)
    modes, values, curvatures, _ = find_modes(negative_log_density, start, n_steps=20)
    torch.testing.assert_close(values, negative_log_density(modes))
    assert torch.all(negative_log_density(modes) <= before)
    torch.testing.assert_close(modes.abs(), torch.ones_like(modes), atol=1e-6, rtol=0)
    torch.testing.assert_close(curvatures, torch.full_like(curvatures, 8.0), atol=1e-4, rtol=0)


def test_a_start_where_the_density_is_not_finite_stays_put():
    start = torch.tensor([[[0.0], [-1.0]]], dtype=torch.float64)

    def negative_log_density(z):
        return torch.where(z[..., 0] < 0, torch.inf, (z[..., 0] - 1.0) ** 2)

    modes, _, _, _ = find_modes(negative_log_density, start, n_steps=5)
    assert abs(modes[0, 0, 0].item() - 1.0) < 1e-9
    assert modes[0, 1, 0].item() == -1.0
