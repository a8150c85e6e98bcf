"""The steering specs the contract suite checks on every engine against the bridge: each position kind, strength
schedule and operator, several steerings at one layer in plan order, chosen per architecture so that each acts
within a few generated tokens (trigger texts and region markers are taken from the model's own unsteered answers,
or from the prompt's end, so a selection that reads the tokens is exercised where it matters)."""

from __future__ import annotations

from collections import Counter

import torch

from lens_steer.engines.base import Steering
from lens_steer.engines.steer_spec import SteerSpec, Strength, Where

SPEC_LAYER = 1
FIRST_SPECIAL = 4  # the test tokenizer's special tokens (<pad> <s> </s> <unk>) are ids 0-3: never markers


def token_text(tokenizer, ids) -> str | None:
    """The text a trigger or marker must be written as to mean exactly the tokens ``ids``, or None (the
    tokenizer does not give those ids back for their own text)."""
    from lens_steer.engines.selection import resolve_spec

    text = tokenizer.decode(list(ids))
    if not text:
        return None
    try:
        resolved = resolve_spec(SteerSpec(Where.trigger(text)), tokenizer)
    except ValueError:
        return None
    return text if resolved.triggers[0] == tuple(ids) else None


def frequent_tokens(tokenizer, responses: list[list[int]], k: int = 3) -> list[str]:
    """The texts of the ``k`` tokens the unsteered answers make most often in their first six tokens (ties: lowest
    id), each a token that is its own text."""
    counts = Counter(t for r in responses for t in r[:6] if t >= FIRST_SPECIAL)
    ranked = sorted(counts, key=lambda t: (-counts[t], t)) + list(range(FIRST_SPECIAL, 200))
    out: list[str] = []
    for t in ranked:
        text = token_text(tokenizer, [t])
        if text is not None and text not in out:
            out.append(text)
        if len(out) == k:
            return out
    raise AssertionError("no tokens to steer at")


def spec_steerings(tokenizer, prompts, plain: list[list[int]], direction: torch.Tensor,
                   resid: torch.Tensor) -> dict[str, Steering | tuple[Steering, ...]]:
    """name -> a steering (or a plan of several), each a kind, schedule or operator the engines must agree on.

    Args:
        tokenizer: The model's. prompts: The prompts (all ending in the same chat-template tokens).
        plain: The unsteered greedy answers. direction: A unit random direction. resid: The mean residual stream
            after :data:`SPEC_LAYER` (removing or clamping it matters, where a random direction's component is small).
    """
    assert len({tuple(p[-2:]) for p in prompts}) == 1  # the chat template's end
    end = token_text(tokenizer, prompts[0][-2:]) or token_text(tokenizer, prompts[0][-1:])
    opener = token_text(tokenizer, prompts[0][-1:])
    a, b, c = [t for t in frequent_tokens(tokenizer, plain, 4) if t != opener][:3]
    assert end is not None and opener is not None
    layer = SPEC_LAYER

    def s(spec, coeff=8.0, v=direction, at=layer):
        return Steering(v, at, coeff, spec)

    return {
        # where
        "at=last": s("at=last", 16.0),
        "at=first:3": s("at=first:3"),
        "at=window:2-5": s("at=window:2-5"),
        f"at=trigger:{a!r}": s(SteerSpec(Where.trigger(a))),
        # a trigger that ends the prompt: span 2 reaches generated token 0 (triggers read the prompt)
        f"at=trigger:{end!r}|{b!r},span=2 (the prompt's end)": s(SteerSpec(Where.trigger(end, b, span=2))),
        # a region opened by the prompt's last token, closed by a generated one
        f"at=region:{opener!r}..{c!r} (opened in the prompt)": s(SteerSpec(Where.between(opener, c))),
        f"at=region:{a!r}..{b!r}": s(SteerSpec(Where.between(a, b))),
        # when
        "strength=linear:1:0:4": s("strength=linear:1:0:4"),
        "at=window:1-7,strength=step:0.5:2:3": s("at=window:1-7,strength=step:0.5:2:3"),
        # how
        "op=add-norm": s("op=add-norm"),
        "op=clamp (resid, c=-1)": s("op=clamp", -1.0, resid),
        "op=ablate (resid)": s("op=ablate", 1.0, resid),
        f"at=region:{opener!r}..{c!r},op=ablate (resid)": s(SteerSpec(Where.between(opener, c), op="ablate"), 1.0,
                                                             resid),
        f"at=trigger:{a!r},strength=linear:2:0:6,op=add-norm": s(SteerSpec(Where.trigger(a), Strength.linear(2, 0, 6),
                                                                             "add-norm")),
        # several at one layer, in plan order (clamp then add differs from add then clamp)
        "clamp (resid), then at=first:3": (s("op=clamp", 0.5, resid), s("at=first:3")),
        "at=first:3, then clamp (resid)": (s("at=first:3"), s("op=clamp", 0.5, resid)),
        "single, then continuous, then ablate": (s("single", 16.0), s("continuous"), s("op=ablate", 1.0, resid)),
        "continuous at 0, at=window:1-6 at 2": (s("continuous", 4.0, at=0), s("at=window:1-6", 8.0, at=2)),
    }


def cached_names(names) -> list[str]:
    """The specs checked again with their prompts served from the prefix cache: a single-mode plan, the trigger that
    reads the prompt and the region opened in the prompt."""
    return [n for n in names if n.startswith("single,") or n.endswith("(the prompt's end)")
            or n.endswith("(opened in the prompt)")]


def mean_residual(bridge, prompt: list[int]) -> torch.Tensor:
    """The mean stream after :data:`SPEC_LAYER` over one prompt, on the bridge (float32)."""
    from lens_steer.models import resid_post_name

    name = resid_post_name(SPEC_LAYER)
    with torch.inference_mode():
        _, cache = bridge.model.run_with_cache(torch.tensor([prompt]), names_filter=[name], prepend_bos=False)
    return cache[name][0].mean(0).float().clone()
