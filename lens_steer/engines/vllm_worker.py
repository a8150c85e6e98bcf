"""The lens_steer side of a vLLM worker: the worker extension whose methods the engine calls by name
(``collective_rpc``), the step that makes a freshly built model steerable before vLLM compiles it, and
the general plugin that registers that step in every vLLM process (spawned tensor- or pipeline-parallel
workers included). vLLM internals are reached through :mod:`lens_steer.compat.vllm` only.
"""

from __future__ import annotations

import numpy as np
import torch

from lens_steer.compat import vllm as vllm_compat
from lens_steer.engines.vllm_plans import pack_tensors, unpack_tensors
from lens_steer.engines.vllm_steer import STATE

__all__ = ["EXTENSION", "SteeringWorkerExtension", "plugin", "prepare_model"]

EXTENSION = "lens_steer.engines.vllm_worker.SteeringWorkerExtension"
"""The qualified name vLLM imports the worker extension by (``worker_extension_cls``)."""


def prepare_model(model: torch.nn.Module, vllm_config) -> None:
    """Give the decoder layers of a model vLLM just built their steering buffers and hooks (the
    ``lens_steer`` loader calls this after loading the weights, before the first compiled call)."""
    dims = vllm_compat.model_dims(vllm_config)
    convention = vllm_compat.check_architecture(dims["architecture"])
    layers = vllm_compat.decoder_layers(model, dims["n_layers"])
    STATE.install(layers, convention, d_model=dims["d_model"], max_tokens=dims["max_tokens"], dtype=dims["dtype"],
                  device=dims["device"], n_slots=dims["steer_slots"])


def plugin() -> None:
    """vLLM general plugin (loaded in every vLLM process): register the ``lens_steer`` model loader. It acts
    only on engines built with ``load_format="lens_steer"``, as :class:`~lens_steer.engines.vllm.VllmEngine`
    builds them."""
    if vllm_compat.VERSION is not None:
        vllm_compat.register_loader(prepare_model)


class SteeringWorkerExtension:
    """Methods vLLM adds to its worker class (``worker_extension_cls``); each runs in every worker."""

    def lens_steer_attach(self) -> list[int]:
        """Fill the steering index before every step of this worker's runner; returns the layers it holds."""
        if not STATE.layers:
            raise RuntimeError("the model was not built by lens_steer's loader (load_format='lens_steer')")
        vllm_compat.before_each_step(self.model_runner, STATE.fill)
        STATE.tokens_known = vllm_compat.tokens_known(self.model_runner)
        return sorted(STATE.layers)

    def lens_steer_embedding_rows(self, rows: list[int]) -> dict:
        """Input-embedding rows of this worker's vocabulary shard (for the model fingerprint), packed
        (:func:`~lens_steer.engines.vllm_plans.pack_tensors`)."""
        return pack_tensors(vllm_compat.embedding_rows(self.model_runner.get_model(), rows))

    def lens_steer_clear(self) -> None:
        STATE.clear()

    def lens_steer_is_clean(self) -> bool:
        return STATE.is_clean()

    def lens_steer_add_plans(self, plans: dict[str, dict]) -> None:
        for key, plan in plans.items():
            STATE.add_plan(key, unpack_tensors(plan))

    def lens_steer_remove_plans(self, keys: list[str]) -> None:
        for key in keys:
            STATE.remove_plan(key)

    def lens_steer_start_capture(self, n_rows: int, n_layers: int, positions: str, max_new: int) -> None:
        STATE.start_capture(n_rows, n_layers, positions, max_new)

    def lens_steer_capture_result(self) -> tuple[list[int], torch.Tensor, torch.Tensor, np.ndarray]:
        return STATE.capture_result()
