"""The disk primitives (lens_steer.storage) and the checks every steering passes (coefficients,
vectors), the same for the CLI and the Python API."""

from __future__ import annotations

import errno
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from lens_steer import storage
from lens_steer.storage import DirLock, LockedError, StorageError, atomic_write, json_text, replace_dir, write_json


def test_atomic_write_replaces_whole_and_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json(path, {"a": 1})
    real = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError) as info:
        write_json(path, {"a": 2})
    assert str(info.value) == f"cannot write {path}: No space left on device"
    monkeypatch.setattr(os, "replace", real)
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no .tmp left behind


def test_permission_errors_name_the_path(tmp_path):
    import shutil
    import subprocess
    import sys

    d = tmp_path / "ro"
    d.mkdir()
    (d / "secret").write_text("s")
    (d / "secret").chmod(0)
    d.chmod(0o500)
    prefix = []
    if os.geteuid() == 0:  # root ignores file permissions unless it drops the override, as setpriv does
        if shutil.which("setpriv") is None:
            pytest.skip("root ignores file permissions here (no setpriv)")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    probe = ("import sys\nfrom lens_steer.storage import StorageError, atomic_write, read_bytes\n"
             "for call in (lambda: atomic_write(sys.argv[1] + '/x', 'y'), lambda: read_bytes(sys.argv[1] + '/secret')):\n"
             "    try:\n        call()\n    except StorageError as e:\n        print(e)")
    out = subprocess.run([*prefix, sys.executable, "-c", probe, str(d)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.splitlines() == [f"cannot write {d / 'x'}: Permission denied",
                                       f"cannot read {d / 'secret'}: Permission denied"], out.stderr
    assert sorted(p.name for p in d.iterdir()) == ["secret"]  # no temporary left


def test_json_never_holds_nan_or_infinity():
    text = json_text({"coeff": float("nan"), "xs": [1.0, float("inf"), -float("inf")], "ok": 2.5})
    assert json.loads(text) == {"coeff": None, "xs": [1.0, None, None], "ok": 2.5}
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_dir_swaps_in_a_complete_directory(tmp_path, monkeypatch, exchange):
    final = tmp_path / "vec"
    final.mkdir()
    (final / "old").write_text("old")
    new = storage.temp_dir_beside(final)
    (new / "new").write_text("new")
    if not exchange:
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["vec"]  # neither the old copy nor the temporary remains


def test_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    probe = ("import sys; from lens_steer.storage import DirLock, LockedError\n"
             f"try:\n    DirLock({str(out)!r}).__enter__()\nexcept LockedError as e:\n    print(e); sys.exit(3)")
    with DirLock(out, "lens-steer eval"):
        with DirLock(out, "nested"):  # re-entrant within one process
            pass
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert other.returncode == 3
        assert f"{out} is being written by pid {os.getpid()} on " in other.stdout and "(lens-steer eval)" in other.stdout
    assert not (tmp_path / ".run.lock").exists()  # removed on a clean exit
    with DirLock(out, "again") as lock:  # free again, and nothing to take over
        assert lock.took_over is None


def test_saving_a_vector_over_a_non_vector_directory_is_refused(tmp_path):
    from lens_steer.method.vectors import SteeringVector, VectorFileError, VectorMetadata

    meta = VectorMetadata(model_id="m", model_fingerprint="f", n_layers=2, d_model=3, corpus_hash="c")
    vec = SteeringVector(torch.ones(2, 3), meta)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(VectorFileError, match="not a steering vector directory"):
        vec.save(other)
    assert (other / "thesis.tex").read_text() == "precious"
    vec.save(tmp_path / "v")
    vec2 = SteeringVector(2 * torch.ones(2, 3), meta)
    vec2.save(tmp_path / "v")  # over a vector: replaced
    assert torch.equal(SteeringVector.load(tmp_path / "v").directions, 2 * torch.ones(2, 3))


def _nan_vector_dir(tmp_path):
    """A vector directory whose tensors were replaced by NaNs, with a matching checksum (so only the
    values are wrong)."""
    import hashlib

    from safetensors.torch import save_file

    from lens_steer.method.vectors import SteeringVector, VectorMetadata

    meta = VectorMetadata(model_id="m", model_fingerprint="f", n_layers=2, d_model=3, corpus_hash="c")
    path = SteeringVector(torch.ones(2, 3), meta).save(tmp_path / "v")
    save_file({"directions": torch.full((2, 3), math.nan)}, str(path / "vector.safetensors"))
    config = json.loads((path / "config.json").read_text())
    config["tensors_sha256"] = hashlib.sha256((path / "vector.safetensors").read_bytes()).hexdigest()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_non_finite_vectors_are_refused_on_load(tmp_path):
    from lens_steer.method.vectors import SteeringVector, VectorFileError, VectorMetadata

    meta = VectorMetadata(model_id="m", model_fingerprint="f", n_layers=2, d_model=3, corpus_hash="c")
    with pytest.raises(ValueError, match="NaN or infinite values at 2 of 2 layers"):
        SteeringVector(torch.full((2, 3), math.nan), meta)
    path = _nan_vector_dir(tmp_path)
    with pytest.raises(VectorFileError, match="NaN or infinite"):
        SteeringVector.load(path)


@pytest.mark.parametrize("coeff", [math.nan, math.inf, -math.inf])
def test_non_finite_coefficients_are_refused_in_the_api(tiny, coeff):
    from lens_steer.engines.api import steer

    v = torch.ones(64)
    with pytest.raises(ValueError, match="must be finite"):
        with steer(tiny, v, 1, coeff):
            pass


def test_zero_directions_are_refused_and_huge_steering_warned(tiny):
    from lens_steer.engines.api import steer
    from lens_steer.method.vectors import SteeringVector, VectorMetadata
    from lens_steer.models import model_info

    with pytest.raises(ValueError, match="all zeros"):
        with steer(tiny, torch.zeros(64), 1, 2.0):
            pass
    info = model_info(tiny)
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=4, d_model=64,
                          corpus_hash="c")
    vec = SteeringVector(torch.ones(4, 64) / 8.0, meta, resid_norm=torch.full((4,), 2.0))  # |v| = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with steer(tiny, vec, 1, 15.0):  # 7.5x the residual norm: fine
            pass
    with pytest.warns(RuntimeWarning, match="500x the layer's mean residual norm"):
        with steer(tiny, vec, 1, 1000.0):
            pass


def test_cli_refuses_non_finite_coefficients_in_one_line(tiny_dir, tmp_path, capsys):
    from lens_steer.cli import main
    from lens_steer.method.vectors import SteeringVector, VectorMetadata
    from lens_steer.models import load_model, model_info

    info = model_info(load_model(str(tiny_dir)))
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=4, d_model=64,
                          corpus_hash="c")
    vec = SteeringVector(torch.ones(4, 64), meta).save(tmp_path / "v")
    capsys.readouterr()
    for coeff in ("nan", "1e400", "-inf"):
        code = main(["generate", "--model", str(tiny_dir), "--prompt", "What is 17*3?", "--vector", str(vec),
                     "--layer", "1", f"--coeff={coeff}", "--max-new-tokens", "2", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "must be finite" in err[0]


def test_info_refuses_an_all_nan_vector(tmp_path, capsys):
    from lens_steer.cli import main

    path = _nan_vector_dir(tmp_path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0]


def test_a_dead_holders_leftovers_are_removed_by_the_next_holder_and_nothing_else(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "v"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, time\nfrom pathlib import Path\nfrom lens_steer import storage\n"
        f"out = Path({str(out)!r})\n"
        "storage.DirLock(out, 'doomed').__enter__()\n"
        "(out / 'checkpoint').mkdir(parents=True)\n"
        "new = storage.temp_dir_beside(out)\n"  # a complete new copy, about to be swapped in
        "(new / 'config.json').write_text('{}')\n"
        "(out.parent / f'.v.old-{os.getpid()}').mkdir()\n"
        "(out / 'checkpoint' / f'.chunk-1.safetensors.{os.getpid()}.tmp').write_text('half')\n"
        "(out / f'.x.new-{os.getpid()}').mkdir()\n"
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    pid = holder.pid
    mine = [tmp_path / f".v.new-{os.getpid()}", out / f".y.{os.getpid()}.tmp"]  # a live writer's: kept
    mine[0].mkdir()
    mine[1].write_text("live")
    (out / "keep.tmp").write_text("a user's file")
    with DirLock(out, "next") as lock:
        assert lock.took_over.startswith(f"pid {pid} on ")
        assert (f"removed what it left unfinished: .v.new-{pid}, .v.old-{pid}, v/.x.new-{pid}, "
                f"v/checkpoint/.chunk-1.safetensors.{pid}.tmp") in lock.took_over
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".v.new-{os.getpid()}", "v"]
    assert sorted(p.name for p in out.rglob("*")) == [f".y.{os.getpid()}.tmp", "checkpoint", "keep.tmp"]


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError) as info:
        DirLock(out, "eval").__enter__()
    assert str(info.value) == f"cannot write {tmp_path / '.run.lock'} (the lock of {out}): No space left on device"
    assert not (tmp_path / ".run.lock").exists()
    monkeypatch.undo()
    with DirLock(out, "again") as lock:  # released: free at once, nothing to take over
        assert lock.took_over is None


def test_paths_without_a_name_are_the_directory_they_name(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with DirLock("."):
        assert (tmp_path / ".work.lock").is_file()
    with DirLock("sub/.."):
        assert (tmp_path / ".work.lock").is_file()
    assert not (tmp_path / ".work.lock").exists()
    with pytest.raises(ValueError, match="is the root directory"):
        DirLock("/")
    (work / "old").write_text("old")
    new = storage.temp_dir_beside(".")
    assert new == tmp_path / f".work.new-{os.getpid()}"
    (new / "new").write_text("new")
    replace_dir(new, ".")  # the directory this process works in is replaced: it moves into the new one
    assert os.getcwd() == str(work) and sorted(p.name for p in Path(".").iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_read_errors_are_one_line_naming_the_path(tmp_path):
    (tmp_path / "x").write_bytes(b"ok")
    assert storage.read_bytes(tmp_path / "x") == b"ok"
    with pytest.raises(StorageError) as info:
        storage.read_bytes(tmp_path)
    assert str(info.value) == f"cannot read {tmp_path}: Is a directory"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(tmp_path / "missing")
