"""lm-evaluation-harness 0.4.13 drives `lens-steer serve` unchanged: its `local-completions` model runs a GSM8K
generation task (the local task in lm_eval_tasks/, offline) against a server over the embedded model (the bridge
engine, localhost, a free port), once unsteered and once with a steering named in the model field
(``NAME@SPEC``, for tools that cannot send extra fields). Every response lm-eval logged equals the one lens_steer's
own engine gives the same prompt and settings (greedy, the task's token budget, cut at its stop strings), and the
steering changed some of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from interop_common import LAYER, coeff, cot_vector, hf_dir, need  # noqa: F401 (fixtures)

TASKS = Path(__file__).parent / "lm_eval_tasks"
REPO = Path(__file__).resolve().parents[2]
TASK = "lens_steer_gsm8k_local"
MODEL = "smollm2-135m-instruct"
LIMIT = 6

pytestmark = pytest.mark.interop
need("lm_eval")


@pytest.fixture(scope="module")
def server(smol, cot_vector, tmp_path_factory):
    from lens_steer.engines.bridge import engine_for
    from lens_steer.serve import ServeApp, ServeSettings, load_served_vectors, make_server, serve_in_thread

    engine = engine_for(smol)
    path = cot_vector.save(tmp_path_factory.mktemp("serve-lm-eval") / "cot")
    app = ServeApp(engine, load_served_vectors([f"cot={path}"], engine.info),
                   ServeSettings(model_name=MODEL, max_batch=8))
    srv = make_server(app, "127.0.0.1", 0, log_requests=False)
    serve_in_thread(srv)
    yield srv, engine
    srv.shutdown()
    srv.server_close()


def _run(port: int, model: str, hf_dir) -> list[dict]:
    lm_eval = need("lm_eval")
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"model": model, "base_url": f"http://127.0.0.1:{port}/v1/completions", "num_concurrent": 1,
                    "max_retries": 1, "tokenizer_backend": "huggingface", "tokenizer": str(hf_dir),
                    "tokenized_requests": False},
        tasks=[TASK], task_manager=TaskManager(include_path=str(TASKS)), limit=LIMIT, log_samples=True,
        random_seed=0)
    return out["samples"][TASK], out["results"][TASK]


def _ours(engine, prompt: str, steering) -> str:
    """lens_steer's own answer to a raw completion prompt under the task's settings (the prompt tokenised with the
    tokenizer's special tokens, as an OpenAI-compatible server tokenises a completion prompt)."""
    from lens_steer.config import GenerationConfig

    ids = list(engine.tokenizer(prompt, add_special_tokens=True)["input_ids"])  # as vLLM's server, and ours
    text = engine.generate([ids], GenerationConfig(max_new_tokens=48), steering=steering, progress=False)[0].text
    cuts = [i for i in (text.find(s) for s in ("Question:", "\n\n")) if i >= 0]
    return text[:min(cuts)] if cuts else text


def test_lm_eval_local_completions_drives_the_server(server, cot_vector, coeff, hf_dir, shared_data,
                                                     monkeypatch):
    from lens_steer.engines.base import Steering

    monkeypatch.chdir(REPO)  # the task file names ../shared/data relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    srv, engine = server
    port = srv.server_address[1]
    steering = Steering(cot_vector, LAYER, coeff, "continuous")
    runs = {"unsteered": (MODEL, None), "steered": (f"{MODEL}@cot:{LAYER}:coeff={coeff!r}:continuous", steering)}
    answers = {}
    for label, (model, steer) in runs.items():
        samples, result = _run(port, model, hf_dir)
        assert len(samples) == LIMIT
        equal = 0
        for s in samples:
            prompt, theirs = s["arguments"][0][0], s["resps"][0][0]
            ours = _ours(engine, prompt, steer)
            assert theirs == ours, (label, prompt[-80:], theirs, ours)
            equal += 1
        answers[label] = [s["resps"][0][0] for s in samples]
        print(f"\nlm-eval local-completions via lens-steer serve, {label}: exact_match "
              f"{result['exact_match,flexible-extract']:.3f} on {LIMIT} GSM8K test items; responses equal to "
              f"lens_steer's own generate: {equal}/{LIMIT}")
    changed = sum(a != b for a, b in zip(answers["unsteered"], answers["steered"]))
    print(f"steering (layer {LAYER}, c = {coeff:.3f}, continuous) changed {changed}/{LIMIT} responses")
    assert changed > 0
