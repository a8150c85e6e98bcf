"""``lens-steer reproduce`` never presents results it did not make and never throws away results it can reuse:
outputs changed after their stage finished are moved aside and made again (saying why), moved or copied
directories and a changed item limit keep their rows, user files in ``figures/`` stay, malformed records and
SIGTERM end in one line (tiny model)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lens_steer.cli import main
from lens_steer.eval.results_dir import read_items
from lens_steer.method.vectors import SteeringVector
from lens_steer.reproduce.cache import SUPERSEDED_DIR
from unit.test_reproduce import SETTINGS, SMALL, _rows, _run, _statuses

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished reproduction to copy from."""
    out = tmp_path_factory.mktemp("trust") / "run"
    outcome, _, _ = _run(out, tiny)
    assert outcome.completed
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _superseded(out: Path, name: str) -> list[Path]:
    return sorted((out / SUPERSEDED_DIR).glob(f"{name}-*"))


def test_an_edited_row_is_not_trusted_the_eval_is_made_again(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    items = out / "eval" / "items.jsonl"
    lines = items.read_text().splitlines()
    row = json.loads(lines[0])
    row["correct"] = not row["correct"]
    items.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    outcome, engine, _ = _run(out, tiny)
    status = dict(_statuses(outcome))
    assert status["eval"] == "redone: eval changed after the stage finished"
    assert engine.prompts == 16  # every row again: none of the changed directory is trusted
    assert _rows(out / "eval") == _rows(finished / "eval")
    assert status["report"] == "cached"  # the same rows as when the report was made
    (aside,) = _superseded(out, "eval")
    assert json.loads((aside / "items.jsonl").read_text().splitlines()[0])["correct"] == row["correct"]


def test_a_deleted_row_or_another_eval_in_place_is_made_again(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    items = out / "eval" / "items.jsonl"
    items.write_text("".join(items.read_text().splitlines(keepends=True)[1:]))
    outcome, engine, _ = _run(out, tiny, replace(SETTINGS, stages=("derive", "sweep", "select", "eval")))
    assert dict(_statuses(outcome))["eval"] == "redone: eval changed after the stage finished"
    assert _rows(out / "eval") == _rows(finished / "eval")
    # an unrelated evaluation (here: the sweep's directory) put in place of the eval
    shutil.rmtree(out / "eval")
    shutil.copytree(out / "sweep", out / "eval")
    outcome, engine, _ = _run(out, tiny)
    assert dict(_statuses(outcome))["eval"] == "redone: eval changed after the stage finished"
    assert _rows(out / "eval") == _rows(finished / "eval")
    assert "made with other settings" not in (out / "report.md").read_text()


def test_a_hand_edited_selection_is_chosen_again(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    original = (out / "selection.json").read_text()
    data = json.loads(original)
    data["cells"][0].update(layer=3, coeff=99.0)
    (out / "selection.json").write_text(json.dumps(data))
    outcome, engine, _ = _run(out, tiny)
    status = dict(_statuses(outcome))
    assert status["select"] == "redone: selection.json changed after the stage finished"
    assert json.loads((out / "selection.json").read_text()) == json.loads(original)
    assert status["eval"] == "cached" and status["report"] == "cached" and engine.calls == 0
    assert "c = 99" not in (out / "report.md").read_text()


def test_a_moved_run_resumes_its_rows(finished, tiny, tmp_path):
    """An interrupted eval in a directory moved elsewhere resumes from its rows (run.json names the vector's old
    path; the vector is identified by its content)."""
    from unit.test_reproduce import CountingEngine
    from lens_steer.engines.api import as_engine

    first = tmp_path / "first"
    _run(first, tiny, replace(SETTINGS, stages=("derive", "sweep", "select")))
    outcome, _, _ = _run(first, tiny, engine=CountingEngine(as_engine(tiny), fail_at=2))
    kept = len(read_items(first / "eval"))
    assert not outcome.completed and kept > 0
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    os.rename(first, moved)
    outcome, engine, _ = _run(moved, tiny)
    assert outcome.completed and dict(_statuses(outcome))["eval"] == "resumed"
    assert engine.prompts == 16 - kept and not (moved / SUPERSEDED_DIR).exists()
    assert _rows(moved / "eval") == _rows(finished / "eval")


def test_a_changed_limit_keeps_the_rows_that_still_apply(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    before = {r.id for r in read_items(out / "eval")}
    fewer = replace(SETTINGS, budget=SMALL.with_overrides(eval={"limit": 1}))
    outcome, engine, _ = _run(out, tiny, fewer)
    assert dict(_statuses(outcome))["eval"].startswith("redone: data.limit 2 -> 1")
    now = {r.id for r in read_items(out / "eval")}
    assert len(now) == 2 and engine.prompts == 4 * len(now - before)  # only items not evaluated before
    outcome, engine, _ = _run(out, tiny)  # back to 2: only the items the smaller draw did not hold are made again
    assert dict(_statuses(outcome))["eval"].startswith("redone: data.limit 1 -> 2")
    assert engine.prompts == 4 * len(before - now) and _rows(out / "eval") == _rows(finished / "eval")
    assert not (out / SUPERSEDED_DIR).exists()


def test_figures_keep_files_a_user_added(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "figures" / "my-notes.txt").write_text("mine")
    (out / "figures" / "mine").mkdir()
    (out / "figures" / "mine" / "plot.html").write_text("<p>mine</p>")
    before = sorted(p.name for p in (out / "figures").iterdir())
    changed = replace(SETTINGS, budget=SMALL.with_overrides(figures={"top_k": 4}))
    outcome, _, _ = _run(out, tiny, changed)
    assert dict(_statuses(outcome))["figures"].startswith("redone: settings.top_k 3 -> 4")
    assert (out / "figures" / "my-notes.txt").read_text() == "mine"
    assert (out / "figures" / "mine" / "plot.html").read_text() == "<p>mine</p>"
    assert sorted(p.name for p in (out / "figures").iterdir()) == before
    (aside,) = _superseded(out, "figures")
    assert (aside / "README.md").is_file() and not (aside / "my-notes.txt").exists()
    record = json.loads((out / "reproduce.json").read_text())["stages"]["figures"]
    assert "README.md" in record["files"] and "my-notes.txt" not in record["files"]
    outcome, _, _ = _run(out, tiny, changed)
    assert dict(_statuses(outcome))["figures"] == "cached"


def test_a_corrupt_vector_is_derived_again_saying_why(finished, tiny, tmp_path):
    out = _copy(finished, tmp_path)
    tensors = out / "vector" / "vector.safetensors"
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    outcome, _, _ = _run(out, tiny, replace(SETTINGS, stages=("derive",)))
    (status,) = [s for n, s in _statuses(outcome) if n == "derive"]
    assert status.startswith("redone: ") and "does not match the checksum" in status
    assert SteeringVector.load(out / "vector").source.tensors_sha256 == \
        SteeringVector.load(finished / "vector").source.tensors_sha256
    (aside,) = _superseded(out, "vector")
    assert (aside / "vector.safetensors").read_bytes() == bytes(blob)


@pytest.mark.parametrize("record", ["[]", '{"stages": []}', '{"stages": {"derive": 3}}', "{not json"])
def test_a_malformed_record_is_one_line(tiny_dir, tmp_path, capsys, record):
    out = tmp_path / "run"
    out.mkdir()
    (out / "reproduce.json").write_text(record)
    code = main(["reproduce", "--model", str(tiny_dir), "--out", str(out), "--budget", "quick", "--no-progress",
                 "--stages", "derive", "--corpus", "demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "reproduce.json is unreadable" in err[0], err


def test_sigterm_during_derive_says_so_and_leaves_no_lock(tiny_dir, tmp_path):
    out = tmp_path / "run"
    script = ("import sys, time\n"
              "import lens_steer.method.derive as d\n"
              "collect = d.collect_residual_means\n"
              "def slow(*a, **k):\n    print('deriving', flush=True)\n    time.sleep(60)\n    return collect(*a, **k)\n"
              "d.collect_residual_means = slow\n"
              "from lens_steer.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, "reproduce", "--model", str(tiny_dir), "--out", str(out),
                             "--budget", "quick", "--corpus", "demo", "--no-progress", "--stages", "derive"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "deriving"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "derive: interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".*.lock")) and not list(out.glob(".*.lock"))
