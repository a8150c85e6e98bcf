"""The engine-level cases of the reliability probe: sampling settings, a steering whose c·v overflows the
model's dtype, a prompt longer than the model's context, and steering from several threads."""

import re
import threading
from types import SimpleNamespace

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate, steer
from lens_steer.engines.base import Steering, check_fits_context, context_length_of
from lens_steer.engines.bridge import BridgeEngine, engine_for
from lens_steer.engines.steering import check_delta_finite, steering_delta
from lens_steer.models import hf_model, model_info
from lens_steer.prompts import encode_prompt

LAYER, COEFF = 2, 6.0
JOIN_S = 60  # a thread that has not finished by then is a hang, reported as a failure


def _unhooked(model) -> bool:
    return all(not hp.fwd_hooks for hp in model.hook_dict.values()) and not hf_model(model)._forward_pre_hooks


@pytest.fixture(scope="module")
def v(tiny):
    return torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def prompts(tiny):
    return [encode_prompt(tiny.tokenizer, q, "direct") for q in ("What is 2+2?", "Name a colour.")]


CFG = GenerationConfig(max_new_tokens=8, batch_size=2)


def _ids(gens) -> list[list[int]]:
    return [g.response_ids for g in gens]


# ---------------------------------------------------------------- sampling settings
@pytest.mark.parametrize("field, value", [("top_p", 0.0), ("top_p", 2.0), ("top_p", -0.5), ("top_p", float("nan")),
                                          ("temperature", float("nan")), ("temperature", float("inf")),
                                          ("temperature", 0.0), ("temperature", -1.0)])
def test_sampling_settings_are_checked_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be") as err:
        GenerationConfig(do_sample=True, **{field: value})
    assert "\n" not in str(err.value)


def test_sampling_settings_at_their_bounds_are_accepted():
    GenerationConfig(do_sample=True, top_p=1.0, temperature=1e-3)
    GenerationConfig(do_sample=True, top_p=1e-6, temperature=100.0)
    GenerationConfig(do_sample=False, top_p=2.0, temperature=float("nan"))  # greedy decoding reads neither


def test_cli_turns_a_bad_sampling_setting_into_one_line(tiny_dir, capsys):
    from lens_steer.cli import main

    for flag, value in (("--top-p", "0"), ("--top-p", "2"), ("--temperature", "nan")):
        code = main(["generate", "--model", str(tiny_dir), "--prompt", "Hi", "--sample", flag, value,
                     "--max-new-tokens", "2", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()  # after the model's loading bar, if any
        errors = [line for line in err if line.startswith("lens-steer generate: error:")]
        assert code == 2 and errors == err[-1:], err
        assert flag.removeprefix("--").replace("-", "_") + " must be" in errors[0]


# ---------------------------------------------------------------- c·v overflowing the dtype
@pytest.mark.parametrize("coeff", [1e39, 1e300, -1e39])
def test_a_steering_whose_cv_overflows_is_refused_and_attaches_nothing(tiny, v, prompts, coeff):
    with pytest.raises(ValueError, match=re.escape(f"coefficient {coeff:g} at layer {LAYER} is too large: c·v is not "
                                                   "finite in float32")) as err:
        with steer(tiny, v, LAYER, coeff):
            pytest.fail("the block must not run")
    assert "\n" not in str(err.value)
    assert _unhooked(tiny)
    with pytest.raises(ValueError, match="not finite in float32"):
        generate(tiny, prompts, CFG, steering=Steering(v, LAYER, coeff), progress=False)
    assert _unhooked(tiny) and not engine_for(tiny).single_steerers
    with pytest.raises(ValueError, match="not finite in float32"):  # the check every engine shares
        steering_delta(model_info(tiny), Steering(v, LAYER, coeff))


def test_the_check_uses_the_models_dtype(tiny, v):
    info = model_info(tiny)
    s = Steering(v, LAYER, 1e6)  # finite in float32 and bfloat16, not in float16 (max 65504)
    delta = steering_delta(info, s)
    assert torch.equal(delta, 1e6 * v)
    assert torch.equal(steering_delta(info, s, torch.bfloat16), delta)  # still float32, checked in bfloat16
    with pytest.raises(ValueError, match=r"coefficient 1e\+06 at layer 2 is too large: .* float16 \(largest finite"):
        steering_delta(info, s, torch.float16)
    check_delta_finite(torch.full((3,), 6e4), s, torch.float16)  # 60000 fits float16
    with pytest.raises(ValueError):
        check_delta_finite(torch.tensor([1.0, float("nan")]), s, torch.float32)


def test_a_large_but_finite_steering_is_applied_exactly(tiny, v):
    ids = torch.tensor([encode_prompt(tiny.tokenizer, "Hi?", "direct")])
    name = f"blocks.{LAYER}.hook_resid_post"

    def resid():
        with torch.inference_mode():
            return tiny.run_with_cache(ids, names_filter=[name], prepend_bos=False)[1][name]

    clean = resid()
    with steer(tiny, v, LAYER, 1e30) as delta:
        steered = resid()
    assert torch.equal(delta, 1e30 * v) and torch.isfinite(delta).all()
    assert torch.equal(steered, clean + delta)
    assert _unhooked(tiny)


# ---------------------------------------------------------------- context length
def test_logits_that_turn_nan_stop_generation_with_one_line(tiny, prompts, monkeypatch):
    """NaN logits (a broken model, or a steering that blows up the stream in a half-precision model) are refused
    instead of decoded into empty answers."""
    from lens_steer.engines import bridge

    forward = bridge._forward
    monkeypatch.setattr(bridge, "_forward", lambda *a: forward(*a) * float("nan"))
    with pytest.raises(ValueError, match=r"logits are NaN or infinite at generation step 0 for 2 prompt\(s\)"):
        generate(tiny, prompts, CFG, progress=False)


def test_context_length_is_read_from_the_config(tiny):
    assert context_length_of(hf_model(tiny).config) == 512 == engine_for(tiny).context_length
    assert context_length_of(SimpleNamespace(n_positions=1024)) == 1024
    assert context_length_of(SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=8192))) == 8192
    assert context_length_of(SimpleNamespace(hidden_size=64)) is None


def test_check_fits_context_names_the_prompt_and_the_numbers():
    check_fits_context([[1] * 500], 12, 512)  # exactly full
    check_fits_context([[1] * 26992], 128, None)  # unknown context: not checked
    with pytest.raises(ValueError) as err:
        check_fits_context([[1] * 10, [1] * 26992, [1] * 9000], 128, 8192)
    assert str(err.value) == ("prompt 2 of 3 is too long for the model: 26992 tokens + max_new_tokens 128 exceeds its "
                              "context length of 8192 (1 other prompts too)")
    with pytest.raises(ValueError, match=r"^prompt 1 of 1 is too long for the model: 513 tokens exceeds"):
        check_fits_context([[1] * 513], 0, 512)


def test_a_prompt_beyond_the_context_is_refused_before_generating(tiny, v, monkeypatch):
    engine = engine_for(tiny)
    calls = []
    monkeypatch.setattr(BridgeEngine, "_generate_batch", lambda *a, **k: calls.append(1))
    long = [5] * 500
    with pytest.raises(ValueError, match="prompt 2 of 2 .* 500 tokens \\+ max_new_tokens 13 exceeds its context "
                                         "length of 512"):
        engine.generate([[5] * 10, long], GenerationConfig(max_new_tokens=13), progress=False)
    with pytest.raises(ValueError, match="context length of 512"):
        engine.generate([long], GenerationConfig(max_new_tokens=13), steering=Steering(v, LAYER, 1.0), progress=False)
    with pytest.raises(ValueError, match="513 tokens exceeds"):
        engine.first_token_logprobs([[5] * 513])
    assert not calls and _unhooked(tiny)


def test_a_prompt_that_fills_the_context_exactly_runs(tiny):
    out = engine_for(tiny).generate([[5] * 509], GenerationConfig(max_new_tokens=3), progress=False)
    assert len(out[0].response_ids) <= 3


# ---------------------------------------------------------------- threads
def _run(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def _join(*threads: threading.Thread) -> None:
    for t in threads:
        t.join(JOIN_S)
        assert not t.is_alive(), "a thread hung"


def test_unsteered_generate_on_another_thread_waits_for_the_steer_block(tiny, v, prompts):
    plain = _ids(generate(tiny, prompts, CFG, progress=False))
    with steer(tiny, v, LAYER, COEFF):
        steered = _ids(generate(tiny, prompts, CFG, progress=False))
    assert steered != plain  # the steering changes the output
    events, out = [], {}
    entered, b_done = threading.Event(), threading.Event()

    def steering_thread():
        with steer(tiny, v, LAYER, COEFF):
            entered.set()
            b_done.wait(1.0)  # before the lock, the other thread's generate ran in here, steered
            out["a"] = _ids(generate(tiny, prompts, CFG, progress=False))
            events.append("a leaves its steer block")

    def plain_thread():
        entered.wait(JOIN_S)
        out["b"] = _ids(generate(tiny, prompts, CFG, progress=False))
        events.append("b generated")
        b_done.set()

    _join(_run(steering_thread), _run(plain_thread))
    assert out == {"a": steered, "b": plain}
    assert events == ["a leaves its steer block", "b generated"]
    assert _unhooked(tiny)


def test_two_threads_steering_at_once_each_get_their_own_steering(tiny, v, prompts):
    w = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(6))
    refs = {}
    for name, vec in (("v", v), ("w", w)):
        with steer(tiny, vec, LAYER, COEFF):
            refs[name] = _ids(generate(tiny, prompts, CFG, progress=False))
    assert refs["v"] != refs["w"]
    meet = threading.Barrier(2, timeout=1.0)  # both inside steer() at once: possible only without the lock
    out = {}

    def worker(name, vec):
        with steer(tiny, vec, LAYER, COEFF):
            try:
                meet.wait()
            except threading.BrokenBarrierError:
                pass
            out[name] = _ids(generate(tiny, prompts, CFG, progress=False))

    _join(_run(worker, "v", v), _run(worker, "w", w))
    assert out == refs
    assert _unhooked(tiny)


def test_a_direct_forward_from_another_thread_inside_steer_is_refused(tiny, v):
    ids = torch.tensor([encode_prompt(tiny.tokenizer, "Hi?", "direct")])
    with torch.inference_mode():
        clean = tiny(ids, prepend_bos=False)
    result = {}

    def forward():
        try:
            with torch.inference_mode():
                result["logits"] = tiny(ids, prepend_bos=False)
        except RuntimeError as exc:
            result["error"] = str(exc)

    with steer(tiny, v, LAYER, COEFF):
        _join(_run(forward))  # needs no lock: it returns while the block is open
    assert "being steered by another thread" in result.pop("error")
    _join(_run(forward))
    assert torch.equal(result["logits"], clean)  # after the block: allowed, unsteered


def test_an_exception_inside_steer_releases_the_lock_and_the_hooks(tiny, v, prompts):
    plain = _ids(generate(tiny, prompts, CFG, progress=False))
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny, v, LAYER, COEFF, "single"):
            raise RuntimeError("boom")
    out = {}
    _join(_run(lambda: out.setdefault("b", _ids(generate(tiny, prompts, CFG, progress=False)))))
    assert out["b"] == plain and _unhooked(tiny)


def test_every_engine_of_a_bridge_shares_its_lock(tiny):
    engines = []
    threads = [_run(lambda: engines.append(engine_for(tiny))) for _ in range(4)]
    _join(*threads)
    assert all(e is engine_for(tiny) for e in engines)
    assert BridgeEngine(tiny).lock is engine_for(tiny).lock


def test_eval_refuses_an_overflowing_steering_before_generating_anything(tiny, v, monkeypatch):
    from lens_steer.data.example import Example
    from lens_steer.eval.conditions import Condition
    from lens_steer.eval.evaluate import evaluate

    calls = []
    engine = engine_for(tiny)
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1))
    examples = [Example("q", "gsm8k", "What is 1+1?", "2", (), "test")]
    conditions = [Condition.baseline("direct"), Condition("steered-single", "direct", layer=LAYER, coeff=1e39,
                                                          mode="single")]
    with pytest.raises(ValueError, match="c·v is not finite in float32"):
        evaluate(engine, examples, conditions, CFG, torch.stack([v] * tiny.cfg.n_layers), progress=False)
    assert calls == []
