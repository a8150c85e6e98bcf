"""The shared set-up of the notebooks: model, layer, generation settings and questions from the
``LENS_STEER_NB_*`` environment variables, in one function instead of a cell copied three times."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lens_steer.config import EMBEDDED_MODEL, GenerationConfig, default_layer

__all__ = ["NotebookSetup", "notebook_setup"]


@dataclass
class NotebookSetup:
    """What every notebook starts from.

    Attributes:
        model: The loaded ``TransformerBridge``. model_name: Its name (``$LENS_STEER_NB_MODEL``).
        n_layers: Its depth. layer: The layer to look at (``$LENS_STEER_NB_LAYER``, else the default rule).
        small: ``$LENS_STEER_NB_SMALL=1``: small settings (the test suite runs the notebooks so).
        generation: Generation settings. derive_questions / heldout: The packaged demo questions.
        vector_dir: ``$LENS_STEER_VECTOR``: a saved vector to use instead of deriving one.
    """

    model: object
    model_name: str
    n_layers: int
    layer: int
    small: bool
    generation: GenerationConfig
    derive_questions: list
    heldout: list
    vector_dir: str | None

    def vector(self, *, progress: bool = False):
        """The saved vector at ``vector_dir`` (checked against the model), else one derived from ``derive_questions``."""
        from lens_steer.method.derive import derive_cot_vector
        from lens_steer.method.vectors import SteeringVector

        if self.vector_dir:
            return SteeringVector.load(self.vector_dir, model=self.model)
        return derive_cot_vector(self.model, self.derive_questions, generation=self.generation, progress=progress)

    def describe(self) -> str:
        """One line: model, depth, width, layer, small."""
        return (f"{self.model_name}: {self.n_layers} layers x d_model {self.model.cfg.d_model}; layer {self.layer}; "
                f"small={self.small}")


def notebook_setup(env: Mapping[str, str] | None = None) -> NotebookSetup:
    """Load the model and questions the notebooks use, from ``env`` (default ``os.environ``)."""
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.models import load_model

    env = os.environ if env is None else env
    small = env.get("LENS_STEER_NB_SMALL") == "1"
    name = env.get("LENS_STEER_NB_MODEL", EMBEDDED_MODEL)
    model = load_model(name)
    n_layers = int(model.cfg.n_layers)
    layer = int(env.get("LENS_STEER_NB_LAYER", default_layer(name, n_layers)))
    return NotebookSetup(
        model=model, model_name=name, n_layers=n_layers, layer=layer, small=small,
        generation=GenerationConfig(max_new_tokens=24 if small else 128, batch_size=8),
        derive_questions=load_questions_jsonl(demo_questions_path("derive"))[: 4 if small else 24],
        heldout=load_questions_jsonl(demo_questions_path("heldout"))[: 2 if small else 4],
        vector_dir=env.get("LENS_STEER_VECTOR") or None,
    )
