"""The package's shape: every module imports on its own, imports run downward only (the table below,
checked on the real imports, function-level ones included), no import cycle, no module over 400 lines."""

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lens_steer"

# Which stage may import which (a stage always may import itself). Bottom to top.
ALLOWED = {
    "_version": set(),
    "compat": set(),
    "config": set(),
    "prompts": set(),
    "storage": set(),
    "fingerprint": set(),
    "models": {"compat", "config", "storage", "fingerprint"},
    "engines": {"compat", "storage", "config", "models"},
    "data": {"storage", "config"},
    "method": {"compat", "storage", "_version", "config", "models", "engines", "data", "prompts"},
    "eval": {"compat", "storage", "config", "models", "engines", "data", "method", "prompts"},
    "interop": {"compat", "storage", "_version", "config", "models", "engines", "data", "method", "prompts"},
    "analysis": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "prompts"},
    "viz": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "analysis", "prompts"},
    "notebook": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "analysis", "viz", "prompts"},
    "demo": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "analysis", "viz", "prompts"},
    "reproduce": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "analysis", "viz", "prompts"},
    "serve": {"compat", "storage", "config", "models", "engines", "method", "prompts"},
    "cli": {"compat", "storage", "config", "models", "engines", "data", "method", "eval", "analysis", "viz", "prompts", "demo",
            "interop", "reproduce", "serve"},
    "__init__": {"compat", "_version", "config", "models", "engines", "method", "prompts"},
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _stage(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path, module: str) -> set[str]:
    """Every ``lens_steer`` module this file imports, at any depth of the code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lens_steer")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_steer"):
            found.add(node.module)
            mods = _modules()
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
    return {m for m in found if m != module}


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_on_its_own(module):
    if module.endswith("__main__"):
        pytest.skip("runs the CLI when imported")
    code = f"import importlib; importlib.import_module({module!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_imports_follow_the_layer_table():
    wrong = []
    for module, path in MODULES.items():
        stage = _stage(module)
        assert stage in ALLOWED, f"{module}: stage {stage!r} is not in the layer table"
        for target in _imports(path, module):
            other = _stage(target)
            if other != stage and other not in ALLOWED[stage]:  # the package root is in no stage's list
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer table:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = {m: {t for t in _imports(p, m) if t in MODULES} for m, p in MODULES.items()}
    # a package's __init__ re-exporting its submodules is not a cycle through them
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_over_the_size_limit():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_public_names_still_importable():
    import lens_steer

    for name in ("COT_SUFFIX", "DIRECT_SUFFIX", "EMBEDDED_MODEL", "Generation", "GenerationConfig", "PromptTemplate",
                 "SteeringVector", "ablate_direction", "collect_residual_means", "derive_cot_vector", "encode_prompt",
                 "generate", "load_model", "resid_post_name", "steer", "Steering", "BridgeEngine", "as_engine"):
        assert hasattr(lens_steer, name), name
    assert set(lens_steer.__all__) <= set(dir(lens_steer))
    importlib.import_module("lens_steer.cli").main  # the console script's entry point


def test_bench_scripts_compile_and_import_existing_modules():
    """bench/ is not run by the tests; at least its code must parse and name modules that exist."""
    bench = PACKAGE.parent / "bench"
    for path in sorted(bench.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_steer"):
                assert importlib.util.find_spec(node.module) is not None, f"{path.name}: no module {node.module}"
