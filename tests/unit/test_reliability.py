"""Fault tests on the tiny model through the real CLI: kill -9 at seeded random points of an eval, a
sweep and a derive, then resume (rows / vector equal to an uninterrupted run); a second writer
refused while a first holds a directory, a killed holder's lock taken over; a directory broken by
repeated rows repaired; a full file system (a small tmpfs where one can be mounted, else a
simulated ENOSPC) giving one line and exit 2, and a rerun after freeing space recovering."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lens_steer.cli import main
from lens_steer.eval.results_dir import read_items
from lens_steer.method.vectors import CHECKPOINT_DIR, SteeringVector
from lens_steer.storage import DirLock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "questions.jsonl"
    qs = ["What is 1+1?", "Name a fruit.", "Why is the sky blue?", "Count to three.", "What is 2*3?", "Say hi."]
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(qs)))
    return path


def _derive_args(tiny_dir, questions, out) -> list[str]:
    return ["derive", "--model", str(tiny_dir), "--questions", str(questions), "--out", str(out),
            "--max-new-tokens", "24", "--batch-size", "2", "--chunk-questions", "1", "--no-progress"]


@pytest.fixture(scope="module")
def vector_dir(tiny_dir, questions, tmp_path_factory):
    out = tmp_path_factory.mktemp("vec") / "v"
    assert main(_derive_args(tiny_dir, questions, out)) == 0
    return out


def _eval_args(command, tiny_dir, vector_dir, out) -> list[str]:
    common = ["--model", str(tiny_dir), "--data-dir", str(FIXTURES), "--vector", str(vector_dir),
              "--max-new-tokens", "16", "--batch-size", "1", "--chunk-size", "1", "--no-progress", "--out", str(out)]
    if command == "eval":
        return ["eval", "--benchmarks", "gsm8k,arc", "--limit", "3",
                "--conditions", "direct,cot,steered-continuous,steered-single", "--layer-continuous", "1",
                "--scale-continuous", "0.5", "--layer-single", "2", "--coeff-single", "3", *common]
    return ["sweep", "--benchmarks", "gsm8k", "--split", "train", "--limit", "3", "--layers", "1,2",
            "--coeffs", "1,3", "--no-png", *common]


def _rows(out):
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in read_items(out)),
                  key=lambda r: (r["id"], r["condition"]))


def _spawn(args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lens_steer.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` once ``ready()`` holds; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the run never reached the kill point")


def _errors(err: str) -> list[str]:
    """The error lines of a command's stderr (status lines such as "N items x M conditions" aside)."""
    return [line for line in err.strip().splitlines() if ": error: " in line]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_kill_9_then_resume_gives_the_uninterrupted_rows(tiny_dir, vector_dir, tmp_path, command):
    full = tmp_path / "full"
    assert main(_eval_args(command, tiny_dir, vector_dir, full)) == 0
    n = len(read_items(full))
    rng = random.Random(f"{command}-kill")
    out = tmp_path / "killed"
    for _ in range(2):  # two kills at seeded random points, each followed by nothing but a rerun
        target = _lines(out / "items.jsonl") + rng.randint(1, max(1, n // 3))
        proc = _spawn(_eval_args(command, tiny_dir, vector_dir, out))
        _kill_when(proc, lambda: _lines(out / "items.jsonl") >= target)
    assert main(_eval_args(command, tiny_dir, vector_dir, out)) == 0
    assert _rows(out) == _rows(full)
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_kill_9_during_derive_resumes_to_the_same_vector_and_keeps_the_old_one(tiny_dir, questions, vector_dir,
                                                                              tmp_path):
    out = tmp_path / "v"
    shutil.copytree(vector_dir, out)  # an existing vector the new derivation will replace
    before = (out / "vector.safetensors").read_bytes()
    for k in (1, 3):  # killed after 1, then after 3 finished chunks
        proc = _spawn(_derive_args(tiny_dir, questions, out))
        assert _kill_when(proc, lambda: len(list((out / CHECKPOINT_DIR).glob("chunk-*.safetensors"))) >= k)
        assert SteeringVector.load(out) is not None  # the previous vector is still whole and valid
        assert (out / "vector.safetensors").read_bytes() == before
    assert _spawn(_derive_args(tiny_dir, questions, out)).wait() == 0  # resumed, with the same thread count
    ref = tmp_path / "uninterrupted"
    assert _spawn(_derive_args(tiny_dir, questions, ref)).wait() == 0
    a, b = SteeringVector.load(out), SteeringVector.load(ref)
    assert torch.equal(a.directions, b.directions) and torch.equal(a.per_question, b.per_question)
    assert not (out / CHECKPOINT_DIR).exists()


def test_derive_resume_with_other_settings_is_refused(tiny_dir, questions, tmp_path, capsys):
    out = tmp_path / "v"
    proc = _spawn(_derive_args(tiny_dir, questions, out))
    assert _kill_when(proc, lambda: any((out / CHECKPOINT_DIR).glob("chunk-*.safetensors")))
    args = _derive_args(tiny_dir, questions, out)
    args[args.index("--max-new-tokens") + 1] = "12"
    assert main(args) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "cannot be resumed" in errors[0] and "max_new_tokens: 24 (saved) vs 12 (now)" in errors[0]


def test_a_second_writer_is_refused_and_a_dead_holder_taken_over(tiny_dir, vector_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with DirLock(out, "test holder"):
        proc = _spawn(_eval_args("eval", tiny_dir, vector_dir, out))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    errors = _errors(err)
    assert len(errors) == 1 and f"is being written by pid {os.getpid()}" in errors[0] and "(test holder)" in errors[0]
    assert not (out / "items.jsonl").exists()
    # a holder killed with -9 leaves its record; the kernel released its flock, so the lock is free
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lens_steer.storage import DirLock\n"
                               f"l = DirLock({str(out)!r}, 'doomed').__enter__(); print('held', flush=True); "
                               "time.sleep(60)"], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 0
    assert f"took over the lock of pid {holder.pid}" in capsys.readouterr().err


def test_repeated_rows_are_repaired_on_resume(tiny_dir, vector_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 0
    good = _rows(out)
    items = out / "items.jsonl"
    lines = items.read_text().splitlines(keepends=True)
    items.write_text("".join(lines + lines))  # what two unlocked writers left behind
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 0
    assert _rows(out) == good
    assert f"removed {len(lines)} repeated item rows" in capsys.readouterr().err


def _small_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_gives_one_line_and_a_rerun_recovers(tiny_dir, vector_dir, tmp_path, capsys, monkeypatch):
    full = tmp_path / "full"
    assert main(_eval_args("eval", tiny_dir, vector_dir, full)) == 0
    mnt = tmp_path / "mnt"
    mounted = _small_tmpfs(mnt)
    out = mnt / "run"
    try:
        if mounted:  # a real full file system: fill it, then free 5 pages (a few rows fit)
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
            os.truncate(mnt / "filler", os.path.getsize(mnt / "filler") - 5 * 4096)
        else:  # simulated: every write into the run directory fails as a full disk would
            real = os.replace

            def replace(src, dst, *a, **k):
                if str(out) in str(dst):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
                return real(src, dst, *a, **k)

            monkeypatch.setattr(os, "replace", replace)
        capsys.readouterr()
        assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 2
        errors = _errors(capsys.readouterr().err)
        print(f"({'tmpfs' if mounted else 'simulated'}) {errors}")
        assert len(errors) == 1 and "No space left on device" in errors[0] and str(out) in errors[0]
        assert not [p for p in out.rglob("*.tmp")]
        if mounted:
            (mnt / "filler").unlink()
        else:
            monkeypatch.undo()
        assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 0
        assert _rows(out) == _rows(full)
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)


def _unprivileged(tmp_path: Path) -> list[str]:
    """A command prefix under which file permissions hold: as root, ``setpriv`` drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (what a non-root user lacks); skipped where that cannot be done."""
    if os.geteuid() != 0:
        return []
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "cat", str(probe)],
                                                         capture_output=True).returncode == 0:
        pytest.skip("cannot drop root's file-permission override here (no setpriv)")
    return prefix


def test_unreadable_inputs_give_one_line_naming_the_file(tiny_dir, vector_dir, questions, tmp_path):
    prefix = _unprivileged(tmp_path)
    qfile = tmp_path / "q.jsonl"
    shutil.copy(questions, qfile)
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(questions, closed / "q.jsonl")
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    tensors, config = tmp_path / "vt", tmp_path / "vc"
    shutil.copytree(vector_dir, tensors)
    shutil.copytree(vector_dir, config)
    gguf_file = tmp_path / "x.gguf"
    assert main(["export", "--vector", str(vector_dir), "--format", "gguf", "--out", str(gguf_file)]) == 0
    for path in (qfile, closed, data / "gsm8k" / "test.jsonl", tensors / "vector.safetensors",
                 config / "config.json", gguf_file):
        path.chmod(0)
    derive = ["derive", "--model", str(tiny_dir), "--out", str(tmp_path / "v"), "--no-progress", "--questions"]
    cases = [
        ([*derive, str(qfile)], f"cannot read {qfile}: Permission denied"),
        ([*derive, str(closed / "q.jsonl")], f"cannot read {closed / 'q.jsonl'}: Permission denied"),
        (["eval", "--model", str(tiny_dir), "--data-dir", str(data), "--benchmarks", "gsm8k", "--limit", "2",
          "--conditions", "direct", "--no-progress", "--out", str(tmp_path / "run")],
         f"cannot read {data / 'gsm8k' / 'test.jsonl'}: Permission denied"),
        (["export", "--vector", str(tensors), "--format", "gguf", "--out", str(tmp_path / "a.gguf")],
         f"cannot read {tensors / 'vector.safetensors'}: Permission denied"),
        (["info", str(config)], f"cannot read {config / 'config.json'}: Permission denied"),
        (["import", "--from", str(gguf_file), "--model", str(tiny_dir), "--out", str(tmp_path / "imp")],
         f"cannot read {gguf_file}: Permission denied"),
    ]
    script = ("import contextlib, io, json, sys\nfrom lens_steer.cli import main\nout = []\n"
              "for argv in json.loads(sys.argv[1]):\n    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err):\n        rc = main(argv)\n"
              "    out.append([rc, err.getvalue()])\nprint(json.dumps(out))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*prefix, sys.executable, "-c", script, json.dumps([argv for argv, _ in cases])],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (argv, message), (rc, err) in zip(cases, json.loads(proc.stdout), strict=True):
        assert rc == 2 and "Traceback" not in err, (argv, err)
        assert _errors(err) == [f"lens-steer {argv[0]}: error: {message}"], err
    assert not (tmp_path / "run" / "items.jsonl").exists() and not (tmp_path / "imp").exists()


def _fill(path: Path) -> None:
    """Append to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):  # and the last part-page
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def test_a_disk_filling_up_during_an_eval_gives_the_same_one_line_and_a_rerun_recovers(tiny_dir, vector_dir,
                                                                                       tmp_path, capsys):
    full = tmp_path / "full"
    assert main(_eval_args("eval", tiny_dir, vector_dir, full)) == 0
    mnt = tmp_path / "mnt"
    if not _small_tmpfs(mnt):
        pytest.skip("cannot mount a small tmpfs here (the lock's own ENOSPC is simulated in test_storage)")
    out = mnt / "run"
    try:
        proc = _spawn(_eval_args("eval", tiny_dir, vector_dir, out))

        end = time.monotonic() + 120
        while _lines(out / "items.jsonl") < 2:  # a few rows in: now the disk fills up
            assert proc.poll() is None, "the eval finished before the disk filled"
            assert time.monotonic() < end, "the eval never wrote its first rows"
            time.sleep(0.01)
        _fill(mnt / "filler")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err  # stopped by the full disk mid-run
        errors = _errors(err)
        assert len(errors) == 1 and "No space left on device" in errors[0] and str(out) in errors[0], err
        _fill(mnt / "filler")  # what the failed run freed (its temporaries) is taken again
        capsys.readouterr()
        assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 2  # still full: refused at the lock
        errors = _errors(capsys.readouterr().err)
        assert errors == [f"lens-steer eval: error: cannot write {mnt / '.run.lock'} (the lock of {out}): "
                          "No space left on device"]
        assert not (mnt / ".run.lock").exists()
        (mnt / "filler").unlink()
        assert main(_eval_args("eval", tiny_dir, vector_dir, out)) == 0
        assert _rows(out) == _rows(full)
        assert not [p for p in mnt.rglob("*.tmp")]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_kill_9_while_derive_swaps_in_the_vector_leaves_nothing_after_the_next_derive(tiny_dir, questions,
                                                                                      vector_dir, tmp_path, capsys):
    out = tmp_path / "v"
    shutil.copytree(vector_dir, out)
    stall = ("import sys, time\nfrom lens_steer import storage\nexchange = storage._exchange\n"
             "def stalled(a, b):\n    print('swapping', flush=True)\n    time.sleep(120)\n    return exchange(a, b)\n"
             "storage._exchange = stalled\nfrom lens_steer.cli import main\nsys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", stall, *_derive_args(tiny_dir, questions, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # the new vector is complete beside the old one, about to take its place
        if line.strip() == "swapping":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = tmp_path / f".v.new-{proc.pid}"
    assert (left / "config.json").is_file() and (left / "vector.safetensors").is_file()
    assert SteeringVector.load(out) is not None  # the old vector, whole
    capsys.readouterr()
    assert main(_derive_args(tiny_dir, questions, out)) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of pid {proc.pid}" in err
    assert f"removed what it left unfinished: .v.new-{proc.pid}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
    # the same derivation (other thread counts round differently in the last digit)
    torch.testing.assert_close(SteeringVector.load(out).directions, SteeringVector.load(vector_dir).directions)


def test_generate_refuses_steering_settings_without_a_vector(tiny_dir, tmp_path, capsys):
    base = ["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "2", "--no-progress"]
    cases = [(["--layer", "1", "--coeff", "1"], "--layer, --coeff steer only with --vector: give --vector DIR, or "
                                                "leave them out for unsteered generation"),
             (["--mode", "single"], "--mode steer only with --vector: give --vector DIR, or leave it out for "
                                    "unsteered generation"),
             (["--out", str(tmp_path)], f"--out {tmp_path} is a directory: name the JSONL file to write")]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert _errors(capsys.readouterr().err) == [f"lens-steer generate: error: {message}"]
    assert main([*base, "--out", str(tmp_path / "new" / "g.jsonl")]) == 0
    row = json.loads((tmp_path / "new" / "g.jsonl").read_text())
    assert row["vector"] is None and row["layer"] is None and row["coeff"] is None and row["mode"] is None
