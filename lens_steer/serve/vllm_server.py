"""``lens-steer serve --engine vllm``: vLLM's own OpenAI-compatible server and async engine (continuous batching,
streaming, its request validation and context checks), built steerable as :class:`~lens_steer.engines.vllm.VllmEngine`
builds it, with :class:`~lens_steer.serve.vllm_gate.SteeringMiddleware` in front. Before the port opens the
workers' steering is attached, the model identified from their embedding rows and every served vector checked
against it (:mod:`lens_steer.compat.vllm_openai` runs vLLM's start-up in that order).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["VllmServeOptions", "serve_vllm"]


@dataclass(frozen=True)
class VllmServeOptions:
    """What ``serve --engine vllm`` is started with.

    Attributes:
        model: Model name or directory (a named offline model or a ``.gguf`` file: its de-quantised copy).
        served_name: The model's name in the API. vectors: ``NAME=DIR`` arguments. default_steering: Text grammar.
        host, port: Where to listen (port 0: a free one). api_key: Required bearer key (None: none).
        dtype: The model's dtype. max_tokens, temperature, seed: Request defaults (see
        :class:`~lens_steer.serve.vllm_gate.GateSettings`). allow_other_model: Accept vectors from another checkpoint
        of the same shape. engine_options: The CLI's engine flags (``tensor_parallel_size``,
        ``gpu_memory_utilization`` ...). max_num_batched_tokens: Tokens per engine step. steer_slots: Operator slots
        per layer (:data:`~lens_steer.engines.vllm.STEER_SLOTS`). quiet: No per-request log.
    """

    model: str
    served_name: str
    vectors: tuple[str, ...] = ()
    default_steering: str = "none"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    dtype: str = "float32"
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    allow_other_model: bool = False
    engine_options: dict = field(default_factory=dict)
    max_num_batched_tokens: int = 2048
    steer_slots: int | None = None
    quiet: bool = False


def _vllm_args(opts: VllmServeOptions, path: str, hf_config):
    """vLLM's server arguments: the steerable engine as :class:`~lens_steer.engines.vllm.VllmEngine` builds it."""
    import torch

    from lens_steer.compat import vllm as vllm_compat
    from lens_steer.compat.vllm_openai import parse_serve_args
    from lens_steer.engines.base import context_length_of
    from lens_steer.engines.vllm import CPU_MAX_MODEL_LEN, STEER_SLOTS
    from lens_steer.engines.vllm_worker import EXTENSION

    args = parse_serve_args(["--model", path, "--host", opts.host, "--port", str(opts.port)])
    given = dict(opts.engine_options)
    slots = STEER_SLOTS if opts.steer_slots is None else opts.steer_slots
    llm_kwargs = {k: given.pop(k) for k in ("pipeline_parallel_size", "distributed_executor_backend") if k in given}
    if not torch.cuda.is_available():
        llm_kwargs["max_model_len"] = min(context_length_of(hf_config) or CPU_MAX_MODEL_LEN, CPU_MAX_MODEL_LEN)
    options = vllm_compat.engine_options(llm_kwargs, worker_extension=EXTENSION, steer_slots=slots)
    utilisation = given.pop("gpu_memory_utilization", None)
    settings = {**options, "dtype": opts.dtype, "served_model_name": [opts.served_name], "seed": 0,
                "max_num_batched_tokens": opts.max_num_batched_tokens, "enable_prefix_caching": True,
                "enable_chunked_prefill": True, "tensor_parallel_size": given.pop("tensor_parallel_size", 1),
                "gpu_memory_utilization": utilisation if utilisation is not None else
                (0.85 if torch.cuda.is_available() else 0.3),
                "api_key": [opts.api_key] if opts.api_key else None,
                "disable_uvicorn_access_log": opts.quiet, "enable_log_requests": False}
    if given:
        raise ValueError(f"serve --engine vllm does not take {', '.join('--' + k.replace('_', '-') for k in given)}")
    for name, value in settings.items():
        if not hasattr(args, name):
            raise RuntimeError(f"vLLM's server has no argument {name!r} (vLLM {vllm_compat.VERSION})")
        setattr(args, name, value)
    return args, slots


def serve_vllm(opts: VllmServeOptions, on_listen: Callable[[str, dict], None]) -> None:
    """Start the server and serve until interrupted.

    Args:
        opts: See :class:`VllmServeOptions`.
        on_listen: Called once the port is open with the base URL and ``{"served": vectors by name, "default":
            the default AppliedSteering}`` (the CLI prints them).

    Raises:
        ValueError / ModelMismatchError / VectorFileError: bad arguments or vectors (before the port opens).
    """
    from transformers import AutoConfig, AutoTokenizer

    from lens_steer.compat import vllm as vllm_compat
    from lens_steer.compat.vllm_openai import run_openai_server
    from lens_steer.config import torch_dtype
    from lens_steer.engines.vllm import check_attached, model_dir, model_info_of, vllm_available
    from lens_steer.engines.vllm_plans import compile_plan, pack_tensors
    from lens_steer.engines.vllm_worker import plugin
    from lens_steer.models import ModelInfo, fingerprint_rows
    from lens_steer.serve.steering_spec import SteeringSpecError, parse_steering_text, resolve_steering
    from lens_steer.serve.vectors import load_served_vectors
    from lens_steer.serve.vllm_gate import GateSettings, PlanRegistry, SteeringGate, install

    reason = vllm_available()
    if reason:
        raise RuntimeError(reason)
    path = model_dir(opts.model)
    hf_config = AutoConfig.from_pretrained(path)
    architecture = (hf_config.architectures or ["?"])[0]
    vllm_compat.check_architecture(architecture)
    default_entries = parse_steering_text(opts.default_steering)
    # depth and width now (a vector of another shape is refused in seconds); the fingerprint once the engine runs
    load_served_vectors(opts.vectors, ModelInfo(opts.model, architecture, int(hf_config.num_hidden_layers),
                                                int(hf_config.hidden_size), ""), allow_other_model=True)
    os.environ.update(vllm_compat.runner_environment())
    plugin()
    args, slots = _vllm_args(opts, path, hf_config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    started: dict = {}

    async def ready(client):
        check_attached(await client.collective_rpc("lens_steer_attach"), int(hf_config.num_hidden_layers))
        rows = list(fingerprint_rows(int(hf_config.vocab_size)))
        info = model_info_of(opts.model, hf_config, architecture, rows,
                             await client.collective_rpc("lens_steer_embedding_rows", args=(rows,)))
        served = load_served_vectors(opts.vectors, info, allow_other_model=opts.allow_other_model)
        vectors = {name: sv.vector for name, sv in served.items()}
        dtype = torch_dtype(opts.dtype)

        def resolve(entries, source):
            return resolve_steering(entries, vectors, info=info, dtype=dtype, engine="vllm",
                                    allow_other_model=opts.allow_other_model, source=source)

        try:
            default = resolve(default_entries, "default")
        except SteeringSpecError as exc:
            raise ValueError(f"--default-steering {opts.default_steering!r}: {exc}") from None

        async def rpc(method, *rpc_args):
            return await client.collective_rpc(method, args=tuple(pack_tensors(a) for a in rpc_args))

        registry = PlanRegistry(rpc, lambda plan: compile_plan(plan, info, dtype, tokenizer, slots))
        vectors_body = {"object": "list", "data": [sv.provenance() for sv in served.values()],
                        "model": info.to_dict(), "default_steering": default.describe()}
        gate = SteeringGate(GateSettings(opts.served_name, opts.max_tokens, opts.temperature, opts.seed, opts.api_key),
                            lambda entries, source: default if entries is None else resolve(entries, source),
                            registry, vectors_body)
        started.update(served=served, default=default)
        return install(gate)

    run_openai_server(args, ready, lambda url: on_listen(url, started))
