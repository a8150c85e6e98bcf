"""Engines offered by name (a notebook's engine choice): ready engines, or ones built on first choice,
so vLLM is imported and started only when someone picks it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lens_steer.engines.base import Engine

__all__ = ["EngineMenu", "EngineUnavailableError", "engine_menu"]

EngineFactory = Callable[[], Engine]


class EngineUnavailableError(ValueError):
    """A chosen engine is not offered, or cannot be built here (the message says why, in one line)."""


class EngineMenu:
    """Engines by name; a factory entry is built the first time it is chosen and then kept.

    Args:
        entries: Name -> an engine, or a zero-argument callable that builds one.
    """

    def __init__(self, entries: Mapping[str, Engine | EngineFactory]) -> None:
        if not entries:
            raise ValueError("an engine menu needs at least one engine")
        self._entries = dict(entries)
        self._built: dict[str, Engine] = {n: e for n, e in self._entries.items() if isinstance(e, Engine)}

    @property
    def names(self) -> list[str]:
        """The names offered, in the order given."""
        return list(self._entries)

    def is_built(self, name: str) -> bool:
        """Whether ``name`` is ready (given as an engine, or already built)."""
        return name in self._built

    def get(self, name: str) -> Engine:
        """The engine called ``name``, built now if it was given as a factory.

        Raises:
            EngineUnavailableError: an unknown name, or a factory that failed (its message in one line).
        """
        if name in self._built:
            return self._built[name]
        if name not in self._entries:
            raise EngineUnavailableError(f"unknown engine {name!r}; choose one of {', '.join(self._entries)}")
        try:
            engine = self._entries[name]()
        except EngineUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported as "unavailable"
            first = (str(exc).splitlines() or [""])[0][:300]
            raise EngineUnavailableError(f"could not start the {name} engine ({type(exc).__name__}: {first})") from exc
        self._built[name] = engine
        return engine


def engine_menu(model, model_name: str | None = None, *, others: bool = True, **options) -> EngineMenu:
    """``bridge`` (the bridge's own engine) and, with ``others``, every other registered engine, each built on
    first choice (:mod:`lens_steer.engines.registry`).

    An entry checks its engine's availability when chosen and reports the reason when it cannot run here;
    it loads ``model_name`` (default: the name the bridge was loaded from) in the bridge's dtype.

    Args:
        model: A ``TransformerBridge``.
        model_name: What the other engines load (a hub name, a directory, or the embedded model's name).
        others: Offer the other registered engines.
        **options: Passed to the engines that take them (e.g. ``gpu_memory_utilization`` for vLLM).

    Returns:
        An :class:`EngineMenu`.
    """
    from lens_steer.engines.api import as_engine
    from lens_steer.engines.registry import engine_names, engine_spec

    bridge = as_engine(model)
    entries: dict[str, Engine | EngineFactory] = {bridge.name: bridge}
    name = model_name or bridge.info.model_id
    for engine in engine_names() if others else ():
        if engine == bridge.name:
            continue
        spec = engine_spec(engine)

        def build(spec=spec) -> Engine:
            reason = spec.unavailable()
            if reason:
                raise EngineUnavailableError(reason)
            return spec.open(name, dtype=bridge.dtype_name, **{k: v for k, v in options.items() if k in spec.options})

        entries[engine] = build
    return EngineMenu(entries)
