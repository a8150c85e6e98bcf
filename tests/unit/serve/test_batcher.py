"""The batcher on a stand-in engine: it gathers concurrent jobs into one call with each prompt's own plan,
keeps sampled jobs and other settings apart, and one failing job fails only itself."""

from __future__ import annotations

import threading

import pytest

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Generation
from lens_steer.serve.batcher import Batcher, ShuttingDown

BAD = 666


class FakeEngine:
    name = "fake"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[list, GenerationConfig, list]] = []
        self.gate = gate
        self.entered = threading.Event()

    def generate(self, prompts, config, *, steering=None, progress=True):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((list(prompts), config, list(steering)))
        if any(BAD in p for p in prompts):
            raise ValueError("logits turned NaN")
        return [Generation(list(p), [len(plan)], True, text=f"{p[0]}:{len(plan)}") for p, plan in zip(prompts, steering)]


GREEDY = GenerationConfig(max_new_tokens=4)


def test_gathers_jobs_with_their_own_plans():
    gate = threading.Event()
    engine = FakeEngine(gate)
    batcher = Batcher(engine, max_batch=6, window_s=5.0)  # the call starts when the sixth job is in
    futures = [batcher.submit([i], GREEDY, ("s",) * (i % 3)) for i in range(6)]
    gate.set()
    assert [f.result(10).text for f in futures] == [f"{i}:{i % 3}" for i in range(6)]
    assert len(engine.calls) == 1 and engine.calls[0][2] == [("s",) * (i % 3) for i in range(6)]
    assert engine.calls[0][1].batch_size == 6
    batcher.close()


def test_settings_and_sampling_keep_jobs_apart():
    gate = threading.Event()
    engine = FakeEngine(gate)
    batcher = Batcher(engine, max_batch=5, window_s=5.0)
    sampled = GenerationConfig(max_new_tokens=4, do_sample=True, seed=3)
    futures = [batcher.submit([1], GREEDY, ()), batcher.submit([2], GenerationConfig(max_new_tokens=5), ()),
               batcher.submit([3], sampled, ()), batcher.submit([4], sampled, ()), batcher.submit([5], GREEDY, ())]
    gate.set()
    for f in futures:
        f.result(10)
    assert sorted(len(c[0]) for c in engine.calls) == [1, 1, 1, 2]  # greedy 4-token jobs together; samples alone
    batcher.close()


def test_a_failing_job_fails_only_itself():
    gate = threading.Event()
    engine = FakeEngine(gate)
    batcher = Batcher(engine, max_batch=3, window_s=5.0)
    futures = [batcher.submit([i], GREEDY, ()) for i in (1, BAD, 3)]
    gate.set()
    assert futures[0].result(10).text == "1:0" and futures[2].result(10).text == "3:0"
    with pytest.raises(ValueError, match="NaN"):
        futures[1].result(10)
    assert batcher.stats.retried == 3 and batcher.stats.failed == 1
    batcher.close()


def test_close_fails_what_is_queued():
    gate = threading.Event()
    engine = FakeEngine(gate)
    batcher = Batcher(engine, max_batch=1, window_s=0)
    running = batcher.submit([1], GREEDY, ())
    assert engine.entered.wait(10)  # job 1 is in the engine
    queued = [batcher.submit([i], GREEDY, ()) for i in (2, 3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert running.result(10).text == "1:0"
    for f in queued:
        with pytest.raises(ShuttingDown):
            f.result(10)
    with pytest.raises(ShuttingDown):
        batcher.submit([4], GREEDY, ()).result(1)
