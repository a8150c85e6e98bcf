"""Shared helpers of the benchmarks: machine description, timers, peak RSS, workers, questions.

Every measurement that reports memory runs in its own subprocess (``run_worker``), so a
high-water mark belongs to one measurement only: the worker loads the model, warms up,
resets the kernel's RSS high-water mark (``/proc/self/clear_refs``), runs the measured
work and reports ``VmHWM`` (peak resident set: Python objects, torch tensors, weights).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict:
    """CPU model, cores, memory, load, torch/transformers versions and torch threads."""
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    flags = ""
    try:
        text = open("/proc/cpuinfo").read()
        wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")
        have = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
        flags = " ".join(f for f in wanted if f in have)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def load_line() -> str:
    """The 1-minute load average and the busiest other processes (for the record)."""
    la = os.getloadavg()
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=5).stdout
        lines = [line[:110] for line in out.splitlines()[1:6] if str(os.getpid()) not in line.split()[0:1]]
    except (OSError, subprocess.SubprocessError):
        lines = []
    return f"load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}\n  " + "\n  ".join(lines)


def peak_rss_mb() -> float:
    """Peak resident set size of this process since the last reset, in MiB (VmHWM)."""
    m = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024


def rss_mb() -> float:
    """Current resident set size of this process, in MiB (VmRSS)."""
    m = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Timing:
    """Wall and process-CPU seconds of one timed block."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed(result: Timing):
    """Fill ``result`` with the wall time and the process CPU time (all threads) of the block."""
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result.wall = time.perf_counter() - w0
        result.cpu = time.process_time() - c0


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def questions(n: int, seed: int = 0) -> list:
    """``n`` questions of the paper corpus, a seeded sample (so every source is represented)."""
    import random

    from lens_steer.data.corpus import paper_corpus

    corpus = paper_corpus(data_dir=DATA_DIR)
    if n > len(corpus):
        raise ValueError(f"the paper corpus has {len(corpus)} questions, asked for {n}")
    return random.Random(seed).sample(list(corpus), n)


def parse_or_work(p, worker: Callable[[dict], dict]):
    """Parse the command line of a benchmark that measures in workers (:func:`run_worker`). In a worker
    (``--worker JSON``) run ``worker(spec)``, print its JSON result and return None; else print the machine and
    load lines every result starts with and return the parsed arguments."""
    import argparse

    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return None
    print("machine:", json.dumps(machine()))
    print(load_line())
    return args


def run_worker(script: Path, spec: dict, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``script --worker JSON`` in a fresh interpreter and return the JSON it prints last."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=str(REPO),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


@dataclass
class Table:
    """A plain-text table printed as Markdown."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def add(self, *values) -> None:
        self.rows.append([_fmt(v) for v in values])

    def render(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        sep = "|" + "|".join("---" for _ in self.columns) + "|"
        return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in self.rows])


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}"
    return str(v)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def interleaved(fns: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[dict]]:
    """Run each measurement ``repeats`` times, alternating the order (ABC CBA ...)."""
    names = list(fns)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(fns[name]())
    return out
