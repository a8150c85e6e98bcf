"""What the notebooks call beyond the library: the shared set-up (model, layer, generation settings and
questions from the ``LENS_STEER_NB_*`` environment variables, in one function instead of a cell copied three
times) and the layer-probing widget bound to a model (:func:`probe_widget`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lens_steer.config import EMBEDDED_MODEL, GenerationConfig, default_layer

__all__ = ["NotebookSetup", "notebook_setup", "probe_widget"]


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


def probe_widget(
    model,
    vector,
    *,
    engines=None,
    model_name: str | None = None,
    generation=None,
    layer: int | None = None,
    prompt: str = "",
    scale: float = 0.3,
    coeff: float | None = None,
    style: str = "direct",
    max_coeff: float | None = None,
):
    """The layer-probing widget on ``model``; display the returned object (last expression of a cell).

    Its Run button answers with :func:`~lens_steer.analysis.prompt_probe.probe_request` on ``model`` and
    shows the outcome with :class:`~lens_steer.viz.probe_widget.ProbeWidget`.

    Args:
        model: A ``TransformerBridge``.
        vector: A ``SteeringVector``.
        engines: An :class:`~lens_steer.engines.menu.EngineMenu` or a name -> engine (or factory) mapping;
            default: the bridge, and vLLM built when first chosen (:func:`~lens_steer.engines.menu.engine_menu`).
        model_name: What the default vLLM entry loads (default: the name the bridge was loaded from).
        generation: A :class:`~lens_steer.config.GenerationConfig`.
        layer: Initial layer (default: the middle block).
        prompt: Initial prompt text.
        scale: Initial size as a fraction of the residual norm (ignored when ``coeff`` is given).
        coeff: Initial raw coefficient instead of a scale (always so for a vector without residual norms).
        style: Initial prompt style.
        max_coeff: Range of the coefficient slider (default: scale 1 at the initial layer, else 10).

    Returns:
        A :class:`~lens_steer.viz.probe_widget.ProbeWidget`.
    """
    from functools import partial

    from lens_steer.analysis.prompt_probe import POSITION_CHOICES, probe_request
    from lens_steer.engines.menu import EngineMenu, engine_menu
    from lens_steer.viz.probe_widget import ProbeWidget

    n_layers = int(model.cfg.n_layers)
    layer = n_layers // 2 if layer is None else layer
    if engines is None:
        engines = engine_menu(model, model_name)
    elif not isinstance(engines, EngineMenu):
        engines = EngineMenu(engines)
    has_norms = getattr(vector, "resid_norm", None) is not None
    if max_coeff is None:
        unit = vector.coeff_for_scale(layer, 1.0) if has_norms and 0 <= layer < n_layers else float("nan")
        max_coeff = float(math.ceil(unit)) if math.isfinite(unit) and unit > 0 else 10.0
    kind = "coeff" if coeff is not None or not has_norms else "scale"
    size = coeff if coeff is not None else (scale if has_norms else 0.0)
    run = partial(probe_request, model, vector, engines, generation=generation)
    return ProbeWidget(run, vector, n_layers=n_layers, engine_names=engines.names, modes=POSITION_CHOICES, layer=layer,
                       prompt=prompt, size=float(size), size_kind=kind, style=style, max_coeff=max_coeff)
