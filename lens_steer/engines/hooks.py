"""Attach TransformerLens hooks to a bridge for the length of a ``with`` block.

Every installer here is a context manager that removes exactly the hooks it added, in
``finally``, also when installing one of them fails half-way. Only TransformerLens's public hook API
is used: each :func:`attach` tags its hooks with a level of its own (``HookPoint.add_hook(level=)``)
and removes that level (``HookPoint.remove_hooks(level=)``). TransformerLens numbers the levels of its
own ``hooks()`` contexts 1, 2, ...; ours are negative, so neither removes the other's hooks.
"""

from __future__ import annotations

import difflib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

HookFn = Callable  # (activation, *, hook) -> activation | None

_LEVELS = itertools.count(-1, -1)
"""A distinct hook level per :func:`attach` call (``next`` on it is atomic under the GIL)."""


def hook_point(model, name: str):
    """The bridge's hook point ``name``; ``KeyError`` with close matches if unknown."""
    points = model.hook_dict
    if name not in points:
        close = difflib.get_close_matches(name, list(points), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"this model has no hook point {name!r}{hint}")
    return points[name]


@contextmanager
def attach(model, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Add forward hooks ``[(hook_name, fn), ...]`` and remove exactly these on exit.

    Names are checked before anything is attached, so an unknown name attaches nothing.
    """
    points = [(hook_point(model, name), fn) for name, fn in hooks]
    level = next(_LEVELS)
    added = []
    try:
        for point, fn in points:
            added.append(point)
            point.add_hook(fn, dir="fwd", level=level)
        yield
    finally:
        for point in reversed(added):
            point.remove_hooks("fwd", level=level)


@contextmanager
def attach_forward_pre_hook(module, fn: Callable) -> Iterator[None]:
    """A PyTorch forward pre-hook ``fn(module, args, kwargs)`` on ``module``, removed on exit."""
    handle = module.register_forward_pre_hook(fn, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def this_thread_only(module, why: str) -> Iterator[None]:
    """For the block, a forward of ``module`` from any thread but this one raises ``RuntimeError``
    ("this model {why}")."""
    owner = threading.get_ident()

    def refuse_other_threads(_module, _args, _kwargs):
        if threading.get_ident() != owner:
            raise RuntimeError(f"this model {why}: call it through its engine (generate), which waits its turn")
        return None

    with attach_forward_pre_hook(module, refuse_other_threads):
        yield
