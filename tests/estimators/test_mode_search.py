"""Newton mode search: exact on quadratics, descends on non-convex densities, batched over voxels and starts,
keeps each voxel's best start and stops once every point has converged."""

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
    assert modes.shape == (n_voxels, n_latent) and values.shape == (n_voxels,)
    torch.testing.assert_close(modes, centres)
    torch.testing.assert_close(values, torch.zeros_like(values))
    torch.testing.assert_close(axes @ torch.diag_embed(curvatures) @ axes.transpose(-1, -2), precision)


def test_descends_from_negative_curvature_and_never_increases():
    """Double well (z² - 1)² per coordinate: from near the local maximum at 0, reaches a minimum at ±1."""
    start = torch.tensor([[[0.1, -0.2], [2.5, 0.9]]], dtype=torch.float64)  # (M=1, B=2, L=2)

    def negative_log_density(z):
        return ((z**2 - 1.0) ** 2).sum(-1)

    before = negative_log_density(start)
    modes, values, curvatures, _ = find_modes(negative_log_density, start, n_steps=20)
    torch.testing.assert_close(values, negative_log_density(modes))
    assert torch.all(negative_log_density(modes) <= before)
    # converged to a thousandth of the Laplace spread (1/√8) at most
    torch.testing.assert_close(modes.abs(), torch.ones_like(modes), atol=4e-4, rtol=0)
    torch.testing.assert_close(curvatures, torch.full_like(curvatures, 8.0), atol=1e-2, rtol=0)


def test_a_start_where_the_density_is_not_finite_stays_put():
    start = torch.tensor([[[0.0], [-1.0]]], dtype=torch.float64)

    def negative_log_density(z):
        return torch.where(z[..., 0] < 0, torch.inf, (z[..., 0] - 1.0) ** 2)

    modes, _, _, _ = find_modes(negative_log_density, start, n_steps=5)
    assert abs(modes[0, 0].item() - 1.0) < 1e-9
    assert modes[1, 0].item() == -1.0


def test_each_voxel_keeps_the_start_that_reaches_the_lower_minimum():
    """Tilted double well (z² - 1)² + 0.3 z: the minimum near -1 is the lower one; starts near +1 and -1
    in every voxel, in either order, return the one near -1."""
    start = torch.tensor([[[0.9], [-0.9]], [[-0.9], [0.9]]], dtype=torch.float64)  # (M=2, B=2, L=1)

    def negative_log_density(z):
        return ((z**2 - 1.0) ** 2 + 0.3 * z).sum(-1)

    modes, values, _, _ = find_modes(negative_log_density, start, n_steps=10)
    assert modes.shape == (2, 1)
    assert torch.all(modes < -1.0) and torch.all(modes > -1.1)
    torch.testing.assert_close(values, negative_log_density(modes))


def test_stops_once_every_point_has_converged():
    """A quadratic converges in one Newton step: the first gradient, one set of step lengths and the
    gradient there, then no more evaluations however many steps are allowed."""
    calls = []

    def negative_log_density(z):
        calls.append(z.shape)
        return 0.5 * ((z - 2.0) ** 2).sum(-1)

    modes, _, _, _ = find_modes(negative_log_density, torch.zeros(3, 4, 2, dtype=torch.float64), n_steps=50)
    torch.testing.assert_close(modes, torch.full((4, 2), 2.0, dtype=torch.float64))
    assert len(calls) == 3
