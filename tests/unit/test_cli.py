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
    assert "use --method fused" in err and len(err.strip().splitlines()) == 1


def test_vllm_options_refused_on_the_bridge(capsys):
    from lens_steer.cli import main

    assert main(["generate", "--prompt", "What is 2+2?", "--tensor-parallel-size", "2"]) != 0
    err = capsys.readouterr().err
    assert "--tensor-parallel-size apply to --engine vllm only" in err and len(err.strip().splitlines()) == 1


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
