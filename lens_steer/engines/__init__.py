"""Model runtimes behind one interface (:class:`~lens_steer.engines.base.Engine`): the TransformerBridge
engine (KV-cached loop, fast path, steering hooks). Further engines implement the same protocol."""

from lens_steer.engines.api import as_engine, generate, steer
from lens_steer.engines.base import Engine, Generation, ResidualSums, Steering
from lens_steer.engines.bridge import BridgeEngine, engine_for
from lens_steer.engines.steer_spec import SteerSpec, Strength, Where, parse_spec
from lens_steer.engines.steering import ablate_direction, resolve_direction, resolve_directions

__all__ = [
    "BridgeEngine",
    "Engine",
    "Generation",
    "ResidualSums",
    "SteerSpec",
    "Steering",
    "Strength",
    "Where",
    "ablate_direction",
    "as_engine",
    "engine_for",
    "generate",
    "parse_spec",
    "resolve_direction",
    "resolve_directions",
    "steer",
]
