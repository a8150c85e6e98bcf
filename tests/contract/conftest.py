"""Contract-suite collection: a test parametrised (through a fixture) with an engine carries that engine's mark,
so `make test` (``-m "not vllm"``) deselects vLLM's cases instead of collecting and skipping them."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        engine = params.get("case", (None,))[0] if "case" in params else params.get("name")
        if getattr(engine, "values", None):  # a pytest.param
            engine = engine.values[0]
        if engine == "vllm":
            item.add_marker(pytest.mark.vllm)
