"""The vLLM engine: the :class:`~lens_steer.engines.base.Engine` protocol on ``vllm.LLM``, steering
included (see :mod:`lens_steer.engines.vllm_steer` for how the compiled model is steered).

Requests of one call are submitted together, each with its own steering plan (or none), so a sweep's
cells and its unsteered conditions share vLLM's continuous batching. Residual means for derivation
are not implemented on this engine yet (``residuals`` raises ``NotImplementedError``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lens_steer.config import EMBEDDED_MODEL, GenerationConfig
from lens_steer.engines.base import Generation, ResidualSums, normalise_steering
from lens_steer.engines.steering import resolve_direction
from lens_steer.models import ModelInfo, embedding_fingerprint, stop_ids_of

__all__ = ["VllmEngine", "vllm_available"]


def vllm_available() -> str:
    """``""`` when vLLM imports here, else the one-line reason it does not."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"vLLM is not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); `make setup-vllm`"
    return ""


def _model_dir(name: str) -> str:
    """A directory or hub name vLLM can load: the embedded GGUF's de-quantised cache, else ``name``."""
    if name == EMBEDDED_MODEL:
        from lens_steer.models import embedded_hf_dir

        return str(embedded_hf_dir())
    return name


class VllmEngine:
    """Generation (and steering) on vLLM.

    Args:
        model: Model name or directory (``"smollm2-135m-instruct"``: the embedded model).
        dtype: ``"float32"``, ``"bfloat16"``, ...
        max_num_batched_tokens: Tokens per engine step (smaller values force chunked prefill).
        gpu_memory_utilization: Fraction of device memory for the KV cache (on CPU: of RAM).
        enforce_eager: Skip torch.compile / CUDA graphs (slower; for debugging).
        tensor_parallel_size: Only 1 is supported with steering so far.
        **llm_kwargs: Passed to ``vllm.LLM``.
    """

    name = "vllm"
    mixed_batches = True
    """Requests with different steering (or none) share one call."""

    def __init__(self, model: str = EMBEDDED_MODEL, *, dtype: str = "float32", max_num_batched_tokens: int = 2048,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = False,
                 tensor_parallel_size: int = 1, seed: int = 0, **llm_kwargs) -> None:
        reason = vllm_available()
        if reason:
            raise RuntimeError(reason)
        if tensor_parallel_size != 1 or llm_kwargs.get("pipeline_parallel_size", 1) != 1:
            raise NotImplementedError("the vLLM engine steers in-process with one worker; tensor and pipeline "
                                      "parallelism are not supported yet")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from transformers import AutoConfig
        from vllm import LLM

        from lens_steer.engines import vllm_steer

        self.model_id = str(model)
        path = _model_dir(self.model_id)
        hf_config = AutoConfig.from_pretrained(path)
        architecture = (hf_config.architectures or ["?"])[0]
        vllm_steer.install(architecture)
        if vllm_steer.STATE.layers:
            raise RuntimeError("one VllmEngine per process: the steering buffers of the first one are in use")
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.3 if not torch.cuda.is_available() else 0.85
        self.llm = LLM(model=path, dtype=dtype, max_num_batched_tokens=max_num_batched_tokens,
                       enable_prefix_caching=False, enable_chunked_prefill=True,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                       **llm_kwargs)
        self._tokenizer = self.llm.get_tokenizer()
        self._dtype = dtype
        n_layers, d_model = int(hf_config.num_hidden_layers), int(hf_config.hidden_size)
        vocab = int(hf_config.vocab_size)
        fingerprint = self.llm.apply_model(
            lambda m: embedding_fingerprint(m.model.embed_tokens.weight[:vocab]))[0]
        self._info = ModelInfo(self.model_id, architecture, n_layers, d_model, fingerprint)
        if len(vllm_steer.STATE.layers) != n_layers:
            raise RuntimeError(f"steering buffers on {len(vllm_steer.STATE.layers)} of {n_layers} layers: "
                               "the decoder-layer patch did not take")
        try:
            from transformers import GenerationConfig as HFGenerationConfig

            hf_gen = HFGenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            hf_gen = None
        self.stop_ids = stop_ids_of(self._tokenizer, hf_gen)

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

    # ------------------------------------------------------------ generation
    def _register_plans(self, plans) -> list[str | None]:
        from lens_steer.engines.vllm_steer import STATE

        keys: dict[tuple, str] = {}
        out: list[str | None] = []
        for plan in plans:
            if not plan:
                out.append(None)
                continue
            ident = tuple(s.key() for s in plan)
            if ident not in keys:
                deltas: dict[int, tuple[torch.Tensor, bool]] = {}
                for s in plan:
                    direction = resolve_direction(self.info, s.vector, s.layer,
                                                  allow_other_model=s.allow_other_model).float() * float(s.coeff)
                    if s.layer in deltas:
                        prev, single = deltas[s.layer]
                        if single != (s.mode == "single"):
                            raise ValueError(f"layer {s.layer} is steered in both modes in one plan")
                        deltas[s.layer] = (prev + direction, single)
                    else:
                        deltas[s.layer] = (direction, s.mode == "single")
                keys[ident] = f"plan{len(keys)}"
                STATE.add_plan(keys[ident], deltas)
            out.append(keys[ident])
        return out

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(), *,
                 steering=None, residuals: ResidualSums | None = None, progress: bool = True,
                 desc: str = "generating") -> list[Generation]:
        """See :meth:`lens_steer.engines.base.Engine.generate`; all prompts go to vLLM in one call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from lens_steer.engines.vllm_steer import EXTRA_KEY, STATE

        if residuals is not None:
            raise NotImplementedError("residual means (derivation) are not implemented on the vLLM engine yet; "
                                      "derive with --engine bridge")
        prompts = [list(map(int, p)) for p in prompts]
        if not prompts:
            return []
        plans = normalise_steering(steering, len(prompts))
        STATE.clear()
        try:
            keys = self._register_plans(plans)
            params = []
            for i, key in enumerate(keys):
                sample = config.do_sample
                params.append(SamplingParams(
                    max_tokens=config.max_new_tokens, temperature=config.temperature if sample else 0.0,
                    top_p=config.top_p if sample else 1.0, seed=(config.seed + i) if sample else None,
                    stop_token_ids=self.stop_ids, detokenize=False,
                    extra_args={EXTRA_KEY: key} if key is not None else None))
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                        use_tqdm=progress)
        finally:
            STATE.clear()
        stop = set(self.stop_ids)
        gens = []
        for prompt, out in zip(prompts, outputs, strict=True):
            ids = list(out.outputs[0].token_ids)
            cut = next((j for j, t in enumerate(ids) if t in stop), None)
            response = ids if cut is None else ids[:cut]
            gens.append(Generation(prompt_ids=prompt, response_ids=response, stopped=cut is not None,
                                   text=self._tokenizer.decode(response, skip_special_tokens=True)))
        return gens

