"""The vLLM engine: the :class:`~lens_steer.engines.base.Engine` protocol on ``vllm.LLM``, steering
included (see :mod:`lens_steer.engines.vllm_steer` for how the compiled model is steered). Importing it
checks the installed vLLM against the tested range (:mod:`lens_steer.compat.vllm`).

Requests of one call are submitted together, each with its own steering plan (or none), so a sweep's
cells and its unsteered conditions share vLLM's continuous batching. ``residuals`` (derivation) is
filled from inside the compiled model by a capture op, with the bridge engine's definition: the
stream after every block at the response tokens (stop token excluded), as running sums per request.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

import torch

from lens_steer.compat import vllm as vllm_compat
from lens_steer.config import EMBEDDED_MODEL, GenerationConfig, torch_dtype
from lens_steer.engines.base import (
    Generation, ResidualSums, check_fits_context, context_length_of, normalise_steering,
)
from lens_steer.engines.vllm_capture import CAPTURE_OP, ROW_KEY
from lens_steer.engines.vllm_plans import compile_plan, steering_salt, unpack_tensors
from lens_steer.engines.vllm_steer import EXTRA_KEY
from lens_steer.models import ModelInfo, fingerprint_of_sample, fingerprint_rows, stop_ids_of

__all__ = ["VllmEngine", "check_attached", "model_dir", "model_info_of", "open_vllm", "vllm_available"]

_LIVE: list[weakref.ref] = []  # the open VllmEngine of this process (one at a time: the steering state is per process)


STEER_SLOTS = 2
"""Operator slots per layer by default: steerings of one request applied in order at one layer after its leading
presets (each slot costs every step a few element-wise passes over the stream)."""

CPU_MAX_MODEL_LEN = 8192
"""The context a CPU engine serves unless ``max_model_len`` is given: a model's full context (32k for Qwen2.5)
needs more KV cache than a CPU engine reserves, and this project's prompts and responses stay far below it."""


def vllm_available() -> str:
    """``""`` when vLLM imports here, else the one-line reason it does not."""
    if vllm_compat.VERSION is None:
        return f"vLLM is not installed (lens_steer needs vllm{vllm_compat.SUPPORTED}); `make setup-vllm`"
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"vLLM is not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); `make setup-vllm`"
    return ""


def model_dir(name: str) -> str:
    """A directory or hub name vLLM can load: for a named offline model or a ``.gguf`` file, the de-quantised
    copy the bridge engine loads too (the same weights on both engines), else ``name``."""
    from lens_steer.models.files import gguf_hf_dir, hf_dir, named_model

    if named_model(name) is not None:
        return str(hf_dir(name))
    if name.endswith(".gguf"):
        return str(gguf_hf_dir(name))
    return name


def open_vllm(model: str, *, device: str, dtype: str, capture_residuals: bool, **options) -> VllmEngine:
    """The registry's opener of the ``vllm`` engine (:mod:`lens_steer.engines.registry`; it checks the device)."""
    return VllmEngine(model, dtype=dtype, capture_residuals=capture_residuals, **options)


def check_attached(held: list[list[int]], n_layers: int) -> None:
    """Refuse an engine whose workers did not all attach the steering (``lens_steer_attach``'s answers)."""
    missing = sorted(set(range(n_layers)) - {i for layers in held for i in layers})
    if missing or not all(held):
        raise RuntimeError(f"steering buffers missing on layers {missing or '-'} (workers hold "
                           f"{[len(h) for h in held]} layers each): the steering loader did not reach every "
                           f"worker; install lens_steer in the workers' environment so vLLM loads its plugin")


def model_info_of(model_id: str, hf_config, architecture: str, rows: list[int], parts: list[dict]) -> ModelInfo:
    """The model's identity from its config and the embedding rows every worker read
    (``lens_steer_embedding_rows(rows)``; each worker holds a vocabulary shard)."""
    sample: dict[int, torch.Tensor] = {}
    for part in parts:  # packed by the workers: they may be in another process
        sample.update({int(r): row for r, row in unpack_tensors(part).items()})
    d_model = int(hf_config.hidden_size)
    fingerprint = fingerprint_of_sample((int(hf_config.vocab_size), d_model), torch.stack([sample[r] for r in rows]))
    return ModelInfo(model_id, architecture, int(hf_config.num_hidden_layers), d_model, fingerprint)


def hf_generation_config(path: str):
    """The checkpoint's ``generation_config.json`` (its stop tokens), or None where it has none."""
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        return HFGenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return None


class VllmEngine:
    """Generation (and steering) on vLLM, for the architectures in
    :data:`lens_steer.compat.vllm.ARCHITECTURES` (any other is refused before the engine starts). One open
    engine per process: :meth:`close` it (or use it as a context manager) before opening another.

    Args:
        model: Model name or directory (``"smollm2-135m-instruct"``: the embedded model).
        dtype: ``"float32"``, ``"bfloat16"``, ...
        max_num_batched_tokens: Tokens per engine step (smaller values force chunked prefill).
        gpu_memory_utilization: Fraction of device memory for the KV cache (on CPU: of RAM).
        enforce_eager: Skip torch.compile / CUDA graphs (slower; for debugging).
        capture_residuals: Make derivation (``residuals``) possible under CUDA graphs: the capture op
            becomes a graph split point and CUDA graphs piecewise (some decode speed). Not needed on
            CPU or with ``enforce_eager``, where it is always possible.
        enable_prefix_caching: Reuse the KV cache of shared prompt prefixes (the chat template and the
            question that a CoT and a direct prompt share). Keyed by the steering: a steered request's
            blocks are salted with a hash of its ``c·v`` per layer and mode and of each other steering's spec
            text and direction, so a prefix computed without steering never serves a steered prompt, or the
            reverse, or another steering. A derivation that averages prompt
            positions (``positions`` ``"prompt"``/``"all"``) reads no cached prefix: it must compute them.
        steer_slots: Operator slots per layer (default :data:`STEER_SLOTS`): how many steerings of one request
            that are not the paper's presets (or follow a spec) apply in order at one layer. 0 compiles the
            presets-only graph of earlier versions (and refuses every other spec).
        tensor_parallel_size: Tensor-parallel workers (every rank adds the same ``c·v``: the residual
            stream is whole on each rank after a block). ``pipeline_parallel_size`` (in ``llm_kwargs``)
            works the same way, each stage steering and reading its own layers.
        **llm_kwargs: Passed to ``vllm.LLM``.
    """

    name = "vllm"
    mixed_batches = True
    """Requests with different steering (or none) share one call."""

    def __init__(self, model: str = EMBEDDED_MODEL, *, dtype: str = "float32", max_num_batched_tokens: int = 2048,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = False,
                 capture_residuals: bool = False, tensor_parallel_size: int = 1, seed: int = 0,
                 enable_prefix_caching: bool = True, steer_slots: int = STEER_SLOTS, **llm_kwargs) -> None:
        reason = vllm_available()
        if reason:
            raise RuntimeError(reason)
        from transformers import AutoConfig

        self.model_id = str(model)
        path = model_dir(self.model_id)
        hf_config = AutoConfig.from_pretrained(path)
        architecture = (hf_config.architectures or ["?"])[0]
        vllm_compat.check_architecture(architecture)  # refused here, before the engine starts
        if _LIVE and _LIVE[0]() is not None:
            raise RuntimeError("one open VllmEngine per process: close() the first before opening another")
        os.environ.update(vllm_compat.runner_environment())
        from vllm import LLM

        from lens_steer.engines import vllm_worker

        vllm_worker.plugin()  # in-process workers: the loader that makes the model steerable
        workers = int(tensor_parallel_size) * int(llm_kwargs.get("pipeline_parallel_size", 1))
        self.cuda_graphs = torch.cuda.is_available() and not enforce_eager
        self.capture_residuals = capture_residuals
        if self.cuda_graphs and capture_residuals and "compilation_config" not in llm_kwargs:
            # vLLM's default split points plus the capture op, which must run eagerly at every step
            llm_kwargs["compilation_config"] = {"splitting_ops": vllm_compat.splitting_ops(CAPTURE_OP),
                                                "cudagraph_mode": "PIECEWISE"}
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.3 if not torch.cuda.is_available() else 0.85
        if not torch.cuda.is_available() and "max_model_len" not in llm_kwargs:
            # a CPU's KV cache is small: serve up to CPU_MAX_MODEL_LEN tokens unless asked for more
            llm_kwargs["max_model_len"] = min(context_length_of(hf_config) or CPU_MAX_MODEL_LEN, CPU_MAX_MODEL_LEN)
        if isinstance(steer_slots, bool) or not isinstance(steer_slots, int) or not 0 <= steer_slots <= 8:
            raise ValueError(f"steer_slots must be an integer from 0 to 8, got {steer_slots!r}")
        self.steer_slots = steer_slots
        options = vllm_compat.engine_options(llm_kwargs, worker_extension=vllm_worker.EXTENSION,
                                             steer_slots=steer_slots)
        self.llm = LLM(model=path, dtype=dtype, max_num_batched_tokens=max_num_batched_tokens,
                       enable_prefix_caching=enable_prefix_caching, enable_chunked_prefill=True,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                       tensor_parallel_size=tensor_parallel_size, **options)
        _LIVE[:] = [weakref.ref(self)]
        self.workers = workers
        self.block_size = vllm_compat.block_size(self.llm)
        self.context_length = vllm_compat.max_model_len(self.llm)
        """Most tokens (prompt + response) a request may span: longer prompts are refused before they run."""
        """KV-cache block size: prefixes are cached and reused in whole blocks."""
        self.last_cached_tokens: list[int] = []
        """Prompt tokens served from the prefix cache, per request of the last call (for benchmarks and tests)."""
        self._tokenizer = self.llm.get_tokenizer()
        self._dtype = dtype
        try:
            self._identify(path, hf_config, architecture)
        except BaseException:
            self.close()
            raise

    def _identify(self, path: str, hf_config, architecture: str) -> None:
        """Attach the steering to every worker's runner and read the model's identity and stop tokens."""
        check_attached(self._rpc("lens_steer_attach"), int(hf_config.num_hidden_layers))
        rows = list(fingerprint_rows(int(hf_config.vocab_size)))
        self._info = model_info_of(self.model_id, hf_config, architecture, rows,
                                   self._rpc("lens_steer_embedding_rows", rows))
        self.stop_ids = stop_ids_of(self._tokenizer, hf_generation_config(path))

    # ------------------------------------------------------------ identity
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def dtype_name(self) -> str:
        return self._dtype

    @property
    def device_name(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def attention_kernel(self) -> str:
        return "vllm"

    # ------------------------------------------------------------ workers
    def _rpc(self, method: str, *args) -> list:
        """The worker extension's ``method(*args)`` on every worker (in-process with one worker)."""
        if self.llm is None:
            raise RuntimeError("this VllmEngine is closed")
        return self.llm.collective_rpc(method, args=args)

    def steering_is_clean(self) -> bool:
        """Whether every worker holds no steering plan, no capture and all-zero steering buffers (as after
        every ``generate`` call, also one that raised)."""
        return all(self._rpc("lens_steer_is_clean"))

    def close(self) -> None:
        """Stop the engine and free its memory (another VllmEngine may then open in this process)."""
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        if _LIVE and _LIVE[0]() is self:
            _LIVE.clear()
        vllm_compat.shutdown(llm)

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ generation
    def _register_plans(self, plans) -> tuple[list[str | None], dict[str, str]]:
        """Register each distinct plan with the workers (:func:`~lens_steer.engines.vllm_plans.compile_plan`);
        returns each request's plan key (``None``: unsteered) and each key's prefix-cache salt."""
        keys: dict[tuple, str] = {}
        tables: dict[str, dict] = {}
        out: list[str | None] = []
        for plan in plans:
            if not plan:
                out.append(None)
                continue
            ident = tuple(s.key() for s in plan)
            if ident not in keys:
                keys[ident] = f"plan{len(keys)}"
                tables[keys[ident]] = compile_plan(plan, self.info, torch_dtype(self._dtype), self._tokenizer,
                                                   self.steer_slots)
            out.append(keys[ident])
        if tables:
            self._rpc("lens_steer_add_plans", tables)
        return out, {key: steering_salt(wire) for key, wire in tables.items()}

    def _submit(self, prompts: list[list[int]], steering, make_params, *, progress: bool,
                residuals: ResidualSums | None = None, max_new: int = 0):
        """Submit every prompt at once, each with its steering plan (and capture row); returns vLLM's outputs.
        ``make_params(i, extra_args, skip_prefix_cache)`` builds request ``i``'s ``SamplingParams``."""
        from vllm.inputs import TokensPrompt

        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        plans = normalise_steering(steering, len(prompts))
        self._rpc("lens_steer_clear")
        try:
            keys, salts = self._register_plans(plans)
            if residuals is not None:
                self._rpc("lens_steer_start_capture", len(prompts), self.info.n_layers, residuals.positions, max_new)
            # prompt positions averaged: every one must be computed, none read from the prefix cache
            skip_cache = residuals is not None and residuals.positions != "generated"
            params, inputs = [], []
            for i, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
                extra = {EXTRA_KEY: key} if key is not None else {}
                if residuals is not None:
                    extra[ROW_KEY] = i
                params.append(make_params(i, extra or None, skip_cache))
                inputs.append(TokensPrompt(prompt_token_ids=prompt, cache_salt=salts[key]) if key is not None
                              else TokensPrompt(prompt_token_ids=prompt))
            try:
                outputs = self.llm.generate(inputs, params, use_tqdm=progress)
            except BaseException:
                vllm_compat.abort_unfinished(self.llm)
                raise
            self.last_cached_tokens = [int(getattr(out, "num_cached_tokens", 0) or 0) for out in outputs]
            if residuals is not None:
                self._add_capture(residuals, self._rpc("lens_steer_capture_result"))
        finally:
            self._rpc("lens_steer_clear")
        return outputs

    def _add_capture(self, residuals: ResidualSums, parts) -> None:
        """Add the workers' sums to ``residuals``: each layer once (tensor-parallel ranks hold copies,
        pipeline stages their own layers); token counts are the same on every worker."""
        done: set[int] = set()
        for layers, sums, norms, counts in parts:
            for j, layer in enumerate(layers):
                if layer not in done:
                    residuals.sums[:, layer] += sums[:, j]
                    residuals.norm_sums[:, layer] += norms[:, j]
                    done.add(layer)
        residuals.counts += torch.from_numpy(parts[0][3]).to(torch.float64)

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(), *,
                 steering=None, residuals: ResidualSums | None = None, progress: bool = True,
                 desc: str = "generating") -> list[Generation]:
        """See :meth:`lens_steer.engines.base.Engine.generate`; all prompts go to vLLM in one call."""
        from vllm import SamplingParams

        prompts = [list(map(int, p)) for p in prompts]
        if residuals is not None:
            if residuals.sums.shape != (len(prompts), self.info.n_layers, self.info.d_model):
                raise ValueError(f"residual sums of shape {tuple(residuals.sums.shape)} do not fit {len(prompts)} "
                                 f"prompts x {self.info.n_layers} layers x {self.info.d_model}")
            if self.cuda_graphs and not self.capture_residuals:
                raise ValueError("residual capture under CUDA graphs needs VllmEngine(..., capture_residuals=True)")
        if not prompts:
            return []
        check_fits_context(prompts, config.max_new_tokens, self.context_length)
        # With residual sums, one more token is generated so the last response token is fed back (and
        # read) also when a response is cut at max_new_tokens; the extra token is dropped below.
        n_new = config.max_new_tokens + (1 if residuals is not None else 0)
        sample = config.do_sample

        def make_params(i, extra, skip_cache):
            return SamplingParams(max_tokens=n_new, temperature=config.temperature if sample else 0.0,
                                  top_p=config.top_p if sample else 1.0, seed=(config.seed + i) if sample else None,
                                  stop_token_ids=self.stop_ids, detokenize=False, extra_args=extra,
                                  skip_reading_prefix_cache=skip_cache)

        outputs = self._submit(prompts, steering, make_params, progress=progress, residuals=residuals,
                               max_new=config.max_new_tokens)
        stop = set(self.stop_ids)
        gens = []
        for prompt, out in zip(prompts, outputs, strict=True):
            ids = list(out.outputs[0].token_ids)[:config.max_new_tokens]
            cut = next((j for j, t in enumerate(ids) if t in stop), None)
            response = ids if cut is None else ids[:cut]
            gens.append(Generation(prompt_ids=prompt, response_ids=response, stopped=cut is not None,
                                   text=self._tokenizer.decode(response, skip_special_tokens=True)))
        return gens

    def first_token_logprobs(self, prompts: Sequence[Sequence[int]], *, steering=None,
                             top_k: int = 20) -> list[dict[int, float]]:
        """The ``top_k`` log-probabilities (of the raw logits) of the first response token of each prompt."""
        from vllm import SamplingParams

        prompts = [list(map(int, p)) for p in prompts]
        if not prompts:
            return []
        check_fits_context(prompts, 0, self.context_length)
        outputs = self._submit(prompts, steering, lambda i, extra, skip_cache: SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=top_k, detokenize=False, extra_args=extra,
            skip_reading_prefix_cache=skip_cache), progress=False)
        return [{int(t): float(lp.logprob) for t, lp in out.outputs[0].logprobs[0].items()} for out in outputs]

