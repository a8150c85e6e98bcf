"""The ``README.md`` of a figures directory as text: the command, the settings, the vector's provenance,
the headline numbers as bullets and the table of figures. Pure: writes nothing
(:func:`lens_steer.viz.figure_io.write_paper_figures` writes it)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from lens_steer.analysis.paper import FigureSettings
from lens_steer.viz.figures import PaperFigures
from lens_steer.viz.headline import HeadlineNumbers, StructureNumbers, TokenSetNumbers

__all__ = ["BROWSER_ENV", "headline_lines", "readme_text", "vector_info"]

BROWSER_ENV = "BROWSER_PATH"
"""Environment variable naming the Chrome/Chromium executable (read by kaleido's choreographer too, and
by :func:`lens_steer.viz.figure_io.find_png_backend`; here because the README names it)."""


def vector_info(vector, directory: str) -> dict[str, str | int]:
    """The vector's provenance lines (``{label: value}``) of the README and of ``summary.json``'s ``vector``.

    Args:
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`. directory: Where it is, as shown.
    """
    meta = vector.metadata
    return {"directory": directory, "model": meta.model_id, "fingerprint": meta.model_fingerprint,
            "layers x d_model": f"{meta.n_layers} x {meta.d_model}", "questions": len(meta.question_ids),
            "corpus sha256": meta.corpus_hash, "positions": meta.positions, "created": meta.created,
            "generation": json.dumps(meta.to_dict()["generation"])}  # as on disk, engine and attention included


def _fmt_tokens(tokens: Sequence[str], n: int = 6) -> str:
    shown = [json.dumps(t, ensure_ascii=False) for t in tokens[:n]]
    return ", ".join(s.replace("|", "\\|") for s in shown)


def _layers_text(layers: Sequence[int]) -> str:
    """``layer 15``, ``layers 0–29`` or ``layers 3, 7``."""
    layers = list(layers)
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return "layers " + ", ".join(str(x) for x in layers)


def _structure_lines(st: StructureNumbers) -> list[str]:
    sh, layer = st.split_half, st.layer
    lines = [f"- Split-half stability (cos of the two half means, {sh.n_splits} splits, "
             f"{st.n_questions} questions): {sh.min:.3f} (layer {sh.argmin}) to "
             f"{sh.max:.3f} (layer {sh.argmax}); {sh.at_layer:.3f} at layer {layer}."]
    rel = st.norm.relative_per_layer
    if rel:
        lines.append(f"- ‖v‖/‖resid‖ at layer {layer}: {rel[layer]:.3f} (range {min(rel):.3f}–{max(rel):.3f}).")
    lc = st.layer_cosine
    lines.append(f"- Adjacent-layer cosine of the direction: mean {lc.adjacent_mean:.3f}, min {lc.adjacent_min:.3f}.")
    pw = st.pairwise
    lines.append(f"- Per-question vectors at layer {layer}: mean pairwise cosine {pw.mean:.3f} "
                 f"(sd {pw.std:.3f}); mean cosine with the CoT direction {pw.cos_with_mean_mean:.3f}.")
    src = st.sources
    if len(src.names) > 1:
        pairs = [f"{a}–{b} {src.between[i][j]:.3f}" for i, a in enumerate(src.names)
                 for j, b in enumerate(src.names) if j > i]
        lines.append(f"- Between-source cosine of mean vectors at layer {layer}: " + ", ".join(pairs) + ".")
    evr = st.pca.explained_variance_ratio
    lines.append(f"- PCA at layer {layer} (centred): PC1 explains {evr[0]:.1%}, PC2 {evr[1]:.1%}"
                 if len(evr) > 1 else f"- PCA at layer {layer}: PC1 explains {evr[0]:.1%}")
    lines[-1] += f"; |cos(PC1, CoT direction)| = {st.pca.pc1_abs_cos_with_mean_direction:.3f}."
    return lines


def _token_set_lines(ts: TokenSetNumbers, layer: str) -> list[str]:
    band = f"random {ts.quantiles[0]:.0%}–{ts.quantiles[1]:.0%}"
    i = int(layer)
    parts = [f"{g} mean score {ts.scores[g].direction[i]:.2f} ({band}: {ts.scores[g].random_low[i]:.2f} to "
             f"{ts.scores[g].random_high[i]:.2f}), rank (geometric mean) {ts.ranks[g].direction[i]:,.0f} of "
             f"{ts.d_vocab:,} (random mean {ts.ranks[g].random_mean[i]:,.0f})" for g in ts.scores]
    lines = [f"- Token-set lens, layer {layer}: " + "; ".join(parts) + "."]
    above = [f"{g}: {_layers_text(ts.above_band(g)) if ts.above_band(g) else 'none'}" for g in ts.scores]
    lines.append(f"- Layers where a group's mean score is above the random band: {'; '.join(above)}.")
    if ts.dropped:
        lines.append(f"- Token-set lens left out: {_fmt_tokens(list(ts.dropped), 12)} (reasons in `summary.json`).")
    return lines


def headline_lines(numbers: HeadlineNumbers) -> list[str]:
    """Markdown bullet lines with the key numbers (for a figures README)."""
    st = numbers.structure
    lines = _structure_lines(st) if st else []
    ll = numbers.logit_lens
    if ll:
        layer = str(st.layer) if st else next(iter(ll.top_tokens))
        if ll.token_set is not None:
            lines += _token_set_lines(ll.token_set, layer)
        lines.append(f"- Logit lens, layer {layer}, top tokens: {_fmt_tokens(ll.top_tokens[layer])}; "
                     f"random control: {_fmt_tokens(ll.control_top_tokens[layer])}.")
        lines.append(f"- Logit lens, layer {layer}, bottom tokens: {_fmt_tokens(ll.bottom_tokens[layer])}.")
        last = list(ll.top_tokens)[-1]
        if last != layer:
            lines.append(f"- Logit lens, last layer ({last}), top tokens: {_fmt_tokens(ll.top_tokens[last])}; "
                         f"random control: {_fmt_tokens(ll.control_top_tokens[last])}.")
        lines.append(f"- Largest top-1 lens score over layers: {ll.top_score_max:.3f} "
                     f"(random control: {ll.control_top_score_max:.3f}).")
    tr = numbers.trace
    if tr:
        def proj(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        lines.append(f"- Projection trace at layer {tr.layer}: mean projection over the response "
                     f"{proj(tr.cot.mean_response_projection)} (CoT prompt, {tr.cot.n_response_tokens} tokens) vs "
                     f"{proj(tr.direct.mean_response_projection)} (direct prompt, "
                     f"{tr.direct.n_response_tokens} tokens).")
    for ab in (numbers.ablation or {}).values():
        parts = [f"{n}: {v['mean_tokens']:.1f} tokens, {v['cot_rate']:.0%} CoT style, "
                 f"{v['repetitive_rate']:.0%} repetitive, {v['truncated_rate']:.0%} cut at {ab.max_new_tokens}"
                 for n, v in ab.conditions.items()]
        lines.append(f"- Ablation at {_layers_text(ab.layers)} ({ab.n_questions} CoT prompts): "
                     + "; ".join(parts) + ".")
    return lines


def readme_text(paper: PaperFigures, *, command: str, vector_info: dict, html_mode: str, png_message: str,
                wrote_png: Sequence[str] = (), settings: FigureSettings | None = None) -> str:
    """The ``README.md`` of a figures directory.

    Args:
        paper: The figures. command: The command line. vector_info: From :func:`vector_info`.
        html_mode: How the HTML files get plotly.js (``"directory"``, ``"cdn"``, ``"inline"``).
        png_message: One line on the PNG export. wrote_png: Names of the figures with a PNG.
        settings: The run's effective settings (a section of their own when given).
    """
    lines = ["# Figures", "",
             "Generated by `lens-steer figures`; do not edit by hand. Every figure below was made by this one command:",
             "", "```bash", command, "```", ""]
    if settings is not None:
        lines += ["## Settings", "", "The command above with every default filled in:", ""] + settings.lines() + [""]
    lines += ["## Vector", ""]
    lines += [f"- {k}: {v}" for k, v in vector_info.items()]
    lines += ["", "## Headline numbers", ""]
    lines += headline_lines(paper.numbers) or ["- (none)"]
    lines += ["", "All numbers are in `summary.json`; per-question ablation responses in `<ablation figure>.jsonl`.", ""]
    lines += ["## Figures", "", "| figure | what it shows | files |", "|---|---|---|"]
    for spec in paper.figures:
        files = f"[html]({spec.name}.html)" + (f", [png]({spec.name}.png)" if spec.name in wrote_png else
                                               "" if spec.png else " (interactive only)")
        lines.append(f"| {spec.title} | {spec.description.replace('|', '/')} | {files} |")
    if paper.analysis.skipped:
        lines += ["", "Not built:"] + [f"- {s.group}: {s.reason}" for s in paper.analysis.skipped]
    js = {"directory": "the HTML files load one shared `plotly.min.js` in this directory, so they work offline",
          "cdn": "the HTML files load plotly.js from the CDN (viewing needs the internet)",
          "inline": "each HTML file inlines plotly.js (self-contained)"}[html_mode]
    lines += ["", "## How the files are made", "",
              f"- HTML: `plotly` `write_html`; {js}.",
              "- PNG: `kaleido` >= 1 drives a local headless Chromium; plotly.js is taken from the installed "
              "`plotly` package and MathJax is switched off, so rendering needs no network. Setup on Debian "
              "(as used here):",
              "", "  ```bash",
              "  apt-get update && apt-get install -y chromium      # /usr/bin/chromium",
              "  .venv/bin/python -m pip install 'kaleido>=1'       # or: pip install -e '.[figures]'",
              "  ```", "",
              f"  The browser is found on `PATH` (`chromium`, `google-chrome`, ...) or from `${BROWSER_ENV}`; "
              "without one, `--png` prints one line and writes the HTML only.",
              f"- This run: {png_message}", ""]
    return "\n".join(lines)
