"""The CLI end to end through main([...]) on the tiny model saved as a local directory."""

import json

import pytest

from lens_steer.cli import build_parser, main
from lens_steer.method.vectors import SteeringVector


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "questions.jsonl"
    rows = [{"id": "one", "question": "What is 1+1?"}, {"question": "Name a fruit."}, {"question": "Why is the sky blue?"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def vector_dir(tiny_dir, questions, tmp_path_factory):
    out = tmp_path_factory.mktemp("vec") / "v"
    code = main(["derive", "--model", str(tiny_dir), "--questions", str(questions), "--out", str(out),
                 "--max-new-tokens", "6", "--no-progress"])
    assert code == 0
    return out


def test_derive_writes_vector(vector_dir):
    vec = SteeringVector.load(vector_dir)
    assert vec.directions.shape == (4, 64)
    assert vec.metadata.question_ids[0] == "one"
    assert vec.metadata.generation.max_new_tokens == 6
    assert (vector_dir / "responses.jsonl").is_file()


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_generate_with_vector(tiny_dir, vector_dir, questions, tmp_path, mode):
    out = tmp_path / "gen.jsonl"
    code = main(["generate", "--model", str(tiny_dir), "--questions", str(questions), "--vector", str(vector_dir),
                 "--layer", "2", "--coeff", "3", "--mode", mode, "--prompt-style", "direct",
                 "--max-new-tokens", "5", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["id"] == "one" and rows[0]["mode"] == mode and rows[0]["layer"] == 2
    assert all(r["n_tokens"] <= 5 for r in rows)
    assert "step by step" not in rows[0]["prompt"] and "immediately" in rows[0]["prompt"]


def test_generate_prompt_to_stdout(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "Hi", "--prompt-style", "cot",
                 "--max-new-tokens", "3", "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["prompt_style"] == "cot" and "step by step" in row["prompt"]


def test_errors_are_one_line(tiny_dir, vector_dir, capsys, tmp_path):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "Hi", "--vector", str(vector_dir),
                 "--layer", "9", "--coeff", "1", "--no-progress"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no steering vector directory" in capsys.readouterr().err
    assert main(["derive", "--model", str(tmp_path / "nope"), "--questions", str(tmp_path / "q.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["info", str(vector_dir)]) == 0


def test_parser_lists_commands():
    text = build_parser().format_help()
    for cmd in ("derive", "generate", "info", "demo"):
        assert cmd in text


def test_two_pass_derivation_refused_off_the_bridge(capsys, tmp_path):
    from lens_steer.cli import main

    out = tmp_path / "unused"
    assert main(["derive", "--engine", "vllm", "--method", "two_pass", "--corpus", "demo", "--out", str(out)]) != 0
    assert not list(tmp_path.iterdir())  # refused before anything was written (the lock file removed again)
    err = capsys.readouterr().err
    assert "the vllm engine cannot re-read residuals" in err and "use --engine bridge" in err
    assert len(err.strip().splitlines()) == 1


def test_vllm_options_refused_on_the_bridge(capsys):
    from lens_steer.cli import main

    assert main(["generate", "--prompt", "What is 2+2?", "--tensor-parallel-size", "2"]) != 0
    err = capsys.readouterr().err
    assert "--tensor-parallel-size applies to --engine vllm only, not --engine bridge" in err
    assert len(err.strip().splitlines()) == 1


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_generate_question_file_errors_are_one_line(tmp_path, capsys):
    """Refused before any model loads: not UTF-8 (file and line named), no questions, --vector without --layer."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    assert main(["generate", "--questions", str(bad)]) == 2
    assert f"{bad}, line 2: not valid UTF-8" in _one_line_error(capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["generate", "--questions", str(empty)]) == 2
    assert f"{empty}: no questions" in _one_line_error(capsys)
    assert main(["generate", "--prompt", "Hi", "--vector", str(tmp_path / "v"), "--coeff", "1"]) == 2
    assert "--vector needs --layer and --coeff" in _one_line_error(capsys)


def test_figures_on_an_unreachable_hub_model_fails_in_seconds(tmp_path, capsys, unreachable_hub):
    import time

    import torch

    from lens_steer.method.vectors import VectorMetadata

    meta = VectorMetadata(model_id="no-such-org/no-such-model-xyz", model_fingerprint="", n_layers=2, d_model=3)
    SteeringVector(directions=torch.ones(2, 3), metadata=meta).save(tmp_path / "v")
    start = time.perf_counter()
    assert main(["figures", "--vector", str(tmp_path / "v"), "--out", str(tmp_path / "figs"), "--no-png"]) == 2
    assert time.perf_counter() - start < 15
    assert "the hub is unreachable" in _one_line_error(capsys)


def test_generate_with_a_schedule(tiny_dir, vector_dir, questions, tmp_path):
    rows = {}
    for mode in ("continuous", "op=clamp, at=first:2"):
        out = tmp_path / "gen.jsonl"
        assert main(["generate", "--model", str(tiny_dir), "--questions", str(questions), "--vector", str(vector_dir),
                     "--layer", "2", "--coeff", "3", "--mode", mode, "--max-new-tokens", "5", "--out", str(out),
                     "--no-progress"]) == 0
        rows[mode] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in rows["op=clamp, at=first:2"]] == ["at=first:2,op=clamp"] * 3  # the canonical text
    assert [r["response"] for r in rows["op=clamp, at=first:2"]] != [r["response"] for r in rows["continuous"]]


@pytest.mark.parametrize(("mode", "message", "loads"), [
    ("at=window:5-3", "--mode 'at=window:5-3': at: window 5-3 is empty: its end (3) must be greater than its start (5)",
     False),
    ("op=mul", "--mode 'op=mul': op: unknown operator 'mul'; expected one of add, add-norm, clamp, ablate", False),
    ("strength=linear:1:0", "--mode 'strength=linear:1:0': strength: '1:0' is not linear:FROM:TO:N", False),
    ("at=trigger:é", "--mode 'at=trigger:é': at: trigger 'é' is not made of the model's tokens", True),
    ("at=region:<think>..</think>", "at: region marker '<think>' is not in the model's vocabulary", True),
])
def test_bad_generate_schedules_exit_2_naming_the_field(tiny_dir, vector_dir, capsys, tmp_path, mode, message, loads):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "Hi", "--vector", str(vector_dir), "--layer", "1",
                 "--coeff", "1", "--mode", mode, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.replace("\r", "\n")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == f"lens-steer generate: error: {errors[0].split('error: ', 1)[1]}"
    assert message in errors[0] and not out.exists()
    assert ("Loading" in err) == loads  # a malformed spec is refused before the model loads


def test_an_engine_that_cannot_apply_a_schedule_is_refused_before_loading(vector_dir, capsys, presets_only):
    assert main(["generate", "--engine", presets_only, "--prompt", "Hi", "--vector", str(vector_dir), "--layer", "1",
                 "--coeff", "1", "--mode", "at=trigger:\\n\\n"]) == 2
    err = _one_line_error(capsys)
    assert ("the presets-only engine cannot steer the tokens after a trigger (at=trigger), which --mode needs; use "
            "--engine bridge or --engine vllm") in err


def test_schedule_help_has_the_grammar_and_examples(capsys):
    for command in ("generate", "eval", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = "".join(capsys.readouterr().out.split())  # argparse wraps lines wherever it likes
        for part in ("continuous (every position", "single (the prompt's positions",
                     "at=all|prompt|last|first:K|window:A-B|trigger:TEXT[|TEXT...]|region:OPEN..CLOSE",
                     "strength=constant|linear:FROM:TO:N|step:BEFORE:AFTER:K", "op=add|add-norm|clamp|ablate",
                     "'at=region:<think>..</think>,op=add-norm'", "'single,op=ablate'", "'at=first:16'"):
            assert "".join(part.split()) in text, (command, part)
