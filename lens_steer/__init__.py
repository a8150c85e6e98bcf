"""lens_steer: find, inject and explain chain-of-thought steering vectors with TransformerLens.

Reproduces Zhang & Viteri, "Uncovering Latent Chain of Thought Vectors in Language Models"
(arXiv 2409.14026) on TransformerLens 4's ``TransformerBridge``.
"""

__version__ = "0.1.0"

from lens_steer.collect import collect_residual_means
from lens_steer.derive import derive_cot_vector
from lens_steer.generate import Generation, GenerationConfig, generate
from lens_steer.inject import ablate_direction, steer
from lens_steer.models import EMBEDDED_MODEL, load_model, resid_post_name
from lens_steer.prompts import COT_SUFFIX, DIRECT_SUFFIX, PromptTemplate, encode_prompt
from lens_steer.vectors import SteeringVector

__all__ = [
    "COT_SUFFIX",
    "DIRECT_SUFFIX",
    "EMBEDDED_MODEL",
    "Generation",
    "GenerationConfig",
    "PromptTemplate",
    "SteeringVector",
    "ablate_direction",
    "collect_residual_means",
    "derive_cot_vector",
    "encode_prompt",
    "generate",
    "load_model",
    "resid_post_name",
    "steer",
]
