"""The server's one path to the engine: a queue that gathers concurrent requests for a few milliseconds and
runs them together in one ``generate`` call, each prompt with its own steering plan (``steering=`` per prompt,
never hooks left on the model), from one worker thread.

Isolation: a job's plan travels with its prompt into the call; the engine applies a plan only to the prompts
that carry it (the bridge engine runs each distinct plan as its own batch, installing its hooks inside its
lock and removing them before the next) and an unsteered prompt gets none. Greedy jobs are gathered only with
jobs of the same generation settings; a sampled job runs alone, so its seed alone decides its tokens. If a
gathered call fails, each of its jobs is run again alone, so one bad request fails only itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Generation, SteeringPlan

__all__ = ["Batcher", "BatcherStats", "Job", "ShuttingDown"]


class ShuttingDown(RuntimeError):
    """The batcher was closed before the job ran."""


@dataclass
class Job:
    """One prompt to generate: its token ids, settings and steering plan; the answer arrives in ``future``."""

    prompt: Sequence[int]
    config: GenerationConfig
    plan: SteeringPlan
    future: Future = field(default_factory=Future)

    def group(self) -> object:
        """Jobs with equal groups may share a call: greedy ones by settings; a sampled one only with itself."""
        return replace(self.config, batch_size=1) if not self.config.do_sample else ("sampled", id(self))


@dataclass
class BatcherStats:
    """Counts since start: ``jobs`` done, engine ``calls`` made, the ``largest`` call (prompts), ``retried``
    jobs (run again alone after a gathered call failed), ``failed`` jobs."""

    jobs: int = 0
    calls: int = 0
    largest: int = 0
    retried: int = 0
    failed: int = 0


_STOP = object()


class Batcher:
    """Gather jobs and run them on ``engine`` from one worker thread.

    Args:
        engine: Any :class:`~lens_steer.engines.base.Engine` (per-prompt steering lists).
        max_batch: Most prompts per ``generate`` call (also its ``batch_size``).
        window_s: How long the first job of a call waits for others to join it.
    """

    def __init__(self, engine, *, max_batch: int = 32, window_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not window_s >= 0:
            raise ValueError(f"the batching window must be >= 0 s, got {window_s}")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="lens-steer-batcher", daemon=True)
        self._worker.start()

    def submit(self, prompt: Sequence[int], config: GenerationConfig, plan: SteeringPlan) -> Future:
        """Queue one prompt; the future gives its :class:`Generation` (or the error that stopped it)."""
        job = Job(list(prompt), config, tuple(plan))
        if self._closed.is_set():
            job.future.set_exception(ShuttingDown("the server is shutting down"))
            return job.future
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, finish the call under way, fail what is still queued."""
        self._closed.set()
        self._queue.put(_STOP)
        self._worker.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                self._refuse(job)

    def _refuse(self, job: Job) -> None:
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(ShuttingDown("the server is shutting down"))

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs = [first]
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch and not self._closed.is_set():
                left = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
            if self._closed.is_set():
                for job in jobs:
                    self._refuse(job)
                continue
            self._run([j for j in jobs if j.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[object, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.group(), []).append(job)
        for members in groups.values():
            try:
                gens = self._generate(members)
            except Exception as exc:  # noqa: BLE001 - whatever the engine raised belongs to these jobs only
                if len(members) == 1:
                    self._fail(members[0], exc)
                    continue
                self.stats.retried += len(members)
                for job in members:
                    try:
                        self._done(job, self._generate([job])[0])
                    except Exception as exc_one:  # noqa: BLE001
                        self._fail(job, exc_one)
                continue
            for job, gen in zip(members, gens, strict=True):
                self._done(job, gen)

    def _generate(self, jobs: list[Job]) -> list[Generation]:
        self.stats.calls += 1
        self.stats.largest = max(self.stats.largest, len(jobs))
        config = replace(jobs[0].config, batch_size=self.max_batch)
        return self.engine.generate([j.prompt for j in jobs], config, steering=[j.plan for j in jobs],
                                    progress=False)

    def _done(self, job: Job, gen: Generation) -> None:
        self.stats.jobs += 1
        job.future.set_result(gen)

    def _fail(self, job: Job, exc: BaseException) -> None:
        self.stats.jobs += 1
        self.stats.failed += 1
        job.future.set_exception(exc)
