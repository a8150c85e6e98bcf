"""A request's steering plan as the vLLM engine's workers take it (plain data, no vLLM): which steerings go to the
presets' bank and which to the operator slots, with directions, resolved token sets and the plan's prefix-cache
salt. Built in the engine's process (:class:`~lens_steer.engines.vllm.VllmEngine`), registered in every worker
(:meth:`lens_steer.engines.vllm_steer._State.add_plan`).

At each layer, in plan order: a leading run of paper presets of one mode (``continuous`` or ``single``) is summed
into one bank row, ``c·v``, added exactly as before steering specs existed; every steering after it (any spec, or a
preset after a spec or of the other mode) takes an operator slot, applied in order, each to the stream the one
before left (the bridge's order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from lens_steer.engines.base import Steering
from lens_steer.engines.selection import resolve_spec
from lens_steer.engines.steering import resolve_direction, steering_delta

__all__ = ["compile_plan", "pack_tensors", "steering_salt", "unpack_tensors"]


def compile_plan(plan: Sequence[Steering], info, dtype: torch.dtype, tokenizer, n_slots: int) -> dict:
    """The wire form of one plan: ``{"bank": {layer: (c·v summed, single?)}, "selectors": [(spec text, coeff,
    trigger token sequences, region marker ids)], "slots": {layer: [(selector index, v, op)]}}`` (float32 tensors).

    Raises:
        ValueError: more steerings after a layer's leading presets than ``n_slots``; anything
            :func:`~lens_steer.engines.steering.steering_delta` or
            :func:`~lens_steer.engines.selection.resolve_spec` refuses.
    """
    by_layer: dict[int, list[Steering]] = {}
    for s in plan:
        by_layer.setdefault(s.layer, []).append(s)
    bank: dict[int, tuple[torch.Tensor, bool]] = {}
    selectors: list[tuple] = []
    slots: dict[int, list[tuple[int, torch.Tensor, str]]] = {}
    for layer, steerings in by_layer.items():
        lead = 0
        while lead < len(steerings) and steerings[lead].spec.preset is not None \
                and steerings[lead].spec.preset == steerings[0].spec.preset:
            lead += 1
        deltas = [steering_delta(info, s, dtype) for s in steerings]  # every steering checked alike
        if lead:
            total = deltas[0]
            for delta in deltas[1:lead]:
                total = total + delta
            bank[layer] = (total, steerings[0].spec.preset == "single")
        rest = steerings[lead:]
        if len(rest) > n_slots:
            what = ("applies the paper's presets only (built with steer_slots=0)" if n_slots == 0 else
                    f"applies at most {n_slots} steering{'s' if n_slots > 1 else ''} per layer after its leading "
                    f"presets (VllmEngine(..., steer_slots=N))")
            modes = ", ".join(s.mode for s in rest)
            raise ValueError(f"layer {layer} has {len(rest)} steerings to apply in order ({modes}); the vllm engine "
                             f"{what}")
        for s in rest:
            resolved = resolve_spec(s.spec, tokenizer)
            direction = resolve_direction(info, s.vector, s.layer, allow_other_model=s.allow_other_model)
            selectors.append((s.spec.text, float(s.coeff), resolved.triggers, resolved.markers))
            slots.setdefault(layer, []).append((len(selectors) - 1, direction.detach().to(torch.float32).cpu(),
                                                s.spec.op))
    return {"bank": bank, "selectors": selectors, "slots": slots}


def steering_salt(wire: dict) -> str:
    """The prefix-cache salt of one plan: a hash of every steered layer, its presets' mode and exact ``c·v``, and
    each operator slot's canonical spec text, coefficient, token sets and direction, in order. Requests steered
    alike share cached prefixes; any other steering (or none) never does, because vLLM hashes the salt into every
    block of the request. A plan of presets only hashes as it did before steering specs existed."""
    h = hashlib.sha256(b"lens_steer-steering-v1")
    for layer in sorted(wire["bank"]):
        delta, single = wire["bank"][layer]
        h.update(f"{layer}:{'single' if single else 'continuous'}:".encode())
        h.update(delta.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    if wire["slots"]:
        h.update(b"|slots-v1")
        for layer in sorted(wire["slots"]):
            for k, (si, direction, op) in enumerate(wire["slots"][layer]):
                text, coeff, triggers, markers = wire["selectors"][si]
                h.update(f"{layer}:{k}:{text}:{coeff!r}:{op}:{triggers}:{markers}:".encode())
                h.update(direction.contiguous().numpy().tobytes())
    return h.hexdigest()


_TENSOR = "__lens_steer_tensor__"


def pack_tensors(obj):
    """``obj`` with every tensor replaced by plain data (its float32 bytes and shape), so it crosses vLLM's
    msgpack channel to an engine process, which returns tensors it cannot type as bare lists. Tuples become lists;
    :func:`unpack_tensors` undoes it (float32; a bfloat16 or float16 tensor is exact in it)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to(device="cpu", dtype=torch.float32).contiguous()
        return {_TENSOR: list(t.shape), "data": t.numpy().tobytes()}
    if isinstance(obj, dict):
        return {k: pack_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [pack_tensors(v) for v in obj]
    return obj


def unpack_tensors(obj):
    """:func:`pack_tensors` undone (tensors and other values pass through)."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            data = np.frombuffer(bytes(obj["data"]), dtype=np.float32).copy()
            return torch.from_numpy(data).reshape(obj[_TENSOR])
        return {k: unpack_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_tensors(v) for v in obj]
    return obj
