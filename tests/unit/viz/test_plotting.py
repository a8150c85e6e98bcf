"""Unit tests for lens_steer.viz.plotting: expected traces, names and no file output."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from lens_steer.analysis import (
    TokenSet,
    cosine_by_source,
    direction_logit_lens,
    layer_cosine_matrix,
    pca_per_question,
    random_direction_control,
    split_half_stability,
    token_set_lens,
)
from lens_steer.analysis.trace import AblationCondition, AblationResult, TraceResult
from lens_steer.viz.plotting import (
    TEMPLATE,
    plot_ablation,
    plot_explained_variance,
    plot_layer_cosine,
    plot_logit_lens,
    plot_pca_scatter,
    plot_projection_trace,
    plot_source_cosine,
    plot_split_half,
    plot_sweep_heatmap,
    plot_token_set_lens,
    plot_trace,
)
from lens_steer.viz.plotting_common import FONT_PX, MIN_FONT_PX

N_Q, N_LAYERS, D = 12, 3, 8


@pytest.fixture(scope="module")
def per_q() -> torch.Tensor:
    return torch.randn(N_Q, N_LAYERS, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def sources() -> list[str]:
    return ["gsm8k"] * 5 + ["mmlu"] * 4 + ["bbl"] * 3


def _types(fig: go.Figure) -> list[str]:
    return [t.type for t in fig.data]


def test_plot_layer_cosine(per_q) -> None:
    fig = plot_layer_cosine(layer_cosine_matrix(per_q.mean(0)), title="T")
    assert isinstance(fig, go.Figure)
    assert _types(fig) == ["heatmap"]
    assert len(fig.data[0].z) == N_LAYERS
    assert fig.layout.title.text == "T"
    assert fig.layout.xaxis.title.text == "layer"


def test_plot_split_half(per_q) -> None:
    stab = split_half_stability(per_q, n_splits=3, seed=0)
    assert _types(plot_split_half(stab)) == ["scatter"]
    norms = per_q.mean(0).norm(dim=-1)
    fig = plot_split_half(stab, norms=norms, resid_norms=norms * 10)
    assert [t.name for t in fig.data] == ["split-half cosine", "‖v‖", "‖v‖ / ‖resid‖"]
    assert list(fig.data[2].y) == pytest.approx([0.1] * N_LAYERS)


def test_plot_source_cosine(per_q, sources) -> None:
    fig = plot_source_cosine(cosine_by_source(per_q, sources, layer=1))
    assert _types(fig) == ["heatmap"]
    assert list(fig.data[0].x) == ["gsm8k (n=5)", "mmlu (n=4)", "bbl (n=3)"]
    assert "layer 1" in fig.layout.title.text


def test_plot_pca_scatter_one_trace_per_source(per_q, sources) -> None:
    pca = pca_per_question(per_q, 0, n_components=4)
    questions = [f"<b>Question</b> {i} " + "word " * 100 for i in range(N_Q)]
    fig = plot_pca_scatter(pca, sources, questions)
    assert _types(fig) == ["scatter"] * 3
    assert [t.name for t in fig.data] == ["gsm8k", "mmlu", "bbl"]
    assert [len(t.x) for t in fig.data] == [5, 4, 3]
    hover = fig.data[0].hovertext[0]
    # wrapped, truncated, HTML-escaped
    assert "<br>" in hover and "…" in hover and "&lt;b&gt;" in hover
    assert fig.layout.xaxis.title.text.startswith("PC1")
    assert fig.layout.template == TEMPLATE
    assert _types(plot_pca_scatter(pca, sources)) == ["scatter"] * 3
    with pytest.raises(ValueError):
        plot_pca_scatter(pca, sources[:-1])


def test_plot_explained_variance(per_q) -> None:
    fig = plot_explained_variance(pca_per_question(per_q, 2, n_components=4))
    assert _types(fig) == ["bar", "scatter"]
    assert list(fig.data[0].x) == ["PC1", "PC2", "PC3", "PC4"]
    assert fig.data[1].y[-1] <= 1.0 + 1e-6


def test_plot_logit_lens_with_and_without_control(per_q) -> None:
    dirs = per_q.mean(0)
    W_U = torch.randn(D, 30, generator=torch.Generator().manual_seed(1))
    vocab = [f" t{i}" for i in range(29)] + ["<s>\n"]
    res = direction_logit_lens(dirs, W_U, k=4, decode=vocab)
    fig = plot_logit_lens(res)
    assert _types(fig) == ["heatmap"]
    assert len(fig.data[0].text) == N_LAYERS and len(fig.data[0].text[0]) == 4
    assert all("␣" in cell or "&lt;" in cell for row in fig.data[0].text for cell in row)
    ctrl = direction_logit_lens(random_direction_control(dirs, seed=0), W_U, k=4, decode=vocab)
    fig2 = plot_logit_lens(res, layers=[0, 2], control=ctrl, which="bottom")
    assert _types(fig2) == ["heatmap", "heatmap"]
    assert list(fig2.data[0].y) == ["0", "2"]
    assert fig2.data[0].coloraxis == fig2.data[1].coloraxis
    assert [a.text for a in fig2.layout.annotations] == ["CoT direction", "random control"]


def test_logit_lens_tokens_have_no_control_characters() -> None:
    dirs = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    W_U = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    vocab = ["\f", "a\x00", "\x7f", " <b>", "\x85\"'"]
    fig = plot_logit_lens(direction_logit_lens(dirs, W_U, k=5, decode=vocab))
    cells = [t for row in fig.data[0].text for t in row]
    # quotes stay as they are: plotly.js draws &quot; literally
    assert sorted(set(cells)) == sorted({"␌", "a␀", "␡", "␣&lt;b&gt;", "\\x85\"'"})
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for t in cells for c in t)


def test_plot_projection_trace() -> None:
    fig = plot_projection_trace(
        ["a", " b", "c"], torch.tensor([0.0, 1.0, 2.0]), ["x"], torch.tensor([5.0])
    )
    assert _types(fig) == ["scatter", "scatter"]
    assert [t.name for t in fig.data] == ["CoT prompt", "direct prompt"]
    assert list(fig.data[0].customdata) == ["a", "␣b", "c"]
    with pytest.raises(ValueError):
        plot_projection_trace(["a"], torch.zeros(2), ["x"], torch.zeros(1))


def test_plot_sweep_heatmap() -> None:
    values = torch.tensor([[0.1, 0.2, float("nan")], [0.3, 0.4, 0.5]])
    fig = plot_sweep_heatmap([4, 8], [-1.0, 0.5, 2], values, "accuracy")
    assert _types(fig) == ["heatmap"]
    assert list(fig.data[0].x) == ["-1", "0.5", "2"]
    assert fig.data[0].text[0][2] == ""
    assert fig.data[0].colorbar.title.text == "accuracy"
    with pytest.raises(ValueError):
        plot_sweep_heatmap([4], [1.0], values, "accuracy")


def _trace(style: str, n_prompt: int, n_resp: int) -> TraceResult:
    n = n_prompt + n_resp
    return TraceResult(question="q", style=style, layer=3, token_ids=list(range(n)),
                       tokens=[f"t{i}" for i in range(n)], projections=torch.arange(n, dtype=torch.float32),
                       n_prompt=n_prompt, response="r", stopped=True)


def test_plot_trace_aligns_at_response_start() -> None:
    cot, direct = _trace("cot", 5, 4), _trace("direct", 3, 2)
    fig = plot_trace([cot, direct])
    assert _types(fig) == ["scatter", "scatter"]
    assert [t.name for t in fig.data] == ["cot prompt (4 tokens)", "direct prompt (2 tokens)"]
    assert list(fig.data[0].x) == list(range(-5, 4)) and list(fig.data[1].x) == list(range(-3, 2))
    assert list(fig.data[0].y) == list(range(9))
    assert "layer 3" in fig.layout.title.text
    short = plot_trace([cot, direct], labels=["a", "b"], prompt_tokens=2)
    assert list(short.data[0].x) == list(range(-2, 4)) and list(short.data[0].y) == list(range(3, 9))
    assert list(short.data[0].customdata) == [f"t{i}" for i in range(3, 9)]
    assert list(plot_trace([cot], prompt_tokens=0).data[0].x) == list(range(0, 4))
    with pytest.raises(ValueError):
        plot_trace([cot], labels=["a", "b"])
    with pytest.raises(ValueError):
        plot_trace([])


def test_plot_ablation() -> None:
    def cond(name, n_tokens, cot):
        return AblationCondition(name, ["r"] * len(n_tokens), n_tokens, cot, [True] * len(n_tokens),
                                 [name == "ablated", False])

    res = AblationResult(
        layers=list(range(30)), question_ids=["a", "b"], questions=["qa", "qb"],
        conditions={"baseline": cond("baseline", [100, 80], [True, True]),
                    "ablated": cond("ablated", [10, 20], [False, False]),
                    "random": cond("random", [90, 80], [True, False])},
        max_new_tokens=128, control_seed=0,
    )
    fig = plot_ablation(res)
    assert _types(fig) == ["bar", "bar", "bar"]
    assert list(fig.data[0].x) == ["baseline", "ablated", "random"]
    assert list(fig.data[0].y) == [90.0, 15.0, 85.0]
    assert list(fig.data[1].y) == [1.0, 0.0, 0.5]
    assert list(fig.data[2].y) == [0.0, 0.5, 0.0]
    assert list(fig.data[0].error_y.array) == pytest.approx([10.0, 5.0, 5.0])
    assert "layers 0–29" in fig.layout.title.text and "n=2" in fig.layout.title.text


def test_plotting_writes_no_files(tmp_path, monkeypatch, per_q) -> None:
    monkeypatch.chdir(tmp_path)
    plot_layer_cosine(layer_cosine_matrix(per_q.mean(0)))
    plot_sweep_heatmap([0], [1.0], [[0.5]], "acc")
    assert list(tmp_path.iterdir()) == []


def test_plot_token_set_lens(per_q) -> None:
    dirs = per_q.mean(0)
    W_U = torch.randn(D, 30, generator=torch.Generator().manual_seed(1))
    ts = TokenSet(groups=("step markers", "answer markers"), texts=(" step", "1", " The"), ids=(3, 4, 20),
                  group_of=(0, 0, 1))
    res = token_set_lens(dirs, W_U, ts, generator=torch.Generator().manual_seed(0), n_random=40)
    fig = plot_token_set_lens(res)
    assert _types(fig) == ["scatter"] * 16  # 2 metrics x 2 groups x (band edge, band, random mean, direction)
    names = [t.name for t in fig.data[:8]]
    assert names == [None, "step markers: random directions 5%–95%", "step markers: random mean",
                     "step markers: CoT direction", None, "answer markers: random directions 5%–95%",
                     "answer markers: random mean", "answer markers: CoT direction"]
    low, mean, high = res.band("score")
    assert list(fig.data[0].y) == pytest.approx(high[:, 0].tolist()) and fig.data[0].showlegend is False
    assert fig.data[1].fill == "tonexty" and list(fig.data[1].y) == pytest.approx(low[:, 0].tolist())
    assert list(fig.data[2].y) == pytest.approx(mean[:, 0].tolist())
    assert list(fig.data[3].y) == pytest.approx(res.group_scores[:, 0].tolist())
    assert list(fig.data[3].x) == list(range(N_LAYERS))
    assert "␣step: " in fig.data[3].text[0] and "(rank " in fig.data[3].text[0]
    ranks = fig.data[8:]
    assert list(ranks[7].y) == pytest.approx(res.group_ranks[:, 1].tolist())
    assert not any(t.showlegend for t in ranks) and all(t.yaxis == "y2" for t in ranks)
    assert fig.layout.yaxis2.type == "log" and fig.layout.yaxis2.autorange == "reversed"
    assert fig.layout.xaxis2.title.text == "layer" and "30 tokens" in fig.layout.annotations[1].text
    assert fig.layout.template == TEMPLATE
    assert _types(plot_token_set_lens(res, metrics=("rank",))) == ["scatter"] * 8
    with pytest.raises(ValueError):
        plot_token_set_lens(res, metrics=())


def test_template_sets_readable_font_sizes() -> None:
    layout = TEMPLATE.layout
    assert layout.font.size == FONT_PX >= MIN_FONT_PX
    assert min(layout.title.font.size, layout.legend.font.size, layout.annotationdefaults.font.size) >= MIN_FONT_PX
    assert layout.uniformtext.minsize == MIN_FONT_PX  # bar text is never shrunk below it
    assert all(h.textfont.size >= MIN_FONT_PX for h in TEMPLATE.data.heatmap)  # no auto-shrunk cell text
