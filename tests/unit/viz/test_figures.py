"""``lens-steer figures`` end to end through main([...]) on the tiny model, and the figure builders on its analysis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lens_steer.analysis.paper import paper_analysis
from lens_steer.cli import main
from lens_steer.method.vectors import SteeringVector
from lens_steer.viz.figure_io import export_pngs, find_png_backend, write_html
from lens_steer.viz.figures import FigureSpec, paper_figures

BASE_FIGURES = {
    "layer_cosine", "split_half", "source_cosine", "pca_scatter", "pca_variance",
    "logit_lens", "logit_lens_top", "logit_lens_bottom", "projection_trace",
}
HTML_ONLY = {"logit_lens_top", "logit_lens_bottom"}  # token tables: interactive only
ALL_FIGURES = BASE_FIGURES | {"ablation_all", "ablation_layer2"}  # default ablations: every layer, --layer
STRUCTURE = ["layer_cosine", "split_half", "source_cosine", "pca_scatter", "pca_variance"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NO_CHROMIUM_NOTE = Path(sys.prefix) / ".lens_steer-no-chromium"  # written by `make setup` (tests/setup_chromium.sh)


def png_skip_reason() -> str:
    """Why PNG export cannot run here, with the set-up's reason when it could not install a Chromium."""
    reason = f"no PNG backend: {find_png_backend().reason}"
    if NO_CHROMIUM_NOTE.is_file():
        reason += f" (make setup: no Chromium: {NO_CHROMIUM_NOTE.read_text().strip()})"
    return reason


needs_png = pytest.mark.skipif(not find_png_backend().available, reason=png_skip_reason())


@pytest.fixture(scope="module")
def vector_dir(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fq") / "questions.jsonl"
    rows = [("What is 1+1?", "arith"), ("Name a fruit.", "trivia"), ("What is 3*4?", "arith"),
            ("Why is the sky blue?", "trivia"), ("What is 10-7?", "arith")]
    path.write_text("\n".join(json.dumps({"question": q, "source": s}) for q, s in rows) + "\n")
    out = tmp_path_factory.mktemp("fvec") / "v"
    assert main(["derive", "--model", str(tiny_dir), "--questions", str(path), "--out", str(out),
                 "--max-new-tokens", "6", "--no-progress"]) == 0
    return out


def _figures(vector_dir, out, *extra: str) -> int:
    return main(["figures", "--vector", str(vector_dir), "--out", str(out), "--layer", "2",
                 "--max-new-tokens", "5", "--n-splits", "10", "--no-progress", *extra])


def test_figures_cli_html_only(vector_dir, tmp_path, capsys):
    out = tmp_path / "fig"
    assert _figures(vector_dir, out, "--ablation-questions", "2", "--no-png") == 0
    assert {p.stem for p in out.glob("*.html")} == ALL_FIGURES
    assert not list(out.glob("*.png"))
    assert (out / "plotly.min.js").is_file()
    for html in out.glob("*.html"):
        text = html.read_text()
        assert 'src="plotly.min.js"' in text and html.stat().st_size < 300_000
    readme = (out / "README.md").read_text()
    assert f"lens-steer figures --vector {vector_dir} --out {out}" in readme
    assert "--layer 2" in readme and "--no-png" in readme
    for name in ALL_FIGURES:
        assert f"({name}.html)" in readme and f"({name}.png)" not in readme
    assert "[html](logit_lens_top.html) (interactive only)" in readme
    summary = json.loads((out / "summary.json").read_text())
    assert summary["structure"]["layer"] == 2 and summary["structure"]["n_questions"] == 5
    assert summary["structure"]["sources"]["names"] == ["arith", "trivia"]
    assert len(summary["structure"]["split_half"]["per_layer"]) == 4
    assert summary["logit_lens"]["norm_kind"] == "rms" and len(summary["logit_lens"]["top_tokens"]["2"]) == 10
    token_set = summary["logit_lens"]["token_set"]  # the main figure: numerals only on a character vocabulary
    assert token_set["tokens"] == {"step numerals": ["1", "2", "3"]} and token_set["n_random"] == 100
    assert token_set["dropped"][" answer"].startswith("answer markers: not one token")
    assert set(token_set["scores"]["step numerals"]) == {"direction", "random_low", "random_mean", "random_high"}
    assert len(token_set["ranks"]["step numerals"]["direction"]) == 4
    assert "- Token-set lens, layer 2: step numerals mean score" in readme
    assert summary["trace"]["cot"]["n_response_tokens"] <= 5
    ablation = summary["ablation"]
    assert set(ablation["ablation_all"]["conditions"]) == {"baseline", "ablated", "random"}
    assert ablation["ablation_all"]["n_questions"] == 2 and ablation["ablation_all"]["layers"] == [0, 1, 2, 3]
    assert ablation["ablation_layer2"]["layers"] == [2]
    assert "repetitive_rate" in ablation["ablation_layer2"]["conditions"]["ablated"]
    assert "- ablation layers: all, 2" in readme and "- layer: 2" in readme  # effective settings, defaults filled in
    assert summary["settings"]["ablation_layers"] == ["all", "2"] and summary["settings"]["layer"] == 2
    rows = [json.loads(line) for line in (out / "ablation_all.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"baseline_n_tokens", "ablated_cot_style", "random_repetitive"} <= set(rows[0])
    assert (out / "ablation_layer2.jsonl").is_file()
    assert "wrote 11 HTML and 0 PNG" in capsys.readouterr().out


@needs_png
def test_figures_cli_png(vector_dir, tmp_path, capsys):
    out = tmp_path / "fig"
    out.mkdir()
    (out / "logit_lens_top.png").write_bytes(b"stale")  # an earlier run's PNG of an HTML-only figure
    assert _figures(vector_dir, out, "--ablation-questions", "1", "--ablation-layers", "1,2",
                    "--plotlyjs", "cdn") == 0
    pngs = {p.stem: p for p in out.glob("*.png")}
    assert set(pngs) == BASE_FIGURES - HTML_ONLY | {"ablation_layers1-2"}
    for p in pngs.values():
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5_000
    assert not (out / "plotly.min.js").exists()
    readme = (out / "README.md").read_text()
    assert "(ablation_layers1-2.png)" in readme and "PNG written for 8 of 8 figures with kaleido" in readme
    assert "[html](logit_lens.html), [png](logit_lens.png)" in readme
    captured = capsys.readouterr()
    assert "wrote 10 HTML and 8 PNG" in captured.out and "PNG" not in captured.err  # HTML-only is no failure
    assert json.loads((out / "summary.json").read_text())["ablation"]["ablation_layers1-2"]["layers"] == [1, 2]


@needs_png
def test_export_pngs_reports_unrenderable_figures(tmp_path):
    import plotly.graph_objects as go

    bad = go.Figure(go.Heatmap(z=[[1.0]], text=[["\f"]], texttemplate="%{text}"))  # plotly.js cannot draw this
    (tmp_path / "bad.png").write_bytes(b"stale")
    written, failed = export_pngs([FigureSpec("good", "g", "g", go.Figure(go.Bar(x=[1], y=[1])), 300, 200),
                                   FigureSpec("bad", "b", "b", bad, 300, 200)], tmp_path)
    assert [p.name for p in written] == ["good.png"] and failed == ["bad"]
    assert not (tmp_path / "bad.png").exists()


def test_figures_png_degrades_without_browser(vector_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    out = tmp_path / "fig"
    assert _figures(vector_dir, out, "--ablation-questions", "0", "--trace-question", "") == 0
    assert {p.stem for p in out.glob("*.html")} == BASE_FIGURES - {"projection_trace"}
    assert not list(out.glob("*.png"))
    err = [line for line in capsys.readouterr().err.splitlines() if "PNG" in line]
    assert len(err) == 1 and "PNG export skipped" in err[0] and "HTML written" in err[0]
    assert "PNG export skipped" in (out / "README.md").read_text()


def test_figures_cli_errors(vector_dir, tmp_path, capsys):
    assert main(["figures", "--vector", str(tmp_path / "missing"), "--out", str(tmp_path / "f")]) == 2
    assert "figures: error" in capsys.readouterr().err
    assert _figures(vector_dir, tmp_path / "f", "--layer", "9", "--no-png") == 2
    assert "out of range" in capsys.readouterr().err
    assert _figures(vector_dir, tmp_path / "f", "--ablation-layers", "1,7", "--no-png") == 2
    assert "out of range" in capsys.readouterr().err


def test_ablation_names():
    from lens_steer.analysis.paper import ablation_name

    assert ablation_name(None) == "ablation_all" and ablation_name([15]) == "ablation_layer15"
    assert ablation_name([10, 11, 12]) == "ablation_layers10-12" and ablation_name([3, 7]) == "ablation_layers3_7"


def test_paper_figures_without_model(vector_dir):
    vec = SteeringVector.load(vector_dir)
    paper = paper_figures(paper_analysis(None, vec, 1, n_splits=5))
    assert [f.name for f in paper.figures] == STRUCTURE
    assert [s.group for s in paper.analysis.skipped] == ["model"] and paper.analysis.ablations == ()
    assert paper.numbers.structure.layer == 1 and paper.numbers.logit_lens is None
    bare = SteeringVector(directions=vec.directions, metadata=vec.metadata)
    paper = paper_figures(paper_analysis(None, bare, 1))
    assert paper.figures == () and paper.numbers.structure is None
    assert "per-question" in paper.analysis.skipped[0].reason and paper.analysis.skipped[0].group == "structure"


def _font_sizes(obj, path: str = "figure"):
    """Every explicit font size in a figure's JSON (``*font.size``), with where it is."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith("font") and isinstance(value, dict) and isinstance(value.get("size"), (int, float)):
                yield f"{path}.{key}", value["size"]
            yield from _font_sizes(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _font_sizes(value, f"{path}[{i}]")


def test_every_paper_figure_is_readable_at_100_percent(vector_dir, tiny):
    from lens_steer.config import GenerationConfig
    from lens_steer.viz.plotting_common import FONT_PX, MIN_FONT_PX

    paper = paper_figures(paper_analysis(tiny, SteeringVector.load(vector_dir), 2, trace_question="What is 2+2?",
                                         ablation_questions=["What is 1+2?"],
                                         generation=GenerationConfig(max_new_tokens=3), n_splits=5, lens_random=10))
    assert {f.name for f in paper.figures} == BASE_FIGURES | {"ablation_all"}
    for spec in paper.figures:
        fig = spec.figure.to_dict()
        assert fig["layout"]["template"]["layout"]["font"]["size"] == FONT_PX, spec.name
        sizes = list(_font_sizes(fig))
        assert sizes, spec.name  # the template's sizes at least
        small = [(where, size) for where, size in sizes if size < MIN_FONT_PX]
        assert not small, (spec.name, small)
    assert [f.name for f in paper.figures if not f.png] == ["logit_lens_top", "logit_lens_bottom"]
    assert [f.name for f in paper.figures][5] == "logit_lens"  # the main lens figure leads the lens group


def test_write_html_modes(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    cdn = write_html(fig, tmp_path / "a" / "cdn.html", "cdn")
    assert "cdn.plot.ly" in cdn.read_text() and not (tmp_path / "a" / "plotly.min.js").exists()
    write_html(fig, tmp_path / "b" / "dir.html", "directory")
    assert (tmp_path / "b" / "plotly.min.js").is_file()
    with pytest.raises(ValueError):
        write_html(fig, tmp_path / "c.html", "nope")
