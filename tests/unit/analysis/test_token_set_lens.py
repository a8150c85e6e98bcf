"""Token-set logit lens on the tiny model and on synthetic inputs with known answers."""

from __future__ import annotations

import pytest
import torch

from lens_steer.analysis import (
    DEFAULT_TOKEN_GROUPS,
    DroppedToken,
    TokenSet,
    random_directions,
    resolve_token_set,
    token_set_lens,
)
from lens_steer.models import final_norm, unembedding


def _encode(tok):
    return lambda text: tok.encode(text, add_special_tokens=False)


def test_default_groups_on_a_character_vocabulary(tiny) -> None:
    w_u, _ = unembedding(tiny)
    ts = resolve_token_set(DEFAULT_TOKEN_GROUPS, _encode(tiny.tokenizer), w_u.shape[1])
    assert ts.groups == ("step numerals",)  # every step or answer marker is several characters
    assert ts.texts == ("1", "2", "3") and ts.members("step numerals") == ["1", "2", "3"]
    assert list(ts.ids) == [tiny.tokenizer.convert_tokens_to_ids(c) for c in "123"]
    assert ts.group_of == (0, 0, 0)
    dropped = {d.text: d for d in ts.dropped}
    assert set(dropped) == {t for g in DEFAULT_TOKEN_GROUPS.values() for t in g} - {"1", "2", "3"}
    assert dropped[" step"] == DroppedToken("step markers", " step", dropped[" step"].reason)
    assert dropped[" step"].reason.startswith("not one token: encodes to 5 ids")
    assert dropped[" The"].group == "answer markers"


def test_resolve_drops_duplicates_and_ids_outside_the_unembedding() -> None:
    vocab = {"a": 0, "b": 1, "c": 7}

    def encode(text: str) -> list[int]:
        return [vocab.get(ch, 9) for ch in text]

    ts = resolve_token_set({"g1": ("a", "ab", "c"), "g2": ("b", "a"), "g3": ("zz",)}, encode, d_vocab=5)
    assert ts.groups == ("g1", "g2") and ts.texts == ("a", "b") and ts.group_of == (0, 1)
    reasons = {d.text: d.reason for d in ts.dropped}
    assert reasons["ab"] == "not one token: encodes to 2 ids [0, 1]"
    assert reasons["c"] == "id 7 is outside the unembedding (5)"
    assert reasons["a"] == "same id 0 as 'a'" and [d.group for d in ts.dropped if d.text == "a"] == ["g2"]
    assert reasons["zz"].startswith("not one token")
    with pytest.raises(ValueError, match="none of the tokens of g3 is a single token"):
        resolve_token_set({"g3": ("zz",)}, encode, d_vocab=5)


def test_a_tokens_own_unembedding_column_ranks_it_first(tiny) -> None:
    w_u, _ = unembedding(tiny)
    gain, kind = final_norm(tiny)
    ts = resolve_token_set({"digits": tuple("0123"), "letters": ("a", "b")}, _encode(tiny.tokenizer), w_u.shape[1])
    # Layer l's direction is token l's unembedding column (divided by the final norm's gain).
    dirs = torch.stack([w_u[:, i] / gain for i in ts.ids[:4]])
    res = token_set_lens(dirs, w_u, ts, generator=torch.Generator().manual_seed(0), norm_weight=gain,
                         norm_kind=kind, n_random=8)
    assert torch.equal(res.ranks.diagonal(), torch.ones(4, dtype=res.ranks.dtype))
    expected = (dirs * gain) @ w_u
    torch.testing.assert_close(res.scores, expected[:, list(ts.ids)])
    torch.testing.assert_close(res.group_scores[:, 0], expected[:, list(ts.ids[:4])].mean(-1))
    torch.testing.assert_close(res.group_scores[:, 1], expected[:, list(ts.ids[4:])].mean(-1))
    # Rank = position in the descending sort of the whole vocabulary (no ties in float scores).
    order = expected.argsort(dim=-1, descending=True)
    pos = order.argsort(dim=-1) + 1
    assert torch.equal(res.ranks, pos[:, list(ts.ids)])
    geometric = pos[:, list(ts.ids[4:])].double().log().mean(-1).exp().float()
    torch.testing.assert_close(res.group_ranks[:, 1], geometric)
    assert res.n_layers == 4 and res.n_random == 8 and res.d_vocab == w_u.shape[1] and res.norm_kind == kind


@pytest.fixture(scope="module")
def synthetic():
    g = torch.Generator().manual_seed(3)
    dirs, w_u = torch.randn(3, 12, generator=g), torch.randn(12, 40, generator=g)
    gamma = 0.5 + torch.rand(12, generator=g)
    ts = TokenSet(groups=("x", "y"), texts=("t5", "t9", "t30"), ids=(5, 9, 30), group_of=(0, 0, 1))
    return dirs, w_u, gamma, ts


def test_band_is_the_random_directions_quantiles(synthetic) -> None:
    dirs, w_u, gamma, ts = synthetic
    res = token_set_lens(dirs, w_u, ts, generator=torch.Generator().manual_seed(11), norm_weight=gamma,
                         n_random=50, quantiles=(0.1, 0.9))
    draws = random_directions(dirs, 50, torch.Generator().manual_seed(11))  # the same draws
    torch.testing.assert_close(draws.norm(dim=-1), dirs.norm(dim=-1).expand(50, 3))
    scores = (draws * gamma) @ w_u  # [draw, layer, vocab]
    group = torch.stack([scores[..., [5, 9]].mean(-1), scores[..., 30]], dim=-1)
    low, mean, high = res.band("score")
    torch.testing.assert_close(low, group.quantile(0.1, dim=0))
    torch.testing.assert_close(high, group.quantile(0.9, dim=0))
    torch.testing.assert_close(mean, group.mean(0))
    assert torch.all(low <= mean) and torch.all(mean <= high)
    inside = ((group >= low) & (group <= high)).float().mean()
    assert 0.75 <= inside <= 0.85  # 10 % below, 10 % above (up to interpolation at the ends)
    ranks = (scores.argsort(-1, descending=True).argsort(-1) + 1).float()
    rank_group = torch.stack([(ranks[..., 5] * ranks[..., 9]).sqrt(), ranks[..., 30]], dim=-1)  # geometric means
    r_low, r_mean, r_high = res.band("rank")
    torch.testing.assert_close(r_mean, rank_group.mean(0))
    torch.testing.assert_close(r_high, rank_group.quantile(0.9, dim=0))
    assert torch.equal(res.group_values("rank"), res.group_ranks)


def test_scores_and_band_scale_with_the_norm_ranks_do_not(synthetic) -> None:
    dirs, w_u, gamma, ts = synthetic
    a = token_set_lens(dirs, w_u, ts, generator=torch.Generator().manual_seed(0), norm_weight=gamma, n_random=20)
    b = token_set_lens(4.0 * dirs, w_u, ts, generator=torch.Generator().manual_seed(0), norm_weight=gamma,
                       n_random=20)
    torch.testing.assert_close(b.group_scores, 4.0 * a.group_scores)
    torch.testing.assert_close(b.band("score")[2], 4.0 * a.band("score")[2])
    assert torch.equal(a.ranks, b.ranks) and torch.equal(a.random_group_ranks, b.random_group_ranks)
    c = token_set_lens(dirs, w_u, ts, generator=torch.Generator().manual_seed(1), norm_weight=gamma, n_random=20)
    assert torch.equal(a.group_scores, c.group_scores) and not torch.equal(a.band("score")[0], c.band("score")[0])


def test_token_set_lens_rejects_bad_input(synthetic) -> None:
    dirs, w_u, _, ts = synthetic
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="outside the unembedding"):
        token_set_lens(dirs, w_u[:, :20], ts, generator=gen)
    with pytest.raises(ValueError, match="n must be at least 1"):
        token_set_lens(dirs, w_u, ts, generator=gen, n_random=0)
    with pytest.raises(ValueError, match="quantiles"):
        token_set_lens(dirs, w_u, ts, generator=gen, quantiles=(0.9, 0.1))
    res = token_set_lens(dirs, w_u, ts, generator=gen, n_random=2, norm_kind="none")
    with pytest.raises(ValueError, match="metric"):
        res.band("logit")  # type: ignore[arg-type]
