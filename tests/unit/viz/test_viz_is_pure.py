"""viz draws and never runs the model: no viz module imports model code (models, engines, derivation, eval runs)
or an analysis function that runs the model (found from the analysis sources, not listed by hand), and the paper
figures are drawn and written from a hand-built analysis with every model-facing function made to fail."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch

import lens_steer

PACKAGE = Path(lens_steer.__file__).resolve().parent
MODEL_CODE = ("lens_steer.models", "lens_steer.engines", "lens_steer.compat", "lens_steer.method.derive",
              "lens_steer.method.derive_run", "lens_steer.method.collect", "lens_steer.method.checkpoint",
              "lens_steer.eval.run", "lens_steer.eval.evaluate")
"""Modules that load or run a model (imported by viz: never)."""


def _is_model_code(target: str) -> bool:
    return any(target == m or target.startswith(m + ".") for m in MODEL_CODE)


def _resolve(module: str, name: str) -> str:
    """``module.name`` as defined (a name re-exported by a package resolves to where it is defined)."""
    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return f"{module}.{name}"
    if obj is None or isinstance(obj, type(lens_steer)):
        return f"{module}.{name}"
    owner = getattr(obj, "__module__", None)
    return f"{owner}.{name}" if owner and owner.startswith("lens_steer") else f"{module}.{name}"


def _aliases(nodes) -> dict[str, str]:
    """Names bound by ``from lens_steer... import`` statements among ``nodes`` -> what they refer to."""
    out = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_steer"):
            for a in node.names:
                out[a.asname or a.name] = _resolve(node.module, a.name)
    return out


def model_running_functions() -> set[str]:
    """``module.function`` of every analysis function (or class with such a method) that runs the model: it
    refers to model code, or to another such function (to a fixed point)."""
    refs: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / "analysis").glob("*.py")):
        module = f"lens_steer.analysis.{path.stem}"
        tree = ast.parse(path.read_text())
        top = _aliases(tree.body)
        local = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            names = top | _aliases(ast.walk(node))
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            refs[f"{module}.{node.name}"] = ({names[u] for u in used if u in names}
                                             | {f"{module}.{u}" for u in used if u in local and u != node.name})
    running = {q for q, r in refs.items() if any(_is_model_code(t) for t in r)}
    while True:
        more = {q for q, r in refs.items() if r & running} - running
        if not more:
            return running
        running |= more


RUNNING = model_running_functions()


def violations(source: str) -> list[str]:
    """What ``source`` (a viz module) imports that loads or runs a model, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("lens_steer")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_steer"):
            if _is_model_code(node.module):
                found.append(node.module)
            targets = [_resolve(node.module, a.name) for a in node.names]
        else:
            continue
        for target in targets:
            runs_in = [q for q in RUNNING if q.startswith(target + ".")]  # a whole module that holds runners
            if _is_model_code(target) or target in RUNNING or (target.startswith("lens_steer.analysis.") and runs_in):
                found.append(target)
    return found


def test_the_model_running_analysis_functions_are_found():
    for name in ("trace.projection_trace", "trace.direction_ablation", "prompt_probe.probe_prompt",
                 "prompt_probe.probe_request", "probe.probe_steering", "paper.analyse_vector", "paper.paper_analysis"):
        assert f"lens_steer.analysis.{name}" in RUNNING, name
    for name in ("paper.vector_structure", "paper.ablation_name", "similarity.layer_cosine_matrix",
                 "logit_lens.direction_logit_lens", "token_set_lens.token_set_lens", "trace.TraceResult",
                 "trace.AblationResult", "paper.VectorAnalysis", "prompt_probe.PromptProbe"):
        assert f"lens_steer.analysis.{name}" not in RUNNING, name


@pytest.mark.parametrize(("source", "bad"), [
    ("from lens_steer.analysis import projection_trace", True),
    ("from lens_steer.analysis.paper import analyse_vector", True),
    ("import lens_steer.analysis.trace", True),
    ("from lens_steer.analysis import prompt_probe", True),
    ("def draw():\n    from lens_steer.models import load_model", True),
    ("from lens_steer.engines.menu import EngineMenu", True),
    ("from lens_steer.method.derive import derive_cot_vector", True),
    ("from lens_steer.analysis.trace import TraceResult", False),
    ("from lens_steer.analysis import layer_cosine_matrix, VectorAnalysis", False),
    ("from lens_steer.method.vectors import SteeringVector", False),
])
def test_the_check_tells_model_code_from_types(source, bad):
    assert bool(violations(source)) == bad


@pytest.mark.parametrize("path", sorted((PACKAGE / "viz").glob("*.py")), ids=lambda p: p.name)
def test_no_viz_module_runs_the_model(path):
    assert violations(path.read_text()) == []


# ---------------------------------------------------------------- drawn from a hand-built analysis, no model


def _analysis():
    from lens_steer.analysis import (
        AblationAnalysis, AblationCondition, AblationResult, LensAnalysis, Skipped, TraceAnalysis, TraceResult,
        VectorAnalysis, direction_logit_lens, random_direction_control, resolve_token_set, token_overlap,
        token_set_lens, vector_structure,
    )
    from lens_steer.method.metadata import VectorMetadata
    from lens_steer.method.vectors import SteeringVector

    g = torch.Generator().manual_seed(0)
    n_layers, d_model, n_q = 3, 8, 4
    pq = torch.randn(n_q, n_layers, d_model, generator=g)
    meta = VectorMetadata(model_id="hand-built", model_fingerprint="0", n_layers=n_layers, d_model=d_model,
                          question_ids=[f"q{i}" for i in range(n_q)], question_sources=["a", "b", "a", "b"],
                          questions=[f"question {i}" for i in range(n_q)])
    vector = SteeringVector(pq.mean(0), meta, per_question=pq, resid_norm=torch.full((n_layers,), 4.0))
    w_u = torch.randn(d_model, 20, generator=g)
    dirs = vector.directions

    def decode(i: int) -> str:
        return f"t{i}"

    lens = direction_logit_lens(dirs, w_u, norm_kind="none", k=3, decode=decode)
    control = direction_logit_lens(random_direction_control(dirs, 0), w_u, norm_kind="none", k=3, decode=decode)
    tokens = resolve_token_set({"letters": ["a", "b", "zz"]}, lambda t: [ord(c) - 97 for c in t], 20)
    token_set = token_set_lens(dirs, w_u, tokens, generator=torch.Generator().manual_seed(0), norm_kind="none",
                               n_random=5)

    def trace(style: str, n_response: int) -> TraceResult:
        ids = list(range(3 + n_response))
        return TraceResult("What is 2+2?", style, 1, ids, [f"t{i}" for i in ids],
                           torch.arange(len(ids), dtype=torch.float32), 3, "four", True)

    conditions = {name: AblationCondition(name, ["x", "y"], [n, n + 2], [True, False], [True, True], [False, False])
                  for name, n in (("baseline", 4), ("ablated", 2), ("random", 4))}
    ablation = AblationResult([1], ["q0", "q1"], ["question 0", "question 1"], conditions, 8, 0)
    return VectorAnalysis(
        layer=1, structure=vector_structure(vector, 1, n_splits=4),
        lens=LensAnalysis("none", 3, 0, lens, control, token_overlap(lens, control, "top"), token_set),
        trace=TraceAnalysis("What is 2+2?", 1, trace("cot", 4), trace("direct", 2)),
        ablations=(AblationAnalysis((1,), 0, ablation),), skipped=(Skipped("extra", "a reason"),))


def _fail(*args, **kwargs):
    raise AssertionError("viz ran model code")


def test_paper_figures_drawn_and_written_from_a_hand_built_analysis(tmp_path, monkeypatch):
    import lens_steer.analysis.paper as paper_mod
    import lens_steer.analysis.trace as trace_mod
    import lens_steer.engines.api as engines_api
    import lens_steer.models as models
    from lens_steer.viz.figure_io import write_paper_figures
    from lens_steer.viz.figures import paper_figures

    analysis = _analysis()
    for module, names in ((models, ("load_model", "unembedding", "final_norm", "check_layer", "n_layers")),
                          (engines_api, ("generate", "steer", "as_engine")),
                          (trace_mod, ("projection_trace", "direction_ablation")),
                          (paper_mod, ("analyse_vector", "paper_analysis", "vector_structure"))):
        for name in names:
            monkeypatch.setattr(module, name, _fail)
    paper = paper_figures(analysis)
    assert [f.name for f in paper.figures] == [
        "layer_cosine", "split_half", "source_cosine", "pca_scatter", "pca_variance", "logit_lens",
        "logit_lens_top", "logit_lens_bottom", "projection_trace", "ablation_layer1"]
    numbers = paper.numbers
    assert numbers.structure.n_questions == 4 and numbers.structure.sources.names == ["a", "b"]
    assert numbers.logit_lens.top_tokens["1"] == analysis.lens.lens.top_tokens[1]
    assert numbers.logit_lens.token_set.tokens == {"letters": ["a", "b"]}
    assert numbers.trace.cot.n_response_tokens == 4 and numbers.trace.cot.mean_response_projection == 4.5
    assert numbers.trace.direct.last_prompt_projection == 2.0
    assert numbers.ablation["ablation_layer1"].conditions["ablated"]["mean_tokens"] == 3.0

    report = write_paper_figures(paper, tmp_path, command="by hand", vector_info={"model": "hand-built"}, png=False)
    assert {p.name for p in report.html} == {f"{f.name}.html" for f in paper.figures}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped"] == {"extra": "a reason"} and summary["vector"] == {"model": "hand-built"}
    assert summary["ablation"]["ablation_layer1"]["layers"] == [1] and summary["trace"]["layer"] == 1
    rows = [json.loads(line) for line in (tmp_path / "ablation_layer1.jsonl").read_text().splitlines()]
    assert [r["ablated_n_tokens"] for r in rows] == [2, 4]
    readme = (tmp_path / "README.md").read_text()
    assert "- extra: a reason" in readme and "[html](ablation_layer1.html)" in readme
