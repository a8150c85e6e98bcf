"""Attach TransformerLens hooks to a bridge for the length of a ``with`` block.

Every installer here is a context manager that removes exactly the hooks it added, in
``finally``, also when installing one of them fails half-way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

HookFn = Callable  # (activation, *, hook) -> activation | None


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
    added = []
    try:
        for point, fn in points:
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]


@contextmanager
def attach_forward_pre_hook(module, fn: Callable) -> Iterator[None]:
    """A PyTorch forward pre-hook ``fn(module, args, kwargs)`` on ``module``, removed on exit."""
    handle = module.register_forward_pre_hook(fn, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
