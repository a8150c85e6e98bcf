"""Unit tests for lens_steer.analysis on synthetic inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from lens_steer.analysis import (
    alignment_with_direction,
    cosine_by_source,
    direction_logit_lens,
    layer_cosine_matrix,
    pairwise_cosine_stats,
    pca_per_question,
    projection_onto_direction,
    random_direction_control,
    split_half_stability,
    token_overlap,
)

N_Q, N_LAYERS, D = 60, 4, 32


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-question vectors = planted unit direction (per layer) × positive scale + small noise."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(N_LAYERS, D, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    scale = 1.0 + 2.0 * torch.rand(N_Q, 1, 1, generator=g)  # in [1, 3]: variance along dir
    noise = 0.05 * torch.randn(N_Q, N_LAYERS, D, generator=g)
    return scale * dirs[None] + noise, dirs


@pytest.fixture(scope="module")
def pure_noise() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N_Q, N_LAYERS, D, generator=g)


# --- similarity ---------------------------------------------------------------


def test_layer_cosine_matrix_matches_hand_computation() -> None:
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -2.0]])
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, s, 0.0], [s, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(layer_cosine_matrix(dirs), expected)


def test_pairwise_cosine_stats_planted(planted) -> None:
    per_q, dirs = planted
    stats = pairwise_cosine_stats(per_q, layer=2)
    assert stats.layer == 2
    assert stats.pairwise.shape == (N_Q, N_Q)
    assert stats.cos_with_mean.shape == (N_Q,)
    assert stats.mean_pairwise > 0.95
    assert 0 <= stats.std_pairwise < 0.05
    assert stats.cos_with_mean.min() > 0.9  # noise norm ~0.28 vs scale >= 1


def test_pairwise_cosine_stats_hand_computed() -> None:
    per_q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # 3 questions, 1 layer
    stats = pairwise_cosine_stats(per_q, layer=0)
    s = 1 / math.sqrt(2)
    assert stats.mean_pairwise == pytest.approx((0 + s + s) / 3)
    # mean = (2/3, 2/3) ∝ (1, 1)
    torch.testing.assert_close(stats.cos_with_mean, torch.tensor([s, s, 1.0]))


def test_split_half_stability_planted_near_one(planted) -> None:
    per_q, _ = planted
    stab = split_half_stability(per_q, n_splits=20, seed=0)
    assert stab.shape == (N_LAYERS,)
    assert stab.min() > 0.99


def test_split_half_stability_noise_near_zero(pure_noise) -> None:
    stab = split_half_stability(pure_noise, n_splits=50, seed=0)
    assert stab.abs().max() < 0.2


def test_split_half_stability_seeded() -> None:
    x = torch.randn(11, 2, 5, generator=torch.Generator().manual_seed(3))
    a = split_half_stability(x, n_splits=5, seed=7)
    b = split_half_stability(x, n_splits=5, seed=7)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        split_half_stability(x[:1])


def test_cosine_by_source_orthogonal_sources() -> None:
    g = torch.Generator().manual_seed(2)
    d_a = torch.zeros(D)
    d_a[0] = 1.0
    d_b = torch.zeros(D)
    d_b[1] = 1.0
    n_a, n_b = 20, 30
    per_q = torch.cat([d_a.expand(n_a, 1, D), d_b.expand(n_b, 1, D)]).clone()
    per_q = per_q * (1 + torch.rand(n_a + n_b, 1, 1, generator=g)) + 0.05 * torch.randn(
        n_a + n_b, 1, D, generator=g
    )
    sources = ["gsm8k"] * n_a + ["mmlu"] * n_b
    res = cosine_by_source(per_q, sources, layer=0)
    assert res.sources == ["gsm8k", "mmlu"]
    assert res.counts.tolist() == [n_a, n_b]
    assert res.between.shape == (2, 2)
    torch.testing.assert_close(res.between.diagonal(), torch.ones(2))
    assert abs(res.between[0, 1].item()) < 0.05
    assert torch.allclose(res.between, res.between.T)
    assert res.within.min() > 0.95


def test_cosine_by_source_singleton_and_length_check() -> None:
    per_q = torch.randn(3, 1, 4, generator=torch.Generator().manual_seed(0))
    res = cosine_by_source(per_q, ["a", "b", "a"], layer=0)
    assert math.isnan(res.within[1].item())
    with pytest.raises(ValueError):
        cosine_by_source(per_q, ["a", "b"], layer=0)


# --- PCA ------------------------------------------------------------------------


def test_pca_recovers_planted_direction(planted) -> None:
    per_q, dirs = planted
    layer = 1
    pca = pca_per_question(per_q, layer, n_components=5)
    assert pca.components.shape == (5, D)
    assert pca.explained_variance_ratio.shape == (5,)
    assert pca.projections.shape == (N_Q, 5)
    assert pca.mean.shape == (D,)
    assert abs(pca.components[0] @ dirs[layer]).item() > 0.99
    evr = pca.explained_variance_ratio
    assert evr[0] > 0.8 and evr[0] > 10 * evr[1]
    assert torch.all(evr[:-1] >= evr[1:])
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(5), atol=1e-5, rtol=0)
    # sign convention: PC1 points along the mean (CoT) direction
    assert pca.components[0] @ pca.mean > 0
    align = alignment_with_direction(pca, dirs[layer])
    assert align.shape == (5,)
    assert align[0] > 0.99 and align[1:].max() < 0.2


def test_pca_projections_and_total_variance(planted) -> None:
    per_q, _ = planted
    full = pca_per_question(per_q, 0, n_components=D)
    assert full.explained_variance_ratio.sum().item() == pytest.approx(1.0, abs=1e-5)
    xc = per_q[:, 0] - per_q[:, 0].mean(0)
    torch.testing.assert_close(full.projections @ full.components, xc, atol=1e-4, rtol=0)


def test_pca_uncentered_pc1_is_mean_direction(planted) -> None:
    per_q, dirs = planted
    pca = pca_per_question(per_q, 3, n_components=2, center=False)
    assert not pca.centered
    assert pca.components[0] @ dirs[3] > 0.99


def test_pca_sign_deterministic_under_negation_of_noise() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 1, 6, generator=g)
    a = pca_per_question(x, 0, n_components=3)
    b = pca_per_question(x.clone(), 0, n_components=3)
    assert torch.equal(a.components, b.components)
    assert torch.all(a.components @ a.mean >= 0)


# --- logit lens -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lens_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "dirs": torch.randn(3, 16, generator=g),
        "W_U": torch.randn(16, 50, generator=g),
        "b_U": torch.randn(50, generator=g),
        "gamma": 0.5 + torch.rand(16, generator=g),
    }


def test_logit_lens_rms_matches_matmul(lens_inputs) -> None:
    dirs, W_U, gamma = lens_inputs["dirs"], lens_inputs["W_U"], lens_inputs["gamma"]
    vocab = [f"tok{i}" for i in range(50)]
    res = direction_logit_lens(
        dirs, W_U, norm_weight=gamma, norm_kind="rms", k=5, decode=vocab, return_scores=True
    )
    expected = (gamma * dirs) @ W_U
    torch.testing.assert_close(res.scores, expected)
    top = expected.topk(5, dim=-1)
    bottom = expected.topk(5, dim=-1, largest=False)
    assert torch.equal(res.top_ids, top.indices)
    torch.testing.assert_close(res.top_scores, top.values)
    assert torch.equal(res.bottom_ids, bottom.indices)
    assert res.top_tokens[1] == [vocab[i] for i in top.indices[1].tolist()]
    assert res.bottom_tokens[2] == [vocab[i] for i in bottom.indices[2].tolist()]
    assert res.n_layers == 3 and res.k == 5


def test_logit_lens_ranking_invariant_to_scale(lens_inputs) -> None:
    dirs, W_U, gamma = lens_inputs["dirs"], lens_inputs["W_U"], lens_inputs["gamma"]
    a = direction_logit_lens(dirs, W_U, norm_weight=gamma, k=7)
    scaled = dirs * torch.tensor([[0.1], [3.0], [42.0]])
    b = direction_logit_lens(scaled, W_U, norm_weight=gamma, k=7)
    assert torch.equal(a.top_ids, b.top_ids)
    assert torch.equal(a.bottom_ids, b.bottom_ids)


def test_logit_lens_layernorm_centres(lens_inputs) -> None:
    dirs, W_U, gamma = lens_inputs["dirs"], lens_inputs["W_U"], lens_inputs["gamma"]
    res = direction_logit_lens(
        dirs, W_U, norm_weight=gamma, norm_kind="layer", k=4, decode=str, return_scores=True
    )
    expected = (gamma * (dirs - dirs.mean(-1, keepdim=True))) @ W_U
    torch.testing.assert_close(res.scores, expected)
    assert torch.equal(res.top_ids, expected.topk(4, dim=-1).indices)
    assert res.top_tokens[0] == [str(i) for i in res.top_ids[0].tolist()]
    # Adding a constant to every coordinate is invisible to LayerNorm centring.
    shifted = direction_logit_lens(dirs + 5.0, W_U, norm_weight=gamma, norm_kind="layer", k=4)
    assert torch.equal(shifted.top_ids, res.top_ids)


def test_logit_lens_none_bias_and_defaults(lens_inputs) -> None:
    dirs, W_U, b_U, gamma = (lens_inputs[k] for k in ("dirs", "W_U", "b_U", "gamma"))
    res = direction_logit_lens(dirs, W_U, norm_weight=gamma, norm_kind="none", return_scores=True)
    torch.testing.assert_close(res.scores, dirs @ W_U)  # gain ignored for "none"
    assert res.top_tokens[0][0].startswith("<")
    no_gamma = direction_logit_lens(dirs, W_U, norm_weight=None, return_scores=True)
    torch.testing.assert_close(no_gamma.scores, dirs @ W_U)
    biased = direction_logit_lens(dirs, W_U, b_U=b_U, include_bias=True, return_scores=True)
    torch.testing.assert_close(biased.scores, dirs @ W_U + b_U)
    default = direction_logit_lens(dirs, W_U, b_U=b_U)
    assert default.scores is None and not default.include_bias
    with pytest.raises(ValueError):
        direction_logit_lens(dirs, W_U, include_bias=True)
    with pytest.raises(ValueError):
        direction_logit_lens(dirs, W_U, norm_kind="batch")  # type: ignore[arg-type]


def test_random_direction_control(lens_inputs) -> None:
    dirs = lens_inputs["dirs"]
    ctrl = random_direction_control(dirs, seed=0)
    assert ctrl.shape == dirs.shape and ctrl.dtype == dirs.dtype
    torch.testing.assert_close(ctrl.norm(dim=-1), dirs.norm(dim=-1))
    assert torch.equal(ctrl, random_direction_control(dirs, seed=0))
    assert not torch.equal(ctrl, random_direction_control(dirs, seed=1))
    assert layer_cosine_matrix(torch.cat([dirs, ctrl])).diagonal(offset=3).abs().max() < 0.9


def test_token_overlap(lens_inputs) -> None:
    dirs, W_U = lens_inputs["dirs"], lens_inputs["W_U"]
    a = direction_logit_lens(dirs, W_U, k=5)
    assert torch.equal(token_overlap(a, a), torch.ones(3))
    neg = direction_logit_lens(-dirs, W_U, k=5)
    assert torch.equal(token_overlap(a, neg), torch.zeros(3))  # top of -v is bottom of v
    assert torch.equal(token_overlap(a, neg, which="bottom"), torch.zeros(3))


# --- trace ----------------------------------------------------------------------


def test_projection_onto_direction() -> None:
    resid = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    direction = torch.tensor([0.0, 10.0])
    expected = torch.tensor([4.0, 0.0, -2.0])
    torch.testing.assert_close(projection_onto_direction(resid, direction), expected)
    with pytest.raises(ValueError):
        projection_onto_direction(resid, torch.zeros(2))
