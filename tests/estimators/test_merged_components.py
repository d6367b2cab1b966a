"""The repair of merged components, its numerical parts: separation in the signals' space, the grid EM of
one or two components, the moves' gains and the S0 quadrature."""

import math

import numpy as np
import pytest
import torch

from varmap.estimators.merged_components import (
    GridComponents, GridProblem, closest_pair, grid_em, grid_log_evidence, grid_nodes, merged_start, pooled,
    s0_quadrature, signal_distributions, split_start,
)

TRUE_MEANS = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)
TRUE_SD = 0.4
NOISE_SD = 0.5


def _voxels(n_voxels: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clusters in two coordinates, each voxel seen through Gaussian noise: latent truth and observation."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n_voxels,), generator=generator)
    truth = TRUE_MEANS[labels] + TRUE_SD * torch.randn(n_voxels, 2, generator=generator, dtype=torch.float64)
    return truth, truth + NOISE_SD * torch.randn(n_voxels, 2, generator=generator, dtype=torch.float64)


def _merged_components() -> GridComponents:
    """What training leaves at low SNR: two components that each span both clusters."""
    pooled_covariance = TRUE_SD**2 * torch.eye(2, dtype=torch.float64) + torch.cov(TRUE_MEANS.T) / 2
    means = torch.stack([torch.tensor([0.05, 0.0]), torch.tensor([-0.05, 0.0])]).double()
    return GridComponents(torch.tensor([0.5, 0.5], dtype=torch.float64), means, torch.stack([pooled_covariance] * 2))


def _grid_likelihood(observed: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    squared = ((observed[:, None, :] - nodes[None]) ** 2).sum(-1)
    log_likelihood = -0.5 * squared / NOISE_SD**2
    return torch.exp(log_likelihood - log_likelihood.max(-1, keepdim=True).values).float()


def test_signal_distributions_tell_apart_only_components_whose_signals_differ():
    """Two components that predict the same observables (here: a map that forgets the second latent
    coordinate) lie 0 apart whatever their parameters; a third that predicts other signals lies far."""
    def moments(z):
        observed = torch.stack([torch.exp(-z[:, 0]), torch.exp(-2.0 * z[:, 0])], -1)
        return observed, torch.full_like(observed, 0.01**2)

    means = torch.tensor([[0.5, -3.0], [0.5, 3.0], [1.5, 0.0]], dtype=torch.float64)
    scale_tril = 0.05 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    distributions = signal_distributions(moments, means, scale_tril, 4000, torch.Generator().manual_seed(0))
    distance, i, j = closest_pair(distributions)
    assert (i, j) == (0, 1) and distance < 0.01
    from varmap.estimators.priors import bhattacharyya_distance
    assert bhattacharyya_distance(*distributions[0], *distributions[2]) > 10.0


def test_grid_em_separates_a_merged_pair_and_raises_its_evidence():
    truth, observed = _voxels()
    merged = _merged_components()
    nodes, cell, floor = grid_nodes(merged, 64, 4.0)
    likelihood = _grid_likelihood(observed, nodes)
    weights = torch.ones(len(observed), dtype=torch.float64)
    before = grid_log_evidence(likelihood, weights, merged, nodes, cell)
    fitted = grid_em(likelihood, weights, nodes, cell, split_start(merged), floor)
    assert fitted.log_evidence > before + 0.05
    order = torch.argsort(fitted.components.means[:, 0])
    assert torch.allclose(fitted.components.means[order], TRUE_MEANS, atol=0.08)
    spreads = fitted.components.covariances[order].diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.allclose(spreads, torch.full_like(spreads, TRUE_SD), rtol=0.15)
    assert torch.allclose(fitted.components.weights, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=0.05)
    # EM from the merged pair itself climbs too, but more slowly: the split start ends at least as high
    from_merged = grid_em(likelihood, weights, nodes, cell, merged, floor, max_steps=50)
    assert before < from_merged.log_evidence <= fitted.log_evidence + 1e-6


def test_grid_em_keeps_covariances_diagonal_on_request():
    _, observed = _voxels(n_voxels=1000, seed=1)
    merged = _merged_components()
    nodes, cell, floor = grid_nodes(merged, 48, 4.0)
    likelihood = _grid_likelihood(observed, nodes)
    fitted = grid_em(likelihood, torch.ones(len(observed), dtype=torch.float64), nodes, cell,
                     split_start(merged), floor, diagonal=True, max_steps=100)
    off_diagonal = fitted.components.covariances[:, 0, 1]
    assert torch.all(off_diagonal == 0.0) and fitted.n_steps <= 100


def test_voxel_weights_count_only_their_share_of_the_pair():
    """A voxel with no share of the pair does not move it: adding such voxels leaves the fit unchanged."""
    _, observed = _voxels(n_voxels=800, seed=2)
    merged = _merged_components()
    nodes, cell, floor = grid_nodes(merged, 40, 4.0)
    outsiders = torch.full((200, 2), 2.5, dtype=torch.float64)
    likelihood = _grid_likelihood(torch.cat([observed, outsiders]), nodes)
    weights = torch.cat([torch.ones(800), torch.zeros(200)]).double()
    with_outsiders = grid_em(likelihood, weights, nodes, cell, split_start(merged), floor, max_steps=30)
    alone = grid_em(likelihood[:800], weights[:800], nodes, cell, split_start(merged), floor, max_steps=30)
    assert torch.allclose(with_outsiders.components.means, alone.components.means, atol=1e-5)


def test_grid_spans_the_pair_and_its_floor_is_a_cell_variance():
    merged = _merged_components()
    nodes, cell, floor = grid_nodes(merged, 11, 3.0)
    assert nodes.shape == (121, 2)
    steps = nodes.max(0).values - nodes.min(0).values
    assert cell == pytest.approx(float((steps / 10).prod()))
    assert torch.allclose(floor.diagonal(), (steps / 10) ** 2 / 12)


def test_split_start_keeps_the_pairs_mean_and_covariance():
    merged = _merged_components()
    split = split_start(merged)
    mean = split.weights @ split.means
    offsets = split.means - mean
    covariance = (split.covariances + offsets[:, :, None] * offsets[:, None, :]).mean(0)
    pooled_mean = merged.weights @ merged.means
    pooled_offsets = merged.means - pooled_mean
    pooled_covariance = (merged.covariances + pooled_offsets[:, :, None] * pooled_offsets[:, None, :]).mean(0)
    assert torch.allclose(mean, pooled_mean) and torch.allclose(covariance, pooled_covariance)
    assert torch.all(torch.linalg.eigvalsh(split.covariances) > 0)


def test_s0_quadrature_integrates_against_the_prior():
    """Weights sum to the prior's mass near the voxel's posterior; a likelihood linear in S0 integrates
    exactly where the proposal is the prior."""
    prior_mean, prior_variance = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.09, dtype=torch.float64)
    posterior_mean = torch.tensor([0.2], dtype=torch.float64)
    posterior_sd = torch.tensor([0.3 / 1.5], dtype=torch.float64)
    nodes, log_weights = s0_quadrature(posterior_mean, posterior_sd, prior_mean, prior_variance)
    weights = log_weights.exp()
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float((weights * (2.0 + 3.0 * nodes)).sum()) == pytest.approx(2.0 + 3.0 * 0.2)
    # a voxel far out in the prior's tail gets a small total weight
    far, far_log_weights = s0_quadrature(torch.tensor([2.0]).double(), torch.tensor([0.01]).double(), prior_mean,
                                         prior_variance)
    assert float(far_log_weights.exp().sum()) < 1e-6 and math.isfinite(float(far_log_weights.sum()))


def _problem(observed: torch.Tensor, learned: GridComponents, prior_share: float) -> GridProblem:
    nodes, cell, floor = grid_nodes(learned, 48, 4.0)
    zero = torch.zeros(1, dtype=torch.float64)
    return GridProblem(_grid_likelihood(observed, nodes), torch.ones(len(observed), dtype=torch.float64), nodes,
                       cell, floor, learned, prior_share, zero, torch.ones(1, 1, dtype=torch.float64), False)


def test_merge_and_split_gains_where_two_components_share_one_cluster_and_one_spans_two():
    """A pair of components on one cluster loses little when merged; one component across two clusters
    gains much when split: the move's net gain is positive, and the split lands on the clusters.  Merging
    a pair on two clusters costs more than splitting one cluster gains."""
    _, observed = _voxels()
    generator = torch.Generator().manual_seed(5)
    third = torch.tensor([2.5, 2.5], dtype=torch.float64) + (TRUE_SD**2 + NOISE_SD**2) ** 0.5 * torch.randn(
        1000, 2, generator=generator, dtype=torch.float64)
    spread = TRUE_SD**2 * torch.eye(2, dtype=torch.float64)
    duplicates = GridComponents(torch.tensor([0.5, 0.5], dtype=torch.float64),
                                torch.tensor([[2.45, 2.5], [2.55, 2.5]], dtype=torch.float64), torch.stack([spread] * 2))
    across = merged_start(_merged_components())
    pair, single = _problem(third, duplicates, 0.25), _problem(observed, across, 0.75)
    merged = pair.fit(merged_start(duplicates))
    split = single.fit(split_start(across))
    assert merged.components.weights.shape == (1,) and -2.0 < pair.gain(merged)
    assert single.gain(split) > 100.0
    order = torch.argsort(split.components.means[:, 0])
    assert torch.allclose(split.components.means[order], TRUE_MEANS, atol=0.1)
    # the other way round: merging the two clusters' pair costs more than splitting one cluster gains
    clusters = GridComponents(torch.tensor([0.5, 0.5], dtype=torch.float64), TRUE_MEANS, torch.stack([spread] * 2))
    two = _problem(observed, clusters, 0.75)
    one = _problem(third, merged_start(duplicates), 0.25)
    assert two.gain(two.fit(merged_start(clusters))) + one.gain(one.fit(split_start(merged_start(duplicates)))) < -100.0


def test_merged_start_is_the_components_moment_matched_gaussian():
    components = _merged_components()
    merged = merged_start(components)
    mean, covariance = pooled(components)
    assert merged.weights.tolist() == [1.0]
    assert torch.allclose(merged.means[0], mean) and torch.allclose(merged.covariances[0], covariance)


def test_grid_problem_gain_is_the_evidence_added_over_the_learned_components():
    _, observed = _voxels(n_voxels=500, seed=3)
    learned = _merged_components()
    problem = _problem(observed, learned, 1.0)
    fit = problem.fit(split_start(learned))
    before = grid_log_evidence(problem.likelihood, problem.voxel_weights, learned, problem.nodes, problem.cell)
    assert problem.gain(fit) == pytest.approx((fit.log_evidence - before) * 500)
    assert problem.gain(problem.fit(learned)) >= 0.0
