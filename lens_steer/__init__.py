"""lens_steer: find, inject and explain chain-of-thought steering vectors with TransformerLens.

Reproduces Zhang & Viteri, "Uncovering Latent Chain of Thought Vectors in Language Models"
(arXiv 2409.14026) on TransformerLens 4's ``TransformerBridge``.
"""

from lens_steer._version import __version__
from lens_steer.config import EMBEDDED_MODEL, GenerationConfig
from lens_steer.engines.api import as_engine, generate, steer
from lens_steer.engines.base import Engine, Generation, Steering
from lens_steer.engines.bridge import BridgeEngine
from lens_steer.engines.steering import ablate_direction
from lens_steer.method.collect import collect_residual_means
from lens_steer.method.derive import derive_cot_vector
from lens_steer.method.vectors import SteeringVector
from lens_steer.models import load_model, resid_post_name
from lens_steer.prompts import COT_SUFFIX, DIRECT_SUFFIX, PromptTemplate, encode_prompt

__all__ = [
    "BridgeEngine",
    "COT_SUFFIX",
    "DIRECT_SUFFIX",
    "EMBEDDED_MODEL",
    "Engine",
    "Generation",
    "GenerationConfig",
    "PromptTemplate",
    "Steering",
    "SteeringVector",
    "__version__",
    "ablate_direction",
    "as_engine",
    "collect_residual_means",
    "derive_cot_vector",
    "encode_prompt",
    "generate",
    "load_model",
    "resid_post_name",
    "steer",
]
