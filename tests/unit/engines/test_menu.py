"""EngineMenu: ready engines, factories built once on first choice, one-line reasons when not available."""

from __future__ import annotations

import pytest

from lens_steer.engines.api import as_engine
from lens_steer.engines.menu import EngineMenu, EngineUnavailableError, engine_menu


def test_ready_engines_and_lazy_factories(tiny):
    bridge = as_engine(tiny)
    built = []

    def factory():
        built.append(1)
        return bridge

    menu = EngineMenu({"bridge": bridge, "later": factory})
    assert menu.names == ["bridge", "later"]
    assert menu.is_built("bridge") and not menu.is_built("later") and not built
    assert menu.get("bridge") is bridge
    assert menu.get("later") is bridge and menu.get("later") is bridge
    assert built == [1] and menu.is_built("later")


def test_unknown_name_and_failing_factory_give_one_line(tiny):
    def broken():
        raise RuntimeError("no GPU here\nlong traceback text")

    menu = EngineMenu({"bridge": as_engine(tiny), "broken": broken})
    with pytest.raises(EngineUnavailableError, match="unknown engine 'fast'; choose one of bridge, broken"):
        menu.get("fast")
    with pytest.raises(EngineUnavailableError) as info:
        menu.get("broken")
    assert str(info.value) == "could not start the broken engine (RuntimeError: no GPU here)"
    assert not menu.is_built("broken")
    with pytest.raises(ValueError, match="at least one engine"):
        EngineMenu({})


def test_default_menu_offers_vllm_without_building_it(tiny, monkeypatch):
    import lens_steer.engines.vllm as vllm_module

    menu = engine_menu(tiny)
    assert menu.names == ["bridge", "vllm"]
    assert menu.get("bridge") is as_engine(tiny) and not menu.is_built("vllm")
    reason = "vLLM is not importable (ModuleNotFoundError: No module named 'vllm'); `make setup-vllm`"
    monkeypatch.setattr(vllm_module, "vllm_available", lambda: reason)
    with pytest.raises(EngineUnavailableError) as info:
        menu.get("vllm")
    assert str(info.value) == reason and not menu.is_built("vllm")
    assert engine_menu(tiny, others=False).names == ["bridge"]
